"""memscore compare: several models on the same test images, one table.

Each MODEL is a training output folder (from `memscore train`: its model.pt, model
card and splits), a registered model name with its published weights (`resmem`),
or NAME=WEIGHTS. All models score the same test images: those of --split-file,
else the test split of --split-from RUN, else the test split of the first training
folder given, else every image in the human data. The table has, per model:
parameters, test Spearman with a percentile bootstrap interval (resampling
images), training time (from the model card), scoring images/s and how many test
images the model was trained on. Each model scores through the scoring engine
(:func:`memscore.tasks.score.score_images`, whose runner is
:func:`memscore.models.speed.prepare`) with ``memscore score``'s defaults (batch size,
workers, precision, channels_last, BatchNorm folding, JPEG decoding on CUDA), so its
scores and its images/s are what ``memscore score`` gives on this device; images/s is
counted as there: images scored or failed over the wall time of the scoring loop
(reading, decoding and forward passes, end to end; loading the model is not counted).
With several models, each row after the first also has the difference of its
Spearman from the first model's, with a paired bootstrap interval and p-value (same
images, same draws), and every pair is printed below the table. The statistics are
memscore.tasks.stats, as in ``memscore analyze``: the same predictions get the same
Spearman and interval in both.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the CLI imports numpy, pyarrow and torch only when a comparison runs
    import numpy as np
    import pyarrow as pa

EPILOG = """examples:
  memscore compare runs/memnet runs/m3m resmem --images lamem/images --human lamem/splits/test_1.txt
  memscore compare runs/a runs/b --out comparison.parquet --bootstrap 2000"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="+", metavar="MODEL", help="training OUT folder, model name, or NAME=WEIGHTS")
    parser.add_argument("--human", default=None, metavar="PATH", help="human data with the test scores (default: the first run's splits.parquet)")
    parser.add_argument("--images", default=None, metavar="IMAGES", help="folder or URI with the images (default: the first run's)")
    parser.add_argument("--format", dest="human_format", default="auto", help="human data format (default: auto)")
    parser.add_argument("--id-column", default=None)
    parser.add_argument("--score-column", default=None)
    parser.add_argument("--measure", default=None)
    parser.add_argument("--split-file", default=None, metavar="PATH", help="list of test images (first token per line)")
    parser.add_argument("--split-from", default=None, metavar="RUN", help="use the test split of this training folder")
    parser.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap resamples (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--batch-size", type=int, default=None, metavar="N",
                        help="images per forward pass (default as memscore score: 16 on CPU, 256 on CUDA)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="DataLoader workers that read and decode (default as memscore score: from the CPU count)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                        help="as memscore score: auto is fp32 on CPU (the reference), fp16 autocast on CUDA")
    parser.add_argument("--out", default=None, metavar="FILE", help="also write the table (.parquet, .csv or .json; a local file or a URI, with --storage-options)")
    parser.add_argument("--json", action="store_true", help="print the table as JSON on stdout")
    parser.add_argument("--storage-options", default=None, metavar="JSON",
                        help="fsspec options for training folders, images and split files in buckets, as JSON")


@dataclass
class Candidate:
    label: str
    model: str
    weights: str | None
    run: str | None = None
    card: dict[str, Any] | None = None


def _open_run(path: str, storage_options: dict[str, Any] | None) -> dict[str, Any] | None:
    import fsspec

    try:
        with fsspec.open(path.rstrip("/") + "/model_card.json", "rt", **(storage_options or {})) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def parse_candidates(values: list[str], storage_options: dict[str, Any] | None = None) -> list[Candidate]:
    """One candidate per MODEL argument: a training folder (``storage_options`` for one in a
    bucket), a registered model name, or NAME=WEIGHTS."""
    from memscore.flows.cli import UserError
    from memscore.models.registry import UnknownModelError, get_model_spec

    result = []
    for value in values:
        card = _open_run(value, storage_options)
        if card is not None:
            weights = value.rstrip("/") + "/model.pt"
            result.append(Candidate(label=f"{card['model']} ({value.rstrip('/').rsplit('/', 1)[-1]})", model=card["model"],
                                    weights=weights, run=value.rstrip("/"), card=card))
            continue
        name, sep, weights = value.partition("=")
        try:
            spec = get_model_spec(name)  # UnknownModelError names the choices
        except UnknownModelError as error:
            if not sep and ("/" in value or "\\" in value or "://" in value):
                raise UserError(f"{value} is neither a training folder (no model_card.json there) nor a model name; "
                                f"{error}") from None
            raise
        if sep and not weights:
            raise UserError(f"{value!r}: NAME=WEIGHTS needs a weights file")
        result.append(Candidate(label=spec.name if not sep else f"{spec.name} ({weights})", model=spec.name, weights=weights or None))
    labels = [c.label for c in result]
    for candidate, value in zip(result, values):
        if candidate.run and labels.count(candidate.label) > 1:  # two runs/ folders of one name: say which
            candidate.label = f"{candidate.model} ({value.rstrip('/')})"
    return result


