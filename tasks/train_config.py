"""What a training run is told and what it reports: :class:`TrainConfig` (every
option, with the documented defaults and their checks), :class:`EpochMetrics` (one
row of ``metrics.parquet``), :class:`TrainResult`, the file-format names of the run
folder and :class:`TrainingError`. Plain data; nothing here reads or writes files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import Field

from memscore.errors import UserError
from memscore.tasks.params import Device, HumanFormat, Parameters, StorageOptionsField, StorageSecretField

CHECKPOINT_FORMAT = "memscore-checkpoint/1"
# A new best's weights land here, are committed by the checkpoint, then renamed to model.pt.
STAGED_WEIGHTS = "checkpoints/best.pt"
SplitName = Literal["train", "val", "test"]
SPLITS: tuple[str, ...] = get_args(SplitName)
# Names accepted by ``freeze``: child modules, or these groups.
FREEZE_GROUPS = {
    "alexnet": ("conv1", "conv2", "conv3", "conv4", "conv5"),
    "resnet": ("features",),
    "segmenter": ("segmenter",),
}


class TrainingError(UserError, ValueError):
    """A training run cannot start or continue (bad data, config, or OUT); the message says why."""


Fraction = Annotated[float, Field(ge=0, lt=1)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class TrainConfig(Parameters):
    """Everything a training run needs: the ``train`` flow's one parameter, what ``memscore
    train`` builds. Each option's type, default and description is written here only.

    A refused value raises :class:`TrainingError` (one line) when the config is built;
    :meth:`check` adds the checks across fields.
    """

    error_type: ClassVar[type[Exception]] = TrainingError

    model: str = Field(description="model to train: resmem, resmem-retrain, memnet-baseline, m3m, m3m-deeplabv3, "
                                   "resmem-retrain-aim, aim-resnet18, resnet18-nomem")
    human: str = Field(description="human memorability data (path or URI), any format `memscore analyze` reads")
    images: str = Field(description="folder or fsspec URI holding the images the human data names")
    out: str = Field(description="folder or fsspec URI for checkpoints, metrics, the exported model and its card")
    human_format: HumanFormat = Field("auto", description="human data format (auto: detected from the file)")
    id_column: str | None = Field(None, description="column naming the image (default: detected)")
    score_column: str | None = Field(None, description="column with the memorability score (default: detected)")
    measure: str | None = Field(None, description="which measure to use when the data has several")
    duplicates: Literal["error", "mean"] = Field("error", description="several rows for one image: error, or "
                                                                      "mean to average them")
    split_files: dict[SplitName, str] | None = Field(
        None, description='image lists per split, {"train"|"val"|"test": path}: first token per line, e.g. LaMem\'s '
                          "splits/train_1.txt; images in none of them are not used")
    val_fraction: Fraction = Field(0.1, description="random split (when the data gives none): validation share")
    test_fraction: Fraction = Field(0.1, description="random split (when the data gives none): test share")
    seed: int = Field(0, description="seed of the random split, shuffling and augmentation")
    max_images: int | None = Field(None, ge=1, description="use at most this many images (seeded sample; for quick "
                                                           "trials)")
    loss: Literal["mse", "rank"] = Field("mse", description="mse (as the seeds) or rank: MSE + rank_weight x "
                                                            "pairwise logistic rank loss")
    rank_weight: NonNegative = Field(1.0, description="weight of the rank term")
    optimizer: Literal["adamw", "adam", "sgd"] = Field("adamw", description="adamw, adam or sgd (momentum 0.9)")
    lr: NonNegative = Field(1e-4, description="learning rate")
    weight_decay: NonNegative = Field(1e-4, description="weight decay")
    epochs: int = Field(20, ge=1, description="most epochs")
    batch_size: int = Field(32, ge=1, description="images per optimisation step")
    patience: int = Field(5, ge=1, description="stop after this many epochs without a better validation Spearman")
    amp: Literal["auto", "on", "off"] = Field("auto", description="bfloat16 mixed precision (auto: on CUDA only; "
                                                                  "never on the CPU)")
    augment: bool = Field(True, description="random horizontal flips and a random 227 crop of the 256x256 resize "
                                            "(a shift of at most 29 px) for training; validation/test use the "
                                            "center crop")
    freeze: list[str] | None = Field(None, description="child modules or groups (alexnet, resnet, segmenter) not to "
                                                       "train; [] trains all (default: per model: ResMem's and M3M's "
                                                       "ResNet-152 and segmenter)")
    init: Literal["published", "random"] = Field("published", description="start from ResMem's published weights "
                                                 "and the pretrained segmenter, or at random")
    resmem_weights: str | None = Field(None, description="ResMem weights to start from (default: the resmem "
                                                         "package's)")
    segmenter_weights: str | None = Field(None, description="segmenter state dict (default: torchvision's "
                                                            "pretrained weights via the torch hub cache)")
    device: Device = Field("auto", description="auto, cpu, cuda, cuda:N or mps")
    workers: int = Field(0, ge=0, description="DataLoader worker processes (spawned)")
    resume: bool = Field(True, description="continue from OUT's last checkpoint when there is one")
    storage_options: StorageOptionsField = None
    storage_options_secret: StorageSecretField = None

    def check(self) -> None:
        """Raise :class:`TrainingError` for values that cannot work together (each field's own
        range and choices are checked when the config is built)."""
        if self.val_fraction + self.test_fraction >= 1:
            raise TrainingError("val and test fractions must be in [0, 1) and sum to less than 1")

    def as_dict(self) -> dict[str, Any]:
        """The options as JSON-ready data for the model card (without the storage options)."""
        return self.model_dump(mode="json", exclude={"storage_options", "storage_options_secret"})

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
