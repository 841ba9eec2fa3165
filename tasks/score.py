"""Score a shard: a DataLoader reads and decodes, the model runs in batches.

:func:`score_images` is the whole per-shard job as a plain function: it returns
the shard's scores table (schema in :mod:`storage.schema`) and its errors table.
Models are loaded once per process and reused by every shard (:func:`get_model`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader

from models.preprocess import to_model_input
from models.registry import LoadedModel, load_model
from storage.schema import ERRORS_SCHEMA, feature_column, scores_schema
from storage.uris import Location
from tasks.decode import Batch, ImageFailure, ShardDataset, collate, init_worker

_models: dict[tuple[str, str | None, str], LoadedModel] = {}
_models_lock = threading.Lock()


def get_model(name: str, weights: str | None, device: torch.device) -> LoadedModel:
    """The model for (name, weights, device), loaded once per process."""
    key = (name.lower(), weights, str(device))
    with _models_lock:
        if key not in _models:
            _models[key] = load_model(name, weights, device)
        return _models[key]


@dataclass
class ScoreSettings:
    """How to run the model over a shard."""

    batch_size: int
    workers: int
    features: tuple[str, ...]
    max_pixels: int | None
    run_id: str


@dataclass
class ShardResult:
    """What scoring one shard produced."""

    scores: pa.Table
    errors: pa.Table


def _loader(dataset: ShardDataset, settings: ScoreSettings, device: torch.device) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=settings.batch_size,
        num_workers=settings.workers,
        collate_fn=collate,
        worker_init_fn=init_worker if settings.workers > 0 else None,
        multiprocessing_context="spawn" if settings.workers > 0 else None,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if settings.workers > 0 else None,
    )


def _run_model(model: LoadedModel, pixels: torch.Tensor, layers: Sequence[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    x = to_model_input(pixels.to(model.device, non_blocking=True))
    with torch.inference_mode():
        score, feats = model.module.forward_features(x, layers)
    return score.float().cpu().numpy(), {k: v.float().cpu().numpy() for k, v in feats.items()}


def score_images(
    shard: pa.Table,
    source: Location,
    model: LoadedModel,
    settings: ScoreSettings,
    on_batch: Callable[[int], None] | None = None,
) -> ShardResult:
    """Score every image of ``shard`` (rows of the discovery listing)."""
    paths = shard.column("path").to_pylist()
    uris = shard.column("uri").to_pylist()
    versions = shard.column("source_version").to_pylist()
    fs_paths = [source.fs._strip_protocol(uri) for uri in uris]
    dataset = ShardDataset(source.fs, fs_paths, model.spec.preprocess, settings.max_pixels)
    layers = settings.features
    rows: dict[str, list] = {k: [] for k in ("index", "image_id", "size_bytes", "width", "height")}
    score_parts: list[np.ndarray] = []
    feature_parts: dict[str, list[np.ndarray]] = {name: [] for name in layers}
    failures: list[ImageFailure] = []

    for batch in _loader(dataset, settings, model.device):
        batch: Batch
        failures.extend(batch.failures)
        if batch.pixels is not None:
            try:
                scores, feats = _run_model(model, batch.pixels, layers)
            except Exception as error:  # noqa: BLE001 - a failing batch becomes error rows
                failures.extend(
                    ImageFailure(img.index, "model", type(error).__name__, str(error)[:500], img.size_bytes)
                    for img in batch.images
                )
            else:
                for image in batch.images:
                    rows["index"].append(image.index)
                    rows["image_id"].append(image.image_id)
                    rows["size_bytes"].append(image.size_bytes)
                    rows["width"].append(image.width)
                    rows["height"].append(image.height)
                score_parts.append(scores)
                for name in layers:
                    feature_parts[name].append(feats[name])
        if on_batch is not None:
            on_batch(len(batch.images) + len(batch.failures))

    now = datetime.now(timezone.utc)
    scores_table = _scores_table(rows, score_parts, feature_parts, paths, uris, versions, model, settings, now)
    errors_table = _errors_table(failures, paths, uris, versions, model, settings, now)
    return ShardResult(scores=scores_table, errors=errors_table)


def _scores_table(rows, score_parts, feature_parts, paths, uris, versions, model, settings, now) -> pa.Table:
    layers = settings.features
    schema = scores_schema({name: model.spec.feature_layers[name] for name in layers})
    index = rows["index"]
    n = len(index)
    columns = {
        "image_id": rows["image_id"],
        "path": [paths[i] for i in index],
        "uri": [uris[i] for i in index],
        "size_bytes": rows["size_bytes"],
        "width": rows["width"],
        "height": rows["height"],
        "model": [model.spec.name] * n,
        "weights": [model.weights.digest] * n,
        "score": np.concatenate(score_parts).astype(np.float32) if score_parts else np.empty(0, np.float32),
    }
    arrays = [pa.array(columns[f.name], type=f.type) for f in schema if f.name in columns]
    for name in layers:
        dim = model.spec.feature_layers[name]
        flat = np.concatenate(feature_parts[name]).astype(np.float32).reshape(-1) if feature_parts[name] else np.empty(0, np.float32)
        arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dim))
    arrays.append(pa.array([versions[i] for i in index], pa.string()))
    arrays.append(pa.array([settings.run_id] * n, pa.string()))
    arrays.append(pa.array([now] * n, schema.field("scored_at").type))
    table = pa.Table.from_arrays(arrays, schema=schema)
    return table.sort_by("path")


def _errors_table(failures, paths, uris, versions, model, settings, now) -> pa.Table:
    failures = sorted(failures, key=lambda f: f.index)
    n = len(failures)
    data = {
        "path": [paths[f.index] for f in failures],
        "uri": [uris[f.index] for f in failures],
        "stage": [f.stage for f in failures],
        "error": [f.error for f in failures],
        "message": [f.message for f in failures],
        "run_id": [settings.run_id] * n,
        "model": [model.spec.name] * n,
        "weights": [model.weights.digest] * n,
        "size_bytes": [f.size_bytes for f in failures],
        "source_version": [versions[f.index] for f in failures],
        "failed_at": [now] * n,
    }
    return pa.Table.from_pydict(data, schema=ERRORS_SCHEMA)


def feature_columns(layers: Sequence[str]) -> list[str]:
    """The Parquet column names of the given feature layers."""
    return [feature_column(name) for name in layers]