def _read_parquet(path: str, storage_options: dict[str, Any] | None):
    import fsspec
    import pyarrow.parquet as pq

    from memscore.flows.cli import UserError

    try:
        with fsspec.open(path, "rb", **(storage_options or {})) as handle:
            return pq.read_table(handle)
    except (OSError, ValueError) as error:  # missing file, not Parquet
        raise UserError(f"cannot read {path}: {error}") from None


def local_weights_file(weights: str, folder: str, storage_options: dict[str, Any] | None = None) -> str:
    """A local path for ``weights``: itself, ``model.pt`` in a training folder, or a copy fetched from a
    bucket (opened with ``storage_options``) into ``folder``."""
    import fsspec

    from memscore.flows.cli import UserError
    from memscore.storage.uris import local_copy

    options = storage_options or {}
    try:
        fs, path = fsspec.core.url_to_fs(weights, **options)
        if fs.isdir(path) and fs.isfile(path.rstrip("/") + "/model.pt"):
            weights = weights.rstrip("/") + "/model.pt"
        return local_copy(weights, tempfile.mkdtemp(dir=folder), options)  # one folder per file: no clashes
    except (OSError, ValueError) as error:
        raise UserError(f"cannot fetch weights {weights}: {error}") from None


def test_set(args: argparse.Namespace, candidates: list[Candidate], storage_options: dict[str, Any] | None = None):
    """(table image/human, description, images location) of the test images; ``storage_options``
    open runs and split files in buckets."""
    import pyarrow as pa

    from memscore.flows.cli import UserError
    from memscore.tasks.train_config import TrainConfig, TrainingError
    from memscore.tasks.train_data import read_human_table, read_image_list

    runs = [c for c in candidates if c.run]
    images = args.images or (runs[0].card["data"]["images"] if runs else None)
    if images is None:
        raise UserError("--images is needed when no training folder is given")
    if args.human:
        config = TrainConfig(model="", human=args.human, images=images, out="", human_format=args.human_format,
                             id_column=args.id_column, score_column=args.score_column, measure=args.measure)
        try:
            human = read_human_table(config).select(["image", "human"])
        except TrainingError as error:
            raise UserError(str(error)) from None
    elif runs:
        human = _read_parquet(runs[0].run + "/splits.parquet", storage_options).select(["image", "human"])
    else:
        raise UserError("--human is needed when no training folder is given")
    if args.split_file:
        try:
            names = set(read_image_list(args.split_file, storage_options))
        except TrainingError as error:
            raise UserError(str(error)) from None
        mask = [n in names or n.rsplit("/", 1)[-1] in names for n in human.column("image").to_pylist()]
        return human.filter(pa.array(mask)), f"images listed in {args.split_file}", images
    source = args.split_from or (runs[0].run if runs else None)
    if source:
        splits = _read_parquet(source.rstrip("/") + "/splits.parquet", storage_options)
        test = set(n for n, s in zip(splits.column("image").to_pylist(), splits.column("split").to_pylist()) if s == "test")
        if not test:
            raise UserError(f"{source} has no test split; give --split-file")
        mask = [n in test for n in human.column("image").to_pylist()]
        return human.filter(pa.array(mask)), f"test split of {source}", images
    return human, "all images in the human data (no test split given)", images


