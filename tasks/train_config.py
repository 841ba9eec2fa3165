"""What a training run is told and what it reports: :class:`TrainConfig` (every
option, with the documented defaults and their checks), :class:`EpochMetrics` (one
row of ``metrics.parquet``), :class:`TrainResult`, the file-format names of the run
folder and :class:`TrainingError`. Plain data; nothing here reads or writes files.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from memscore.errors import UserError

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


class TrainingError(UserError, ValueError):
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
