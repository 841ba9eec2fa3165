"""Score a shard: a DataLoader reads and decodes, the model runs in batches.

:func:`score_images` is the whole per-shard job as a plain function: it returns
the shard's scores table (schema in :mod:`storage.schema`) and its errors table.
Models are loaded once per process and reused by every shard (:func:`get_model`),
prepared for speed once per setting (:func:`get_runner`, see :mod:`models.speed`).
On CUDA the workers pass plain JPEGs on undecoded and the batch is decoded on the
GPU (:mod:`tasks.device_decode`); ``decode='workers'`` keeps PIL in the workers.
DataLoader workers are forked from a forkserver that has torch and the decoder
imported already (:func:`tasks.decode.worker_options`), so a shard's workers start
in milliseconds instead of the seconds a fresh ``spawn`` takes (and without
inheriting the flow's signal handlers).
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

from memscore.models.registry import LoadedModel, load_model
from memscore.models.speed import InferenceRunner, Pending, SpeedSettings, prepare
from memscore.storage.schema import ERRORS_SCHEMA, feature_column, scores_schema
from memscore.storage.uris import Location
from memscore.tasks.decode import Batch, ImageFailure, ShardDataset, collate, worker_options
from memscore.tasks.device_decode import decode_on_device, resolve_decode

_models: dict[tuple[str, str | None, str], LoadedModel] = {}
_models_lock = threading.Lock()


def get_model(name: str, weights: str | None, device: torch.device) -> LoadedModel:
    """The model for (name, weights, device), loaded once per process."""
    key = (name.lower(), weights, str(device))
    with _models_lock:
        if key not in _models:
            _models[key] = load_model(name, weights, device)
        return _models[key]


def get_runner(model: LoadedModel, speed: SpeedSettings) -> InferenceRunner:
    """``model`` prepared with ``speed`` (channels_last, folding, precision), once per model.

    The runners live on the LoadedModel itself, so they go when the model goes.
    """
    with _models_lock:
        runners = model.__dict__.setdefault("_speed_runners", {})
        if speed not in runners:
            runners[speed] = prepare(model, speed)
        return runners[speed]


@dataclass
class ScoreSettings:
    """How to run the model over a shard."""

    batch_size: int
    workers: int
    features: tuple[str, ...]
    max_pixels: int | None
    run_id: str
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (auto: fp32 on CPU, fp16 on CUDA)
    channels_last: bool | None = None  # None: the device's default (on for CPU and CUDA)
    fold_batchnorm: bool | None = None  # None: on (float32 results move by ~1e-7)
    compile: bool = False  # torch.compile the model (slow to start; off by default)
    decode: str = "auto"  # auto | workers | device (auto: JPEGs on the device on CUDA, else PIL in workers)
    backend: str = "torch"  # torch | onnxruntime (CPU, float32; optional, models/onnx_runtime.py)

    def speed(self) -> SpeedSettings:
        return SpeedSettings(precision=self.precision, channels_last=self.channels_last,
                             fold_batchnorm=self.fold_batchnorm, compile=self.compile, backend=self.backend)


@dataclass
class ShardResult:
    """What scoring one shard produced."""

    scores: pa.Table
    errors: pa.Table


def _loader(dataset: ShardDataset, settings: ScoreSettings, device: torch.device) -> DataLoader:
    workers = settings.workers
    return DataLoader(
        dataset,
        batch_size=settings.batch_size,
        collate_fn=collate,
        **worker_options(workers),
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers > 0 else None,
    )


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
    raw_paths = shard.column("fs_path").to_pylist() if "fs_path" in shard.column_names else [None] * len(uris)
    # A name that is not valid UTF-8 is escaped in ``uri``; its real path travels as bytes.
    fs_paths = [raw.decode("utf-8", "surrogateescape") if raw is not None else source.fs._strip_protocol(uri)
                for raw, uri in zip(raw_paths, uris)]
    device_jpeg = resolve_decode(settings.decode, model.device, model.spec.preprocess) == "device"
    dataset = ShardDataset(source.fs, fs_paths, model.spec.preprocess, settings.max_pixels, device_jpeg)
    layers = settings.features
    rows: dict[str, list] = {k: [] for k in ("index", "image_id", "size_bytes", "width", "height")}
    score_parts: list[np.ndarray] = []
    feature_parts: dict[str, list[np.ndarray]] = {name: [] for name in layers}
    failures: list[ImageFailure] = []

    runner = get_runner(model, settings.speed())

    def model_failed(images, error: BaseException) -> None:
        failures.extend(
            ImageFailure(img.index, "model", type(error).__name__, str(error)[:500], img.size_bytes)
            for img in images
        )

    def finish(batch: Batch, pending: Pending) -> None:
        try:
            scores, feats = pending.result()
        except Exception as error:  # noqa: BLE001 - a failing batch becomes error rows
            model_failed(batch.images, error)
            return
        for image in batch.images:
            rows["index"].append(image.index)
            rows["image_id"].append(image.image_id)
            rows["size_bytes"].append(image.size_bytes)
            rows["width"].append(image.width)
            rows["height"].append(image.height)
        score_parts.append(scores)
        for name in layers:
            feature_parts[name].append(feats[name])

    # One batch in flight: on CUDA the next batch is queued before this one's
    # results are read back, so the GPU does not wait for the host (on CPU a
    # batch is finished when submit returns).
    in_flight: tuple[Batch, Pending] | None = None
    for batch in _loader(dataset, settings, model.device):
        batch: Batch
        if batch.encoded:
            batch = decode_on_device(batch, model.spec.preprocess, model.device, settings.max_pixels)
        failures.extend(batch.failures)
        submitted = None
        if batch.pixels is not None:
            try:
                submitted = (batch, runner.submit(batch.pixels, layers))
            except Exception as error:  # noqa: BLE001 - a failing batch becomes error rows
                model_failed(batch.images, error)
        if in_flight is not None:
            finish(*in_flight)
            if on_batch is not None:
                on_batch(len(in_flight[0].images))
        in_flight = submitted
        if on_batch is not None:
            on_batch(len(batch.failures) + (0 if submitted else len(batch.images)))
    if in_flight is not None:
        finish(*in_flight)
        if on_batch is not None:
            on_batch(len(in_flight[0].images))

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
        "transient": [f.transient for f in failures],
    }
    return pa.Table.from_pydict(data, schema=ERRORS_SCHEMA)


def feature_columns(layers: Sequence[str]) -> list[str]:
    """The Parquet column names of the given feature layers."""
    return [feature_column(name) for name in layers]