def run(args: argparse.Namespace) -> int:
    import pyarrow as pa

    from memscore.flows.cli import UserError, parse_storage_options
    from memscore.models.devices import resolve_device
    from memscore.storage.uris import open_location
    from memscore.tasks.train_config import TrainingError
    from memscore.tasks.train_data import ImageIndex

    storage_options = parse_storage_options(args.storage_options) or {}
    candidates = parse_candidates(args.models, storage_options)
    table, description, images_uri = test_set(args, candidates, storage_options)
    device = resolve_device(args.device)
    location = open_location(images_uri, storage_options)
    try:
        index = ImageIndex(location)
    except TrainingError as error:
        raise UserError(str(error)) from None
    names, items = [], []
    for name, score in zip(table.column("image").to_pylist(), table.column("human").to_pylist()):
        path = index.find(name)
        if path is not None and score is not None:
            names.append(name)
            items.append((path, float(score)))
    if len(items) < 3:
        raise UserError(f"only {len(items)} test image(s) found under {images_uri} ({description}); need at least 3")
    print(f"memscore: comparing {len(candidates)} model(s) on {len(items)} test images: {description}", file=sys.stderr)
    test_names = set(names)
    rows = []
    with tempfile.TemporaryDirectory(prefix="memscore-compare-") as fetched:
        for candidate in candidates:
            weights = local_weights_file(candidate.weights, fetched, storage_options) if candidate.weights else None
            rows.append(_compare_one(candidate, weights, location, items, test_names, device, args, storage_options))
    predictions = [row.pop("_predictions") for row in rows]
    comparisons = paired_comparisons([r["model"] for r in rows], predictions, [score for _, score in items],
                                     args.bootstrap, args.seed)
    for row in rows:
        row.update(spearman_diff_vs_first=None, spearman_diff_ci_low=None, spearman_diff_ci_high=None,
                   spearman_diff_p_value=None)
    for comp in comparisons:
        if comp["a"] == rows[0]["model"]:
            row = next(r for r in rows[1:] if r["model"] == comp["b"])
            d = comp["spearman_difference"]  # first - this one: report this one - first
            row.update(spearman_diff_vs_first=_neg(d["difference"]), spearman_diff_ci_low=_neg(d["ci_high"]),
                       spearman_diff_ci_high=_neg(d["ci_low"]), spearman_diff_p_value=d["p_value"])
    result = pa.Table.from_pylist(rows)
    if args.json:
        print(json.dumps([_clean(r) for r in rows], indent=2))
    else:
        print(format_table(rows))
        for comp in comparisons:
            d = comp["spearman_difference"]
            if d["difference"] is None:
                print(f"{comp['a']} - {comp['b']}: Spearman difference n/a ({d['reason']})")
            else:
                ci = "n/a" if d["ci_low"] is None else f"{d['ci_low']:.3f}, {d['ci_high']:.3f}"
                p = "n/a" if d["p_value"] is None else f"{d['p_value']:.3g}"
                print(f"{comp['a']} - {comp['b']}: Spearman difference {d['difference']:.3f} [95% CI {ci}] p = {p} "
                      f"(paired bootstrap over the {comp['n']} images every model scored)")
    if args.out:  # after printing: a bad --out does not lose the table
        try:
            write_table(result, args.out, storage_options)
        except (OSError, ValueError, ImportError) as error:  # no such bucket, credentials, a file in the way
            raise UserError(f"cannot write {args.out}: {error}") from None
    return 0


