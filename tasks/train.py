"""Training on a lab's human memorability data, as plain functions (no Prefect here).

:func:`train_model` is the whole job: read the human data (any format the human
data readers understand), find the images under a folder or bucket (fsspec),
split them (split files such as LaMem's ``train_1.txt``/``val_1.txt``/``test_1.txt``,
a ``split`` column, or a seeded random split), then a short loop: per epoch one
pass over the training split with the chosen loss and optimiser, then the
validation loss and the validation Spearman rank correlation (the seeds explain why
both are shown: memorability is ordinal and MSE is only a proxy for rank).

Under OUT (a folder or any fsspec URI) the run writes:

- ``checkpoints/last.pt`` after every epoch (model, optimiser, epoch, metrics,
  config): a killed run started again with the same OUT resumes from it;
- ``model.pt`` whenever validation Spearman improves (the best weights; load it
  with ``memscore score --model NAME --weights model.pt``) and ``model_card.json``
  beside it (data, splits, config, metrics, weights digest);
- ``metrics.parquet`` (one row per epoch), ``splits.parquet`` (image, human,
  split) and, at the end, ``test_predictions.parquet`` when there is a test split.

Each file lands whole (a temporary renamed into place locally, one PUT on object
stores), and an epoch with a new best writes in an order a kill cannot break: the
weights go to ``checkpoints/best.pt`` first, then the checkpoint, which commits them
(it records their digest), then they are renamed to ``model.pt``, then the card. A
kill before the checkpoint lands leaves the previous epoch's model.pt, card and
checkpoint (the next run deletes the uncommitted best.pt); a kill after it leaves a
checkpoint that names the new weights, and the next run (:func:`settle_weights`)
first renames best.pt to model.pt and rewrites a card that names other weights, then
goes on. So model.pt never holds weights the checkpoint does not know; the card lags
behind model.pt only between that rename and the card's own write, until the run is
started again.

Training stops early when validation Spearman has not improved for ``patience``
epochs. Every default is in :class:`TrainConfig`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import platform
import random
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from memscore.models.preprocess import resmem_transform, to_model_input, to_rgb
from memscore.storage.uris import Location, open_location

CHECKPOINT_FORMAT = "memscore-checkpoint/1"
# A new best's weights land here, are committed by the checkpoint, then renamed to model.pt.
STAGED_WEIGHTS = "checkpoints/best.pt"
SPLITS = ("train", "val", "test")
LOSSES = ("mse", "rank")
OPTIMIZERS = ("adamw", "adam", "sgd")
# Names accepted by ``freeze``: child modules, or these groups.
FREEZE_GROUPS = {
    "alexnet": ("conv1", "conv2", "conv3", "conv4", "conv5"),
    "resnet": ("features",),
    "segmenter": ("segmenter",),
}


class TrainingError(ValueError):
    """A training run cannot start or continue (bad data, config, or OUT); the message says why."""


@dataclass
class TrainConfig:
    """Everything a training run needs; the defaults are the documented ones.

    Data:
        model: registered name (resmem, resmem-retrain, memnet-baseline, m3m, m3m-deeplabv3).
        human: human memorability data (path or URI), any format the human data readers read.
        images: folder or fsspec URI holding the images the human data names.
        out: folder or fsspec URI for checkpoints, metrics, the exported model and its card.
        human_format, id_column, score_column, measure, duplicates: passed to the human data
            reader (duplicates: ``error``, the default, or ``mean`` to average rows of one image).
        split_files: {"train"|"val"|"test": path} image lists (first token per line, e.g.
            LaMem's ``splits/train_1.txt``); images in none of them are not used.
        val_fraction, test_fraction: seeded random split when the data gives none (0.1, 0.1).
        max_images: use at most this many images (seeded sample; for quick trials).
    Optimisation:
        loss: ``mse`` (the seeds') or ``rank`` (MSE + rank_weight x pairwise logistic rank loss).
        optimizer: adamw | adam | sgd (momentum 0.9); lr 1e-4; weight_decay 1e-4.
        epochs 20, batch_size 32, patience 5 (early stop on validation Spearman).
        amp: bfloat16 autocast on CUDA ("auto": on when the device is CUDA; never on the CPU).
        augment: random horizontal flip and a random 227 crop of the 256x256 resize
            (a shift of at most 29 px) for training; validation/test use the center crop.
        freeze: child modules or groups (alexnet, resnet, segmenter) not to train;
            None: the model's default (ResMem's and M3M's ResNet-152 and segmenter).
        init: ``published`` (ResMem's published weights, pretrained segmenter) or ``random``.
    """

    model: str
    human: str
    images: str
    out: str
    human_format: str = "auto"
    id_column: str | None = None
    score_column: str | None = None
    measure: str | None = None
    duplicates: str = "error"
    split_files: dict[str, str] | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    max_images: int | None = None
    loss: str = "mse"
    rank_weight: float = 1.0
    optimizer: str = "adamw"
    lr: float = 1e-4
    weight_decay: float = 1e-4
    epochs: int = 20
    batch_size: int = 32
    patience: int = 5
    amp: str = "auto"
    augment: bool = True
    freeze: list[str] | None = None
    init: str = "published"
    resmem_weights: str | None = None
    segmenter_weights: str | None = None
    device: str = "auto"
    workers: int = 0
    resume: bool = True
    storage_options: dict[str, Any] | None = None

    def check(self) -> None:
        """Raise :class:`TrainingError` for values that cannot work."""
        if self.loss not in LOSSES:
            raise TrainingError(f"unknown loss {self.loss!r}; choose from {', '.join(LOSSES)}")
        if self.optimizer not in OPTIMIZERS:
            raise TrainingError(f"unknown optimizer {self.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1:
            raise TrainingError("epochs, batch size and patience must be at least 1")
        for name in ("lr", "weight_decay", "rank_weight"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise TrainingError(f"{name.replace('_', ' ')} must be a number >= 0, not {value!r}")
        if self.max_images is not None and self.max_images < 1:
            raise TrainingError("--max-images must be at least 1")
        if self.workers < 0:
            raise TrainingError("workers must be 0 or more")
        if not (0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1):
            raise TrainingError("val and test fractions must be in [0, 1) and sum to less than 1")
        if self.amp not in ("auto", "on", "off"):
            raise TrainingError("amp must be auto, on or off")
        if self.init not in ("published", "random"):
            raise TrainingError("init must be published or random")
        if self.split_files:
            unknown = set(self.split_files) - set(SPLITS)
            if unknown:
                raise TrainingError(f"split files are named train, val, test; not {', '.join(sorted(unknown))}")

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("storage_options", None)  # may hold credentials
        return data

    def model_options(self) -> dict[str, Any]:
        return {"init": self.init, "resmem_weights": self.resmem_weights, "segmenter_weights": self.segmenter_weights}


@dataclass
class EpochMetrics:
    """One epoch's numbers (one row of ``metrics.parquet``)."""

    epoch: int
    train_loss: float
    val_loss: float
    val_spearman: float
    val_pearson: float
    lr: float
    train_images: int
    seconds: float
    train_images_per_second: float
    best: bool = False


@dataclass
class TrainResult:
    """What a run produced."""

    out: str
    model: str
    epochs_run: int
    stopped_early: bool
    resumed_from_epoch: int | None
    best_epoch: int | None
    best_val_spearman: float | None
    test: dict[str, Any] | None
    metrics: list[EpochMetrics]
    weights_digest: str | None
    train_seconds: float
    parameters: int
    trainable_parameters: int
    card: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- statistics


def rankdata(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties get their average rank (as scipy.stats.rankdata)."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    boundaries = np.flatnonzero(np.diff(sorted_values) != 0) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [len(values)]))
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return ranks


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (NaN when undefined: fewer than 2 values or a constant)."""
    if len(a) < 2:
        return float("nan")
    return pearson(rankdata(a), rankdata(b))


def bootstrap_spearman(pred: np.ndarray, target: np.ndarray, n: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of Spearman's rho, resampling images."""
    pred = np.asarray(pred)
    target = np.asarray(target)
    if len(pred) < 3:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        index = rng.integers(0, len(pred), len(pred))
        value = spearman(pred[index], target[index])
        if not math.isnan(value):
            values.append(value)
    if not values:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def pairwise_rank_loss(pred: torch.Tensor, target: torch.Tensor, scale: float = 10.0) -> torch.Tensor:
    """RankNet-style logistic loss over the batch's pairs whose targets differ."""
    diff_pred = pred[:, None] - pred[None, :]
    sign = torch.sign(target[:, None] - target[None, :])
    mask = sign != 0
    if not bool(mask.any()):
        return pred.sum() * 0
    return nn.functional.softplus(-scale * sign[mask] * diff_pred[mask]).mean()


def loss_fn(config: TrainConfig) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(pred, target)

    if config.loss == "mse":
        return mse

    def rank(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return mse(pred, target) + config.rank_weight * pairwise_rank_loss(pred, target)

    return rank


# ----------------------------------------------------------------------------- data


def read_human_table(config: TrainConfig) -> pa.Table:
    """The human data (``storage.human``'s readers): ``image`` (string), ``human`` (float64), other columns kept."""
    return read_human(config)[0]


def read_human(config: TrainConfig) -> tuple[pa.Table, dict[str, Any]]:
    """:func:`read_human_table` and what the reader made of the file (format, id and score
    columns, measure, rows, warnings, participants kept and excluded) for the model card."""
    from memscore.storage.human import read_human_scores_and_info
    from memscore.storage.uris import local_copy

    try:
        with tempfile.TemporaryDirectory(prefix="memscore-human-") as folder:
            table, info = read_human_scores_and_info(
                local_copy(config.human, folder, config.storage_options), format=config.human_format,
                id_column=config.id_column, score_column=config.score_column, measure=config.measure,
                duplicates=config.duplicates,
            )
    except (OSError, ValueError, KeyError) as error:  # HumanDataError is a ValueError
        raise TrainingError(f"cannot read human data {config.human}: {error}") from error
    except Exception as error:  # noqa: BLE001 - duckdb errors on a malformed file
        raise TrainingError(f"cannot read human data {config.human}: {str(error).splitlines()[0] if str(error) else type(error).__name__}") from error
    if table.num_rows == 0:
        raise TrainingError(f"human data {config.human} has no rows")
    participants = info.participants or None
    read_as = {
        "format": info.format, "id_column": info.id_column, "score_column": info.score_column,
        "measure": info.measure, "rows": info.rows, "images": info.images, "warnings": list(info.warnings),
        "participants": ({k: participants.get(k) for k in ("total", "kept", "excluded", "rules")} if participants else None),
    }
    return table, read_as


def read_split_lines(path: str, storage_options: dict | None = None) -> list[tuple[str, float | None]]:
    """(image, score or None) per non-empty line of a split file: the first token names the
    image, a number after it is its score (LaMem: ``name score``)."""
    import fsspec

    try:
        with fsspec.open(path, "rt", **(storage_options or {})) as handle:
            lines = handle.read().splitlines()
    except (OSError, ValueError) as error:
        raise TrainingError(f"cannot read split file {path}: {error}") from error
    entries = []
    for line in lines:
        parts = line.replace(",", " ").replace("\t", " ").split()
        if parts and parts[0].lower() not in ("image", "filename", "file", "path"):
            score = None
            if len(parts) > 1:
                try:
                    score = float(parts[1])
                except ValueError:
                    score = None
                if score is not None and not math.isfinite(score):
                    score = None
            entries.append((parts[0], score))
    return entries


def read_image_list(path: str, storage_options: dict | None = None) -> list[str]:
    """Image names from a split file: the first token of each non-empty line (LaMem: ``name score``)."""
    return [name for name, _ in read_split_lines(path, storage_options)]


def read_split_files(config: TrainConfig) -> tuple[dict[str, str], dict[str, float]]:
    """({image: split}, {image: score}) from ``config.split_files``; an image listed in two splits is an error."""
    lookup: dict[str, str] = {}
    scores: dict[str, float] = {}
    clashes: list[str] = []
    for split, path in sorted((config.split_files or {}).items()):
        for name, score in read_split_lines(path, config.storage_options):
            previous = lookup.get(name)
            if previous is not None and previous != split:
                clashes.append(f"{name} ({previous} and {split})")
            lookup[name] = split
            if score is not None:
                scores.setdefault(name, score)
    if clashes:
        raise TrainingError(
            f"{len(clashes)} image(s) are listed in more than one split file, e.g. {', '.join(clashes[:3])}: "
            "an image in two splits would be trained and tested on"
        )
    return lookup, scores


class ImageIndex:
    """Finds the file for an image name: exact relative path, else a unique file name, else a unique stem."""

    def __init__(self, images: Location) -> None:
        from memscore.tasks.discover import iter_listing

        self.location = images
        self.by_path: dict[str, str] = {}
        by_name: dict[str, list[str]] = {}
        try:
            for batch in iter_listing(images):
                for rel, uri in zip(batch.column("path").to_pylist(), batch.column("uri").to_pylist()):
                    fs_path = images.fs._strip_protocol(uri)
                    self.by_path[rel] = fs_path
                    by_name.setdefault(rel.rsplit("/", 1)[-1], []).append(fs_path)
        except Exception as error:  # noqa: BLE001 - any listing failure: say where
            raise TrainingError(f"cannot list images under {images.uri}: {error}") from error
        self.by_name = {name: paths[0] for name, paths in by_name.items() if len(paths) == 1}
        by_stem: dict[str, list[str]] = {}
        for name, paths in by_name.items():
            by_stem.setdefault(name.rsplit(".", 1)[0], []).extend(paths)
        self.by_stem = {stem: paths[0] for stem, paths in by_stem.items() if len(paths) == 1}

    def find(self, image: str) -> str | None:
        key = image.replace("\\", "/")
        if "://" in key:
            key = key.split("://", 1)[1]
        root = self.location.root.rstrip("/") + "/"
        if key.startswith(root):
            key = key[len(root):]
        while key.startswith("./"):
            key = key[2:]
        key = key.lstrip("/")
        name = key.rsplit("/", 1)[-1]
        return self.by_path.get(key) or self.by_name.get(name) or self.by_stem.get(name)  # ids without extension too


def assign_splits(table: pa.Table, config: TrainConfig, lookup: dict[str, str] | None = None) -> list[str | None]:
    """The split of each row: from split files (``lookup``, see :func:`read_split_files`),
    a ``split`` column, or seeded at random (:func:`split_source` says which)."""
    images = table.column("image").to_pylist()
    if config.split_files:
        if lookup is None:
            lookup, _ = read_split_files(config)
        by_name: dict[str, str] = {}
        for name, split in lookup.items():
            by_name.setdefault(name.rsplit("/", 1)[-1], split)
        return [lookup.get(img, by_name.get(img.rsplit("/", 1)[-1])) for img in images]
    given = _split_column(table)
    if given is not None:
        return given
    order = sorted(set(images))
    rng = random.Random(config.seed)
    rng.shuffle(order)
    n = len(order)
    n_test = int(round(n * config.test_fraction))
    n_val = int(round(n * config.val_fraction))
    if config.val_fraction > 0 and n_val == 0 and n >= 3:
        n_val = 1
    by_image = {}
    for position, image in enumerate(order):
        by_image[image] = "test" if position < n_test else "val" if position < n_test + n_val else "train"
    return [by_image[img] for img in images]


def _split_column(table: pa.Table) -> list[str | None] | None:
    """The splits a ``split`` column of the human data gives, or None when it has none."""
    if "split" not in table.column_names:
        return None
    given = [(str(s) if s is not None else "").strip().lower() for s in table.column("split").to_pylist()]
    aliases = {"validation": "val", "valid": "val", "dev": "val", "training": "train"}
    given = [aliases.get(s, s) for s in given]
    if not any(given):
        return None
    return [s if s in SPLITS else None for s in given]


def split_source(config: TrainConfig, table: pa.Table) -> str:
    """Where the splits of ``table`` come from, in words (for the model card)."""
    if config.split_files:
        return "split files: " + ", ".join(f"{k}={v}" for k, v in sorted(config.split_files.items()))
    if _split_column(table) is not None:
        return f"the split column of {config.human}"
    return f"random (seed {config.seed}, val {config.val_fraction}, test {config.test_fraction})"


@dataclass
class Splits:
    """Per split: image names, human scores and the files to read."""

    table: pa.Table  # image, human, split, fs_path
    missing_images: int
    unassigned: int
    source: str = ""
    missing_examples: list[str] = field(default_factory=list)
    scores_from_split_files: int = 0
    read_as: dict[str, Any] = field(default_factory=dict)

    def items(self, split: str) -> list[tuple[str, float]]:
        mask = [s == split for s in self.table.column("split").to_pylist()]
        part = self.table.filter(pa.array(mask))
        return list(zip(part.column("fs_path").to_pylist(), part.column("human").to_pylist()))

    def counts(self) -> dict[str, int]:
        values = self.table.column("split").to_pylist()
        return {split: values.count(split) for split in SPLITS}

    def digest(self) -> str:
        sha = hashlib.sha256()
        for image, split in zip(self.table.column("image").to_pylist(), self.table.column("split").to_pylist()):
            sha.update(f"{image}\t{split}\n".encode())
        return "sha256:" + sha.hexdigest()

    def scores_digest(self) -> str:
        """Digest of the human scores (the split digest covers only names and splits)."""
        sha = hashlib.sha256()
        for image, human in zip(self.table.column("image").to_pylist(), self.table.column("human").to_pylist()):
            sha.update(f"{image}\t{human!r}\n".encode())
        return "sha256:" + sha.hexdigest()


def build_splits(config: TrainConfig, images: Location) -> Splits:
    """Read the human data, find each image, and assign splits."""
    lookup, file_scores = read_split_files(config) if config.split_files else (None, {})
    table, read_as = read_human(config)
    from_files = 0
    if file_scores:
        # LaMem's split files carry the scores: images the human data lacks take them from there
        # (e.g. --human train_1.txt with --split-file val=val_1.txt test=test_1.txt)
        known = set(table.column("image").to_pylist())
        known |= {name.rsplit("/", 1)[-1] for name in known}
        extra = [(name, score) for name, score in file_scores.items()
                 if name not in known and name.rsplit("/", 1)[-1] not in known]
        if extra:
            from_files = len(extra)
            table = pa.concat_tables([
                table.select(["image", "human"]),
                pa.table({"image": pa.array([n for n, _ in extra], pa.string()),
                          "human": pa.array([v for _, v in extra], pa.float64())}),
            ])
    # one score per image (several rows for one image: their mean)
    if table.num_rows != len(set(table.column("image").to_pylist())):
        grouped = table.group_by("image").aggregate([("human", "mean")] + ([("split", "min")] if "split" in table.column_names else []))
        table = grouped.rename_columns([{"human_mean": "human", "split_min": "split"}.get(c, c) for c in grouped.column_names])
    if config.max_images is not None and table.num_rows > config.max_images:
        rng = random.Random(config.seed)
        keep = sorted(rng.sample(range(table.num_rows), config.max_images))
        table = table.take(pa.array(keep))
    splits = assign_splits(table, config, lookup)
    index = ImageIndex(images)
    paths = [index.find(img) for img in table.column("image").to_pylist()]
    missing = sum(p is None for p in paths)
    missing_examples = [img for img, p in zip(table.column("image").to_pylist(), paths) if p is None][:20]
    unassigned = sum(s is None for s in splits)
    keep = [p is not None and s is not None for p, s in zip(paths, splits)]
    result = pa.table({
        "image": table.column("image"),
        "human": table.column("human").cast(pa.float64()),
        "split": pa.array(splits, pa.string()),
        "fs_path": pa.array(paths, pa.string()),
    }).filter(pa.array(keep))
    if result.num_rows == 0:
        if missing == table.num_rows:
            raise TrainingError(
                f"none of the {table.num_rows} images named in {config.human} was found under {images.uri} "
                f"(e.g. {', '.join(missing_examples[:3])})"
            )
        if unassigned == table.num_rows:
            raise TrainingError(
                f"none of the {table.num_rows} images named in {config.human} is in a split "
                f"({split_source(config, table)}); do the split files name these images?"
            )
        raise TrainingError(
            f"no image named in {config.human} is both found under {images.uri} ({table.num_rows - missing} are) "
            f"and in a split ({table.num_rows - unassigned} are)"
        )
    counts = Counter(result.column("split").to_pylist())
    if counts.get("train", 0) < 2:
        raise TrainingError(f"the training split has {counts.get('train', 0)} image(s) found; need at least 2")
    if counts.get("val", 0) < 2:
        raise TrainingError(
            f"the validation split has {counts.get('val', 0)} image(s) found; need at least 2 "
            "(give a val split file or a larger --val-fraction)"
        )
    return Splits(result.sort_by("image"), missing, unassigned, source=split_source(config, table),
                  missing_examples=missing_examples, scores_from_split_files=from_files, read_as=read_as)


@dataclass(frozen=True)
class TrainTransform:
    """Training augmentation that hardly changes memorability: resize 256, random 227 crop, random flip."""

    size: int = 256
    crop: int = 227
    flip: bool = True

    def __call__(self, image, generator: torch.Generator | None = None) -> torch.Tensor:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        rgb = to_rgb(image)
        resized = TF.resize(rgb, [self.size, self.size], interpolation=InterpolationMode.BILINEAR)
        top, left = (int(v) for v in torch.randint(0, self.size - self.crop + 1, (2,), generator=generator))
        tensor = TF.pil_to_tensor(TF.crop(resized, top, left, self.crop, self.crop))
        if self.flip and bool(torch.rand((), generator=generator) < 0.5):
            tensor = tensor.flip(-1)
        return tensor


class HumanScoreDataset(Dataset):
    """(image file, human score) pairs read through fsspec; unreadable files give None."""

    def __init__(self, fs, items: Sequence[tuple[str, float]], transform: Callable) -> None:
        self.fs = fs
        self.items = list(items)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        from memscore.tasks.decode import decode_image

        path, score = self.items[index]
        try:
            image = decode_image(self.fs.cat_file(path), None)
            return self.transform(image), float(score), index
        except Exception as error:  # noqa: BLE001 - a bad file is skipped and counted, never a crash
            return None, str(error)[:200], index


def collate_scored(items):
    """Stack the readable items; the rest as a list of (dataset index, reason)."""
    good = [item for item in items if item[0] is not None]
    failed = [(int(item[2]), str(item[1])) for item in items if item[0] is None]
    if not good:
        return None, None, None, failed
    pixels = torch.stack([item[0] for item in good])
    targets = torch.tensor([item[1] for item in good], dtype=torch.float32)
    index = torch.tensor([item[2] for item in good], dtype=torch.long)
    return pixels, targets, index, failed


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, workers: int, generator: torch.Generator | None = None) -> DataLoader:
    from memscore.tasks.decode import worker_options

    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        collate_fn=collate_scored,
        generator=generator,
        # workers as the scoring path starts them (a plain fork breaks inside Prefect
        # flows; spawn re-imports torch in every worker of every loader, seconds each)
        **worker_options(workers),
        persistent_workers=False,
    )


# ----------------------------------------------------------------------------- model


def build_trainable(config: TrainConfig) -> tuple[nn.Module, tuple[str, ...]]:
    """The starting module and the names of its frozen children."""
    from memscore.models.resmem_retrain import freeze, trainable_model

    try:
        recipe = trainable_model(config.model)
    except ValueError as error:
        raise TrainingError(str(error)) from None
    model = recipe.initial(config.model_options())
    requested = recipe.frozen if config.freeze is None else tuple(config.freeze)
    frozen: list[str] = []
    children = dict(model.named_children())
    for name in requested:
        for part in FREEZE_GROUPS.get(name, (name,)):
            if part not in children:
                if name in FREEZE_GROUPS:
                    continue  # a group this model does not have
                raise TrainingError(f"model {config.model!r} has no part {name!r} to freeze; parts: {', '.join(children)}")
            frozen.append(part)
    freeze(model, tuple(frozen))
    if not any(p.requires_grad for p in model.parameters()):
        raise TrainingError("every part of the model is frozen: nothing to train")
    return model, tuple(frozen)


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full state dict (frozen parts included, so the checkpoint scores on its own)."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, device: torch.device, use_amp: bool,
            failures: dict[int, str] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, float]:
    """(indices, predictions, targets, failed, seconds) over a loader, in eval mode.

    ``failures``, if given, receives {dataset index: reason} of the unreadable images."""
    model.eval()
    indices, preds, targets = [], [], []
    failed = 0
    started = time.perf_counter()
    for pixels, target, index, bad in loader:
        failed += len(bad)
        if failures is not None:
            failures.update(bad)
        if pixels is None:
            continue
        x = to_model_input(pixels.to(device))
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            score = model(x)
        preds.append(score.float().cpu().numpy())
        targets.append(target.numpy())
        indices.append(index.numpy())
    seconds = time.perf_counter() - started
    if not preds:
        return np.empty(0, np.int64), np.empty(0), np.empty(0), failed, seconds
    return np.concatenate(indices), np.concatenate(preds), np.concatenate(targets), failed, seconds


# ----------------------------------------------------------------------------- files under OUT


def _local_temporary(out: Location, name: str) -> tuple[str, str]:
    target = out.join(name)
    folder = os.path.dirname(target)
    os.makedirs(folder, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=".", suffix=".inprogress", dir=folder)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    return target, temporary


def remove_stale_temporaries(out: Location) -> int:
    """Delete the half-written ``.*.inprogress`` files a killed run left in a local OUT; return how many."""
    if not out.is_local:
        return 0  # buckets get whole objects (one PUT), nothing half-written
    removed = 0
    for folder in (out.join(""), out.join("checkpoints")):
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            if name.startswith(".") and name.endswith(".inprogress"):
                try:
                    os.unlink(os.path.join(folder, name))
                    removed += 1
                except OSError:
                    pass
    return removed


def _finish_local(temporary: str, target: str) -> None:
    with open(temporary, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, target)


def _write_bytes(out: Location, name: str, data: bytes) -> None:
    """Write ``OUT/name`` whole or not at all (temporary + rename locally, one PUT elsewhere)."""
    if out.is_local:
        target, temporary = _local_temporary(out, name)
        try:
            with open(temporary, "wb") as handle:
                handle.write(data)
            _finish_local(temporary, target)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
    else:
        out.fs.pipe_file(out.join(name), data)


def _save_torch(out: Location, name: str, obj: Any) -> str:
    """torch.save ``obj`` to ``OUT/name`` atomically; return the sha256 digest of the bytes."""
    if out.is_local:  # straight to a file: no second in-memory copy of a large model
        target, temporary = _local_temporary(out, name)
        try:
            torch.save(obj, temporary)
            sha = hashlib.sha256()
            with open(temporary, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 22), b""):
                    sha.update(block)
            _finish_local(temporary, target)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
        return "sha256:" + sha.hexdigest()
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getvalue()
    _write_bytes(out, name, data)
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _write_parquet(out: Location, name: str, table: pa.Table) -> None:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    _write_bytes(out, name, buffer.getvalue())


def _exists(out: Location, name: str) -> bool:
    try:
        return out.fs.exists(out.join(name))
    except OSError:
        return False


def load_checkpoint(out: Location) -> dict[str, Any] | None:
    """``OUT/checkpoints/last.pt`` if there is one."""
    name = "checkpoints/last.pt"
    if not _exists(out, name):
        return None
    with out.fs.open(out.join(name), "rb") as handle:
        data = handle.read()
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - pickled code, a truncated or foreign file: one line
        from memscore.models.weights import load_error_message

        raise TrainingError(load_error_message(error, f"checkpoint {out.full_uri(out.join(name))}")) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{out.join(name)} is not a memscore training checkpoint")
    return state


def _digest(out: Location, name: str) -> str:
    """sha256 of ``OUT/name``'s bytes, as :func:`_save_torch` returns it."""
    sha = hashlib.sha256()
    with out.fs.open(out.join(name), "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            sha.update(block)
    return "sha256:" + sha.hexdigest()


def _publish_weights(out: Location) -> None:
    """Rename the staged best weights to ``OUT/model.pt`` (atomic locally; a server-side copy,
    then the staged object's removal, on object stores: a kill between the two leaves both,
    and publishing again is harmless)."""
    if out.is_local:
        os.replace(out.join(STAGED_WEIGHTS), out.join("model.pt"))
    else:
        out.fs.mv(out.join(STAGED_WEIGHTS), out.join("model.pt"))


def settle_weights(out: Location, committed: str | None) -> str | None:
    """Finish or undo the export of weights that a killed run left staged in ``checkpoints/best.pt``.

    ``committed`` is the best-weights digest of the checkpoint resumed from (None: no checkpoint,
    or not resuming). Staged weights with that digest were committed: they become ``model.pt``
    ("published"). Other staged weights were never committed (the run died before its
    checkpoint landed): they are deleted ("discarded"), and model.pt stays the checkpoint's.
    None when nothing was staged."""
    if not _exists(out, STAGED_WEIGHTS):
        return None
    if committed and _digest(out, STAGED_WEIGHTS) == committed:
        _publish_weights(out)
        return "published"
    out.fs.rm_file(out.join(STAGED_WEIGHTS))
    return "discarded"


def _card_digest(out: Location) -> str | None:
    """The weights digest ``OUT/model_card.json`` names (None: no card, or not readable)."""
    try:
        with out.fs.open(out.join("model_card.json"), "rb") as handle:
            return (json.load(handle).get("weights") or {}).get("digest")
    except (OSError, ValueError, AttributeError):
        return None


def metrics_table(rows: list[EpochMetrics]) -> pa.Table:
    schema = pa.schema([
        ("epoch", pa.int32()), ("train_loss", pa.float64()), ("val_loss", pa.float64()),
        ("val_spearman", pa.float64()), ("val_pearson", pa.float64()), ("lr", pa.float64()),
        ("train_images", pa.int64()), ("seconds", pa.float64()), ("train_images_per_second", pa.float64()),
        ("best", pa.bool_()),
    ])
    return pa.Table.from_pylist([dataclasses.asdict(r) for r in rows], schema=schema)


# ----------------------------------------------------------------------------- the loop


def resume_options(config: TrainConfig, frozen: Sequence[str]) -> dict[str, Any]:
    """The options a resumed run must share with the run it continues (``epochs`` and
    ``patience`` may change, so a finished run can be extended; device and workers too)."""
    return {
        "loss": config.loss, "rank_weight": config.rank_weight, "optimizer": config.optimizer, "lr": config.lr,
        "weight_decay": config.weight_decay, "batch_size": config.batch_size, "augment": config.augment,
        "frozen": list(frozen), "init": config.init, "seed": config.seed,
    }


def resolve_amp(config: TrainConfig, device: torch.device) -> bool:
    if config.amp == "off":
        return False
    if config.amp == "on" and device.type != "cuda":
        raise TrainingError("mixed precision (--amp on) needs a CUDA device")
    return device.type == "cuda"


def train_model(
    config: TrainConfig,
    on_epoch: Callable[[EpochMetrics, list[EpochMetrics]], None] | None = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train ``config.model`` on the human data; see the module docstring for what is written."""
    from memscore.models.devices import resolve_device
    from memscore.models.resmem_retrain import parameter_counts, set_train_mode

    config.check()
    device = resolve_device(config.device)
    use_amp = resolve_amp(config, device)
    out = open_location(config.out, config.storage_options)
    try:
        out_is_file = out.fs.isfile(out.root)
    except OSError:
        out_is_file = False
    if out_is_file:
        raise TrainingError(f"--out {config.out} is a file; OUT is a folder (or bucket prefix) for the run's files")
    images = open_location(config.images, config.storage_options)
    splits = build_splits(config, images)
    counts = splits.counts()
    log(f"data: {counts['train']} train, {counts['val']} val, {counts['test']} test images "
        f"({splits.missing_images} named but not found, {splits.unassigned} in no split; splits: {splits.source})")
    if splits.missing_images:
        log(f"warning: {splits.missing_images} image(s) named in {config.human} not found under {images.uri}, "
            f"e.g. {', '.join(splits.missing_examples[:5])}")
    for warning in splits.read_as.get("warnings") or []:
        log(f"warning: {warning}")
    scores = np.asarray(splits.table.column("human").to_pylist(), dtype=np.float64)
    outside = int(np.sum((scores < 0) | (scores > 1)))
    if outside:
        log(f"warning: {outside} of {len(scores)} human scores lie outside [0, 1] (range {scores.min():.4g} to "
            f"{scores.max():.4g}); every model ends in a sigmoid, so they cannot be fitted: rescale them to 0..1")
    if splits.scores_from_split_files:
        log(f"{splits.scores_from_split_files} image(s) not in {config.human} take their score from the split files")

    model, frozen = build_trainable(config)
    model.to(device)
    optimizer = make_optimizer(config, model)
    criterion = loss_fn(config)
    total_params, trainable_params = parameter_counts(model)

    history: list[EpochMetrics] = []
    start_epoch = 1
    best_spearman = -math.inf
    best_epoch: int | None = None
    best_digest: str | None = None
    since_best = 0
    train_seconds = 0.0
    resumed_from: int | None = None
    options = resume_options(config, frozen)
    scores_digest = splits.scores_digest()
    unreadable: dict[str, str] = {}  # file -> why it could not be read (all splits, all epochs)
    if remove_stale_temporaries(out):
        log(f"removed half-written file(s) a killed run left in {out.uri}")
    checkpoint = load_checkpoint(out) if config.resume else None
    if checkpoint is not None:
        saved = checkpoint["memscore"]
        if saved["model"] != config.model:
            raise TrainingError(
                f"{out.uri} holds a training run of {saved['model']!r}, not {config.model!r}: use another --out or --no-resume"
            )
        if saved["splits_digest"] != splits.digest() or saved.get("scores_digest", scores_digest) != scores_digest:
            raise TrainingError(
                f"{out.uri} holds a run with other data or splits: use another --out or --no-resume"
            )
        changed = [f"{key} {value!r} -> {options[key]!r}" for key, value in (saved.get("options") or {}).items()
                   if key in options and value != options[key]]
        if changed:
            raise TrainingError(
                f"{out.uri} holds a run with other training options ({', '.join(changed)}): run the same command "
                "to resume it (--epochs and --patience may change), or use another --out or --no-resume"
            )
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        history = [EpochMetrics(**row) for row in json.loads(saved["metrics"])]
        start_epoch = int(saved["epoch"]) + 1
        resumed_from = int(saved["epoch"])
        best_spearman = float(saved["best_val_spearman"])
        best_epoch = saved["best_epoch"] if saved["best_epoch"] >= 0 else None
        best_digest = saved["best_digest"] or None
        since_best = int(saved["since_best"])
        train_seconds = float(saved["train_seconds"])
        unreadable.update(saved.get("unreadable") or {})
        log(f"resuming from {out.join('checkpoints/last.pt')} after epoch {resumed_from}")
    settled = settle_weights(out, best_digest if checkpoint is not None else None)
    if settled == "published":
        log(f"a killed run had committed but not exported the weights of epoch {best_epoch}: now {out.join('model.pt')}")
    elif settled == "discarded":
        log(f"removed the weights of an epoch a killed run did not finish ({out.join(STAGED_WEIGHTS)})")
    try:
        _write_parquet(out, "splits.parquet", splits.table.drop_columns(["fs_path"]))
    except OSError as error:  # read-only, a file in the way, no such bucket: before any epoch runs
        raise TrainingError(f"cannot write to {out.uri}: {error}") from error

    train_data = HumanScoreDataset(images.fs, splits.items("train"), TrainTransform() if config.augment else resmem_transform)
    val_loader = make_loader(HumanScoreDataset(images.fs, splits.items("val"), resmem_transform), config.batch_size, False, config.workers)
    card_base = {
        "model": config.model,
        "data": {
            "human": config.human, "images": images.uri, "human_format": config.human_format,
            "measure": config.measure, "missing_images": splits.missing_images,
            "missing_image_examples": splits.missing_examples, "unassigned_images": splits.unassigned,
            "scores_from_split_files": splits.scores_from_split_files,
            "read_as": splits.read_as,
            "unreadable_images": _unreadable_summary(unreadable),
        },
        "splits": {"counts": counts, "digest": splits.digest(), "source": splits.source,
                   "file": out.join("splits.parquet")},
        "config": config.as_dict(),
        "frozen": list(frozen),
        "parameters": total_params,
        "trainable_parameters": trainable_params,
    }

    if resumed_from is not None and best_digest is not None and _card_digest(out) != best_digest:
        # killed after its checkpoint, before its card: the card must name model.pt's weights
        _write_card(out, card_base, history, best_epoch, best_digest, train_seconds, None, finished=False)
        log(f"rewrote {out.join('model_card.json')} for the weights of epoch {best_epoch}")

    # a resumed run that had stopped early (before its last epoch) stays stopped; one that ran all its epochs did not stop early
    stopped_early = since_best >= config.patience and resumed_from is not None and resumed_from < config.epochs
    epoch = start_epoch - 1
    for epoch in range(start_epoch, config.epochs + 1):
        if stopped_early:
            break
        started = time.perf_counter()
        torch.manual_seed(config.seed * 100_003 + epoch)  # dropout and augmentation: same on resume
        generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        loader = make_loader(train_data, config.batch_size, True, config.workers, generator)
        set_train_mode(model)
        loss_sum, seen = torch.zeros((), device=device), 0  # summed on the device: no sync per step
        train_failures: dict[int, str] = {}
        for pixels, target, _index, bad in loader:
            train_failures.update(bad)
            if pixels is None or len(target) < 1:
                continue
            x = to_model_input(pixels.to(device, non_blocking=True))
            target = target.to(device)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                pred = model(x)
            loss = criterion(pred.float(), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(target)
            seen += len(target)
        _note_unreadable(unreadable, train_data, train_failures)
        if seen == 0:
            raise TrainingError(
                f"none of the {len(train_data)} training images could be read, e.g. {_examples(train_data, train_failures)}"
            )
        train_loss = float(loss_sum) / seen  # waits for the epoch's last step
        train_time = time.perf_counter() - started
        val_failures: dict[int, str] = {}
        _, val_pred, val_target, _, _ = predict(model, val_loader, device, use_amp, val_failures)
        _note_unreadable(unreadable, val_loader.dataset, val_failures)
        if len(val_pred) < 2:
            raise TrainingError(
                f"only {len(val_pred)} of the {len(val_loader.dataset)} validation images could be read (need 2), "
                f"e.g. {_examples(val_loader.dataset, val_failures)}"
            )
        failed, val_failed = len(train_failures), len(val_failures)
        val_loss = float(criterion(torch.from_numpy(val_pred).float(), torch.from_numpy(val_target).float())) if len(val_pred) else float("nan")
        rho = spearman(val_pred, val_target)
        seconds = time.perf_counter() - started
        train_seconds += seconds
        # the first epoch always exports a model (even when its Spearman is undefined, e.g. constant predictions)
        improved = best_epoch is None or (not math.isnan(rho) and rho > best_spearman)
        row = EpochMetrics(
            epoch=epoch, train_loss=train_loss, val_loss=val_loss, val_spearman=rho,
            val_pearson=pearson(val_pred, val_target), lr=optimizer.param_groups[0]["lr"], train_images=seen,
            seconds=seconds, train_images_per_second=seen / train_time if train_time > 0 else 0.0, best=improved,
        )
        history.append(row)
        if failed or val_failed:
            log(f"epoch {epoch}: {failed + val_failed} unreadable image(s) skipped, e.g. "
                f"{_examples(train_data, train_failures) if failed else _examples(val_loader.dataset, val_failures)}")
        if improved:
            best_spearman, best_epoch, since_best = (rho if not math.isnan(rho) else -math.inf), epoch, 0
            best_digest = _save_torch(out, STAGED_WEIGHTS, {  # model.pt once the checkpoint commits it
                "model": trainable_state(model),
                "memscore": {"model": config.model, "epoch": epoch, "val_spearman": rho, "format": "memscore-model/1"},
            })
        else:
            since_best += 1
        _write_parquet(out, "metrics.parquet", metrics_table(history))
        _save_torch(out, "checkpoints/last.pt", {
            "format": CHECKPOINT_FORMAT,
            "model": trainable_state(model),
            "optimizer": optimizer.state_dict(),
            "memscore": {
                "model": config.model, "epoch": epoch, "splits_digest": splits.digest(),
                "scores_digest": scores_digest, "options": options,
                "metrics": json.dumps([dataclasses.asdict(r) for r in history]),
                "best_val_spearman": best_spearman, "best_epoch": best_epoch if best_epoch is not None else -1,
                "best_digest": best_digest or "", "since_best": since_best, "train_seconds": train_seconds,
                "unreadable": dict(unreadable),
            },
        })
        if improved:  # committed: the checkpoint names these weights (a kill from here on is settled on resume)
            _publish_weights(out)
        # training time includes writing model.pt, the metrics and the checkpoint (large: weights
        # plus optimiser state), not only the passes over the data
        train_seconds += time.perf_counter() - started - seconds
        if improved:
            card_base["data"]["unreadable_images"] = _unreadable_summary(unreadable)
            _write_card(out, card_base, history, best_epoch, best_digest, train_seconds, None, finished=False)
        log(f"epoch {epoch}: train loss {row.train_loss:.5f}, val loss {row.val_loss:.5f}, "
            f"val Spearman {row.val_spearman:.4f}{' (best)' if improved else ''}, {row.train_images_per_second:.1f} images/s")
        if on_epoch is not None:
            on_epoch(row, history)
        if since_best >= config.patience:
            stopped_early = epoch < config.epochs
            log(f"early stop: validation Spearman has not improved for {config.patience} epoch(s)")
            break

    test = None
    if counts["test"] and best_digest is not None:
        test = evaluate_test(config, out, images, splits, model, device, use_amp, unreadable)
    card_base["data"]["unreadable_images"] = _unreadable_summary(unreadable)
    card = _write_card(out, card_base, history, best_epoch, best_digest, train_seconds, test, finished=True)
    return TrainResult(
        out=out.uri, model=config.model, epochs_run=len(history), stopped_early=stopped_early,
        resumed_from_epoch=resumed_from, best_epoch=best_epoch,
        best_val_spearman=best_spearman if best_epoch is not None and math.isfinite(best_spearman) else None, test=test, metrics=history,
        weights_digest=best_digest, train_seconds=train_seconds, parameters=total_params,
        trainable_parameters=trainable_params, card=card,
    )


def _note_unreadable(unreadable: dict[str, str], dataset: HumanScoreDataset, failures: dict[int, str]) -> None:
    for position, reason in failures.items():
        unreadable.setdefault(dataset.items[position][0], reason)


def _examples(dataset: HumanScoreDataset, failures: dict[int, str], count: int = 3) -> str:
    return "; ".join(f"{dataset.items[i][0]}: {reason}" for i, reason in sorted(failures.items())[:count]) or "none"


def _unreadable_summary(unreadable: dict[str, str], count: int = 20) -> dict[str, Any]:
    return {"count": len(unreadable),
            "examples": [{"file": path, "reason": reason} for path, reason in sorted(unreadable.items())[:count]]}


def evaluate_test(config: TrainConfig, out: Location, images: Location, splits: Splits, model: nn.Module,
                  device: torch.device, use_amp: bool, unreadable: dict[str, str] | None = None) -> dict[str, Any]:
    """Score the test split with the best weights; write ``test_predictions.parquet``."""
    with out.fs.open(out.join("model.pt"), "rb") as handle:
        best = torch.load(io.BytesIO(handle.read()), map_location="cpu", weights_only=True)
    model.load_state_dict(best["model"])
    items = splits.items("test")
    dataset = HumanScoreDataset(images.fs, items, resmem_transform)
    loader = make_loader(dataset, config.batch_size, False, config.workers)
    failures: dict[int, str] = {}
    index, pred, target, failed, seconds = predict(model, loader, device, use_amp, failures)
    if unreadable is not None:
        _note_unreadable(unreadable, dataset, failures)
    rows = [(n, h) for n, h, s in zip(splits.table.column("image").to_pylist(), splits.table.column("human").to_pylist(),
                                      splits.table.column("split").to_pylist()) if s == "test"]
    _write_parquet(out, "test_predictions.parquet", pa.table({
        "image": pa.array([rows[i][0] for i in index], pa.string()),
        "human": pa.array([rows[i][1] for i in index], pa.float64()),  # as in the data, not the loader's float32
        "predicted": pa.array(pred, pa.float64()),
    }))
    low, high = bootstrap_spearman(pred, target, seed=config.seed)
    return {
        "images": int(len(pred)), "unreadable": failed, "spearman": spearman(pred, target),
        "spearman_ci95": [low, high], "pearson": pearson(pred, target),
        "mse": float(np.mean((pred - target) ** 2)) if len(pred) else float("nan"),
        "images_per_second": len(pred) / seconds if seconds > 0 else 0.0,
    }


def _write_card(out: Location, base: dict[str, Any], history: list[EpochMetrics], best_epoch: int | None,
                digest: str | None, train_seconds: float, test: dict[str, Any] | None, finished: bool) -> dict[str, Any]:
    best_row = next((r for r in history if r.epoch == best_epoch), None)
    card = {
        "format": "memscore-model-card/1",
        **base,
        "weights": {"file": out.join("model.pt"), "digest": digest, "best_epoch": best_epoch},
        "metrics": {
            "best": dataclasses.asdict(best_row) if best_row else None,
            "epochs": [dataclasses.asdict(r) for r in history],
            "test": test,
        },
        "train_seconds": train_seconds,
        "finished": finished,
        "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "software": {"torch": torch.__version__, "python": platform.python_version()},
        "score_with": f"memscore score SOURCE --out DEST --model {base['model']} --weights {out.join('model.pt')}",
    }
    _write_bytes(out, "model_card.json", json.dumps(_finite(card), indent=2).encode())
    return card


def _finite(value: Any) -> Any:
    """JSON has no NaN: write null instead."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


__all__ = [
    "TrainConfig", "TrainResult", "EpochMetrics", "TrainingError", "train_model", "spearman",
    "bootstrap_spearman", "pairwise_rank_loss", "build_splits", "ImageIndex", "HumanScoreDataset",
    "make_loader", "predict", "TrainTransform",
]
