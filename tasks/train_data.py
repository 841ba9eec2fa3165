"""Training data: the human scores (any format :mod:`memscore.storage.human` reads),
the images they name under a folder or bucket (:class:`ImageIndex`), the train /
validation / test split (split files such as LaMem's ``train_1.txt``, a ``split``
column, or a seeded random split: :func:`build_splits`), and the torch datasets and
loaders that read, decode and transform the images (unreadable files are reported
per batch, never a crash).
"""

from __future__ import annotations

import hashlib
import math
import tempfile
from collections.abc import Callable, Sequence
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import torch
from torch.utils.data import DataLoader, Dataset

from memscore.models.preprocess import to_rgb
from memscore.storage.uris import Location
from memscore.tasks.train_config import SPLITS, TrainConfig, TrainingError


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

    def examples(self, failures: dict[int, str], count: int = 3) -> str:
        """A few of ``failures`` ({dataset index: reason}) as ``file: reason; ...`` ("none" when empty)."""
        return "; ".join(f"{self.items[i][0]}: {reason}" for i, reason in sorted(failures.items())[:count]) or "none"


@dataclass
class UnreadableImages:
    """The image files a run could not read (all splits, all epochs): {file: why}. Kept in the
    checkpoint, so a resumed run still reports what earlier epochs met."""

    files: dict[str, str] = field(default_factory=dict)

    def note(self, dataset: HumanScoreDataset, failures: dict[int, str]) -> None:
        """Record ``failures`` ({dataset index: reason}) of ``dataset``; the first reason per file stays."""
        for position, reason in failures.items():
            self.files.setdefault(dataset.items[position][0], reason)

    def summary(self, count: int = 20) -> dict[str, Any]:
        """The model card's ``unreadable_images``: the count and up to ``count`` examples."""
        return {"count": len(self.files),
                "examples": [{"file": path, "reason": reason} for path, reason in sorted(self.files.items())[:count]]}


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