def _compare_one(candidate: Candidate, weights: str | None, location, items, test_names: set[str], device,
                 args: argparse.Namespace, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """One row of the table: score the test images with one model (freed before the next loads).
    Its ``_predictions`` (item index -> score) are taken out for :func:`paired_comparisons`."""
    import numpy as np

    from memscore.flows.cli import UserError
    from memscore.models.registry import load_model
    from memscore.models.training import parameter_counts

    loaded = load_model(candidate.model, weights, device)  # its errors (wrong or unreadable weights) are one line
    total, _ = parameter_counts(loaded.module)  # before the scoring engine folds BatchNorm into the convolutions
    index, pred, failed, images_per_second = score_test_images(loaded, location, [path for path, _ in items], args)
    human = np.array([items[i][1] for i in index], dtype=np.float64)  # as in the data
    rho, low, high = spearman_with_interval(pred, human, args.bootstrap, args.seed)
    overlap = None
    train_seconds = None
    if candidate.run:
        train_seconds = candidate.card.get("train_seconds")
        try:
            splits = _read_parquet(candidate.run + "/splits.parquet", storage_options)
            overlap = sum(1 for n, s in zip(splits.column("image").to_pylist(), splits.column("split").to_pylist())
                          if s == "train" and n in test_names)
        except UserError:
            overlap = None
    return {
        "model": candidate.label, "architecture": candidate.model, "weights": loaded.weights.digest,
        "parameters": total, "test_images": int(len(pred)), "unreadable": failed,
        "test_spearman": rho, "spearman_ci_low": low, "spearman_ci_high": high,
        "training_seconds": train_seconds,
        "weights_source": "memscore train" if candidate.run else ("file" if candidate.weights else "published"),
        "scoring_images_per_second": images_per_second,
        "test_images_seen_in_training": overlap,
        "_predictions": dict(zip(index.tolist(), pred.tolist())),  # item index -> score, for the paired comparisons
    }


def score_test_images(loaded: Any, location: Any, paths: list[str], args: argparse.Namespace
                      ) -> tuple[np.ndarray, np.ndarray, int, float | None]:
    """Score the files ``paths`` (paths on ``location``'s filesystem) with ``loaded`` through the
    scoring engine, :func:`memscore.tasks.score.score_images` (the DataLoader, decoding and
    :func:`memscore.models.speed.prepare`'s runner that ``memscore score`` uses, with its
    defaults: precision, channels_last, BatchNorm folding, JPEG decoding on CUDA).

    Returns (item indices of the scored files, their scores as float64 (the engine's float32
    values), how many could not be read or decoded, images/s). Images/s is counted as
    ``memscore score`` counts it: images scored or failed over the wall time of the scoring
    loop (reading, decoding and forward passes, end to end; no model loading); None when
    nothing was timed."""
    import numpy as np
    import pyarrow as pa
    from PIL import Image

    from memscore.models.devices import defaults_for
    from memscore.tasks.device_decode import resolve_decode
    from memscore.tasks.score import ScoreSettings, score_images

    defaults = defaults_for(loaded.device, resolve_decode("auto", loaded.device, loaded.spec.preprocess))
    settings = ScoreSettings(
        batch_size=args.batch_size or defaults.batch_size,
        workers=defaults.workers if args.workers is None else args.workers,
        features=(), max_pixels=Image.MAX_IMAGE_PIXELS, run_id="compare",
        precision=getattr(args, "precision", "auto"),
    )
    width = len(str(len(paths)))
    shard = pa.table({  # the listing's columns score_images reads; ``path`` carries the item index
        "path": [f"{i:0{width}d}" for i in range(len(paths))],
        "uri": paths,
        "source_version": pa.nulls(len(paths), pa.string()),
        "fs_path": pa.array([p.encode("utf-8", "surrogateescape") for p in paths], pa.binary()),
    })
    started = time.perf_counter()
    result = score_images(shard, location, loaded, settings)
    seconds = time.perf_counter() - started
    index = np.array([int(p) for p in result.scores.column("path").to_pylist()], dtype=np.int64)
    pred = result.scores.column("score").to_numpy().astype(np.float64)
    failed = result.errors.num_rows
    processed = len(index) + failed
    return index, pred, failed, (processed / seconds if processed and seconds > 0 else None)


def spearman_with_interval(pred: np.ndarray, human: np.ndarray, resamples: int, seed: int,
                           confidence: float = 0.95) -> tuple[float, float, float]:
    """(Spearman's rho, interval low, interval high) of one model, NaN where undefined: the values
    ``memscore analyze`` reports for the same predictions (:func:`memscore.tasks.stats.correlate`,
    the same bootstrap draws and rounding)."""
    from memscore.tasks.stats import correlate

    entry = correlate(pred, human, bootstrap=resamples, seed=seed, confidence=confidence, kendall_max_n=0)["spearman"]
    return tuple(math.nan if entry.get(k) is None else float(entry[k]) for k in ("rho", "ci_low", "ci_high"))


def _neg(value: float | None) -> float | None:
    return None if value is None else -value


def paired_comparisons(labels: list[str], predictions: list[dict[int, float]], human: list[float],
                       resamples: int, seed: int, confidence: float = 0.95) -> list[dict[str, Any]]:
    """Every pair of models on the test images all of them scored: the difference of their
    Spearman correlations with a paired percentile bootstrap interval and p-value
    (:func:`memscore.tasks.stats.analyse_models`; the same draws for both models)."""
    import numpy as np

    from memscore.tasks.stats import analyse_models

    if len(labels) < 2:
        return []
    common = sorted(set.intersection(*(set(p) for p in predictions)))
    unique = [label if labels.index(label) == k else f"{label} #{k + 1}" for k, label in enumerate(labels)]
    scores = {label: np.array([p[i] for i in common]) for label, p in zip(unique, predictions)}
    result = analyse_models(scores, np.array([human[i] for i in common], dtype=np.float64), resamples=resamples,
                            seed=seed, confidence=confidence, kendall_max_n=0)
    return result["comparisons"]


def _clean(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


def write_table(table: pa.Table, path: str, storage_options: dict[str, Any] | None = None) -> None:
    """Write the comparison to ``path`` (.csv, .json, else Parquet): a local file or an fsspec URI
    opened with ``storage_options`` (as every other read and write of compare)."""
    import fsspec
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    with fsspec.open(path, "wb", **(storage_options or {})) as handle:
        if path.endswith(".csv"):
            pcsv.write_csv(table, handle)
        elif path.endswith(".json"):
            handle.write(json.dumps([_clean(r) for r in table.to_pylist()], indent=2).encode())
        else:
            pq.write_table(table, handle)


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table for the terminal."""
    header = ["model", "parameters", "test Spearman [95% CI]", "n", "training", "scoring img/s", "seen in training"]
    lines = [header]
    for r in rows:
        ci = f"{r['test_spearman']:.3f} [{r['spearman_ci_low']:.3f}, {r['spearman_ci_high']:.3f}]"
        training = (f"{r['training_seconds']:.0f} s" if r["training_seconds"] is not None
                    else "published" if r["weights_source"] == "published" else "n/a")
        speed = "n/a" if r["scoring_images_per_second"] is None else f"{r['scoring_images_per_second']:.2f}"
        seen = "n/a" if r["test_images_seen_in_training"] is None else str(r["test_images_seen_in_training"])
        lines.append([r["model"], f"{r['parameters']:,}", ci, str(r["test_images"]), training, speed, seen])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)
