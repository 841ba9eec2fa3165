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

The modules of a run: :mod:`memscore.tasks.train_config` (options and results),
:mod:`memscore.tasks.train_data` (human data, splits, datasets),
:mod:`memscore.tasks.train_run` (the files under OUT); this one holds the losses,
:func:`train_one_epoch`, :func:`evaluate` and the loop.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn
from torch.utils.data import DataLoader

from memscore.models.preprocess import resmem_transform, to_model_input
from memscore.storage.uris import Location, open_location
from memscore.tasks.stats import bootstrap_spearman, pearson, rankdata, spearman  # noqa: F401 - re-exported
from memscore.tasks.train_config import (
    FREEZE_GROUPS,
    STAGED_WEIGHTS,
    EpochMetrics,
    TrainConfig,
    TrainingError,
    TrainResult,
)
from memscore.tasks.train_data import (
    HumanScoreDataset,
    ImageIndex,
    Splits,
    TrainTransform,
    UnreadableImages,
    build_splits,
    make_loader,
)
from memscore.tasks.train_run import RunFolder

# ----------------------------------------------------------------------------- losses
# (rankdata, pearson, spearman and bootstrap_spearman live in the one statistics home,
# memscore.tasks.stats, shared with analyze and compare; imported above)


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


def build_trainable(config: TrainConfig) -> tuple[nn.Module, tuple[str, ...]]:
    """The starting module and the names of its frozen children."""
    from memscore.models.registry import trainable_model
    from memscore.models.training import freeze

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



def resolve_amp(config: TrainConfig, device: torch.device) -> bool:
    """Whether to train under bfloat16 autocast (``--amp``; never on the CPU)."""
    if config.amp == "off":
        return False
    if config.amp == "on" and device.type != "cuda":
        raise TrainingError("mixed precision (--amp on) needs a CUDA device")
    return device.type == "cuda"


def resume_options(config: TrainConfig, frozen: Sequence[str]) -> dict[str, Any]:
    """The options a resumed run must share with the run it continues (``epochs`` and
    ``patience`` may change, so a finished run can be extended; device and workers too)."""
    return {
        "loss": config.loss, "rank_weight": config.rank_weight, "optimizer": config.optimizer, "lr": config.lr,
        "weight_decay": config.weight_decay, "batch_size": config.batch_size, "augment": config.augment,
        "frozen": list(frozen), "init": config.init, "seed": config.seed,
    }


# ----------------------------------------------------------------------------- one epoch


def train_one_epoch(model: nn.Module, loader: DataLoader, criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                    optimizer: torch.optim.Optimizer, device: torch.device, use_amp: bool
                    ) -> tuple[float, int, dict[int, str]]:
    """One pass over the training loader: (mean loss, images trained on, {dataset index: why unreadable}).

    The mean loss is NaN when no image could be read."""
    from memscore.models.training import set_train_mode

    set_train_mode(model)
    loss_sum, seen = torch.zeros((), device=device), 0  # summed on the device: no sync per step
    failures: dict[int, str] = {}
    for pixels, target, _index, bad in loader:
        failures.update(bad)
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
    return (float(loss_sum) / seen if seen else float("nan")), seen, failures  # float() waits for the last step


def evaluate(model: nn.Module, loader: DataLoader, criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
             device: torch.device, use_amp: bool) -> tuple[float, float, float, int, dict[int, str]]:
    """Validation: (loss, Spearman, Pearson, images scored, {dataset index: why unreadable}).

    Raises :class:`TrainingError` when fewer than 2 images could be read."""
    failures: dict[int, str] = {}
    _, pred, target, _, _ = predict(model, loader, device, use_amp, failures)
    if len(pred) < 2:
        raise TrainingError(
            f"only {len(pred)} of the {len(loader.dataset)} validation images could be read (need 2), "
            f"e.g. {loader.dataset.examples(failures)}"
        )
    loss = float(criterion(torch.from_numpy(pred).float(), torch.from_numpy(target).float()))
    return loss, spearman(pred, target), pearson(pred, target), len(pred), failures


# ----------------------------------------------------------------------------- where a run stands


@dataclass
class Progress:
    """Where a run stands after its last finished epoch: what ``checkpoints/last.pt``
    records and a resumed run restores."""

    history: list[EpochMetrics] = field(default_factory=list)
    best_spearman: float = -math.inf
    best_epoch: int | None = None
    best_digest: str | None = None
    since_best: int = 0
    train_seconds: float = 0.0
    resumed_from: int | None = None
    unreadable: UnreadableImages = field(default_factory=UnreadableImages)

    @property
    def last_epoch(self) -> int:
        return self.history[-1].epoch if self.history else (self.resumed_from or 0)

    def improves(self, rho: float) -> bool:
        """Whether an epoch with validation Spearman ``rho`` is a new best. The first epoch always
        is (a model is exported even when its Spearman is undefined, e.g. constant predictions)."""
        return self.best_epoch is None or (not math.isnan(rho) and rho > self.best_spearman)

    def checkpoint_record(self, config: TrainConfig, splits: Splits, options: dict[str, Any]) -> dict[str, Any]:
        return {
            "model": config.model, "epoch": self.last_epoch, "splits_digest": splits.digest(),
            "scores_digest": splits.scores_digest(), "options": options,
            "metrics": json.dumps([dataclasses.asdict(r) for r in self.history]),
            "best_val_spearman": self.best_spearman, "best_epoch": self.best_epoch if self.best_epoch is not None else -1,
            "best_digest": self.best_digest or "", "since_best": self.since_best, "train_seconds": self.train_seconds,
            "unreadable": dict(self.unreadable.files),
        }

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any]) -> Progress:
        return cls(
            history=[EpochMetrics(**row) for row in json.loads(saved["metrics"])],
            best_spearman=float(saved["best_val_spearman"]),
            best_epoch=saved["best_epoch"] if saved["best_epoch"] >= 0 else None,
            best_digest=saved["best_digest"] or None,
            since_best=int(saved["since_best"]),
            train_seconds=float(saved["train_seconds"]),
            resumed_from=int(saved["epoch"]),
            unreadable=UnreadableImages(dict(saved.get("unreadable") or {})),
        )


def resume(run: RunFolder, config: TrainConfig, splits: Splits, options: dict[str, Any], model: nn.Module,
           optimizer: torch.optim.Optimizer, log: Callable[[str], None]) -> Progress:
    """Repair what a killed run left in OUT and, unless ``--no-resume``, continue from its
    checkpoint (model and optimiser restored). Raises :class:`TrainingError` when OUT holds a
    run of another model, other data or other options."""
    if run.remove_stale_temporaries():
        log(f"removed half-written file(s) a killed run left in {run.uri}")
    checkpoint = run.load_checkpoint() if config.resume else None
    progress = Progress()
    if checkpoint is not None:
        saved = checkpoint["memscore"]
        if saved["model"] != config.model:
            raise TrainingError(
                f"{run.uri} holds a training run of {saved['model']!r}, not {config.model!r}: use another --out or --no-resume"
            )
        scores_digest = splits.scores_digest()
        if saved["splits_digest"] != splits.digest() or saved.get("scores_digest", scores_digest) != scores_digest:
            raise TrainingError(f"{run.uri} holds a run with other data or splits: use another --out or --no-resume")
        changed = [f"{key} {value!r} -> {options[key]!r}" for key, value in (saved.get("options") or {}).items()
                   if key in options and value != options[key]]
        if changed:
            raise TrainingError(
                f"{run.uri} holds a run with other training options ({', '.join(changed)}): run the same command "
                "to resume it (--epochs and --patience may change), or use another --out or --no-resume"
            )
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        progress = Progress.from_checkpoint(saved)
        log(f"resuming from {run.path('checkpoints/last.pt')} after epoch {progress.resumed_from}")
    settled = run.settle_weights(progress.best_digest if checkpoint is not None else None)
    if settled == "published":
        log(f"a killed run had committed but not exported the weights of epoch {progress.best_epoch}: now {run.path('model.pt')}")
    elif settled == "discarded":
        log(f"removed the weights of an epoch a killed run did not finish ({run.path(STAGED_WEIGHTS)})")
    return progress


def save_epoch(run: RunFolder, model: nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig,
               splits: Splits, options: dict[str, Any], progress: Progress, improved: bool) -> None:
    """Write an epoch in the order a kill cannot break: a new best's weights are staged, the
    metrics and the checkpoint (which commits the staged weights by their digest) follow, then
    the weights are renamed to ``model.pt``. The card is the caller's, last."""
    if improved:
        progress.best_digest = run.stage_weights({
            "model": trainable_state(model),
            "memscore": {"model": config.model, "epoch": progress.best_epoch,
                         "val_spearman": progress.history[-1].val_spearman, "format": "memscore-model/1"},
        })
    run.write_metrics(progress.history)
    run.save_checkpoint({"model": trainable_state(model), "optimizer": optimizer.state_dict(),
                         "memscore": progress.checkpoint_record(config, splits, options)})
    if improved:  # committed: the checkpoint names these weights (a kill from here on is settled on resume)
        run.publish_weights()


# ----------------------------------------------------------------------------- the loop


def load_data(config: TrainConfig, images: Location, log: Callable[[str], None]) -> Splits:
    """The human data and the splits, with what the user should know about them logged."""
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
    return splits


def train_model(
    config: TrainConfig,
    on_epoch: Callable[[EpochMetrics, list[EpochMetrics]], None] | None = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train ``config.model`` on the human data; see the module docstring for what is written.

    Raises :class:`TrainingError` for data, options or an OUT that cannot work."""
    from memscore.models.devices import resolve_device
    from memscore.models.training import parameter_counts

    config.check()
    config = config.resolved()  # the credentials named by storage_options_secret, in this process
    device = resolve_device(config.device)
    use_amp = resolve_amp(config, device)
    run = RunFolder(config.out, config.storage_options)
    images = open_location(config.images, config.storage_options)
    splits = load_data(config, images, log)
    model, frozen = build_trainable(config)
    model.to(device)
    optimizer = make_optimizer(config, model)
    criterion = loss_fn(config)
    options = resume_options(config, frozen)
    progress = resume(run, config, splits, options, model, optimizer, log)
    try:
        run.write_parquet("splits.parquet", splits.table.drop_columns(["fs_path"]))
    except OSError as error:  # read-only, a file in the way, no such bucket: before any epoch runs
        raise TrainingError(f"cannot write to {run.uri}: {error}") from error

    train_data = HumanScoreDataset(images.fs, splits.items("train"), TrainTransform() if config.augment else resmem_transform)
    val_loader = make_loader(HumanScoreDataset(images.fs, splits.items("val"), resmem_transform), config.batch_size, False, config.workers)
    total_params, trainable_params = parameter_counts(model)
    card_base = card_header(config, images, splits, run, frozen, total_params, trainable_params)

    def write_card(test: dict[str, Any] | None = None, finished: bool = False) -> dict[str, Any]:
        card_base["data"]["unreadable_images"] = progress.unreadable.summary()
        return run.write_card(card_base, progress.history, progress.best_epoch, progress.best_digest,
                              progress.train_seconds, test, finished=finished)

    if progress.resumed_from is not None and progress.best_digest is not None and run.card_digest() != progress.best_digest:
        write_card()  # killed after its checkpoint, before its card: the card must name model.pt's weights
        log(f"rewrote {run.path('model_card.json')} for the weights of epoch {progress.best_epoch}")

    # a resumed run that had stopped early (before its last epoch) stays stopped; one that ran all its epochs did not stop early
    stopped_early = (progress.since_best >= config.patience and progress.resumed_from is not None
                     and progress.resumed_from < config.epochs)
    for epoch in range(progress.last_epoch + 1, config.epochs + 1):
        if stopped_early:
            break
        started = time.perf_counter()
        torch.manual_seed(config.seed * 100_003 + epoch)  # dropout and augmentation: same on resume
        generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        loader = make_loader(train_data, config.batch_size, True, config.workers, generator)
        train_loss, seen, train_failures = train_one_epoch(model, loader, criterion, optimizer, device, use_amp)
        progress.unreadable.note(train_data, train_failures)
        if seen == 0:
            raise TrainingError(f"none of the {len(train_data)} training images could be read, e.g. {train_data.examples(train_failures)}")
        train_time = time.perf_counter() - started
        val_loss, rho, r, _, val_failures = evaluate(model, val_loader, criterion, device, use_amp)
        progress.unreadable.note(val_loader.dataset, val_failures)
        seconds = time.perf_counter() - started
        improved = progress.improves(rho)
        row = EpochMetrics(
            epoch=epoch, train_loss=train_loss, val_loss=val_loss, val_spearman=rho, val_pearson=r,
            lr=optimizer.param_groups[0]["lr"], train_images=seen, seconds=seconds,
            train_images_per_second=seen / train_time if train_time > 0 else 0.0, best=improved,
        )
        progress.history.append(row)
        progress.train_seconds += seconds
        if train_failures or val_failures:
            log(f"epoch {epoch}: {len(train_failures) + len(val_failures)} unreadable image(s) skipped, e.g. "
                f"{train_data.examples(train_failures) if train_failures else val_loader.dataset.examples(val_failures)}")
        if improved:
            progress.best_spearman = rho if not math.isnan(rho) else -math.inf
            progress.best_epoch, progress.since_best = epoch, 0
        else:
            progress.since_best += 1
        save_epoch(run, model, optimizer, config, splits, options, progress, improved)
        # training time includes writing model.pt, the metrics and the checkpoint (large: weights
        # plus optimiser state), not only the passes over the data
        progress.train_seconds += time.perf_counter() - started - seconds
        if improved:
            write_card()
        log(f"epoch {epoch}: train loss {row.train_loss:.5f}, val loss {row.val_loss:.5f}, "
            f"val Spearman {row.val_spearman:.4f}{' (best)' if improved else ''}, {row.train_images_per_second:.1f} images/s")
        if on_epoch is not None:
            on_epoch(row, progress.history)
        if progress.since_best >= config.patience:
            stopped_early = epoch < config.epochs
            log(f"early stop: validation Spearman has not improved for {config.patience} epoch(s)")
            break

    test = None
    if splits.counts()["test"] and progress.best_digest is not None:
        test = evaluate_test(config, run, images, splits, model, device, use_amp, progress.unreadable)
    card = write_card(test, finished=True)
    best = progress.best_spearman
    return TrainResult(
        out=run.uri, model=config.model, epochs_run=len(progress.history), stopped_early=stopped_early,
        resumed_from_epoch=progress.resumed_from, best_epoch=progress.best_epoch,
        best_val_spearman=best if progress.best_epoch is not None and math.isfinite(best) else None, test=test,
        metrics=progress.history, weights_digest=progress.best_digest, train_seconds=progress.train_seconds,
        parameters=total_params, trainable_parameters=trainable_params, card=card,
    )


def card_header(config: TrainConfig, images: Location, splits: Splits, run: RunFolder, frozen: Sequence[str],
                parameters: int, trainable_parameters: int) -> dict[str, Any]:
    """The model card's fields that do not change from epoch to epoch (data, splits, config, sizes)."""
    return {
        "model": config.model,
        "data": {
            "human": config.human, "images": images.uri, "human_format": config.human_format,
            "measure": config.measure, "missing_images": splits.missing_images,
            "missing_image_examples": splits.missing_examples, "unassigned_images": splits.unassigned,
            "scores_from_split_files": splits.scores_from_split_files,
            "read_as": splits.read_as,
            "unreadable_images": {},
        },
        "splits": {"counts": splits.counts(), "digest": splits.digest(), "source": splits.source,
                   "file": run.path("splits.parquet")},
        "config": config.as_dict(),
        "frozen": list(frozen),
        "parameters": parameters,
        "trainable_parameters": trainable_parameters,
    }


def evaluate_test(config: TrainConfig, run: RunFolder, images: Location, splits: Splits, model: nn.Module,
                  device: torch.device, use_amp: bool, unreadable: UnreadableImages | None = None) -> dict[str, Any]:
    """Score the test split with the best weights (``model.pt``); write ``test_predictions.parquet``
    and return its statistics (Spearman with a 95% bootstrap interval, Pearson, MSE, images/s)."""
    model.load_state_dict(run.load_weights()["model"])
    dataset = HumanScoreDataset(images.fs, splits.items("test"), resmem_transform)
    loader = make_loader(dataset, config.batch_size, False, config.workers)
    failures: dict[int, str] = {}
    index, pred, target, failed, seconds = predict(model, loader, device, use_amp, failures)
    if unreadable is not None:
        unreadable.note(dataset, failures)
    rows = [(n, h) for n, h, s in zip(splits.table.column("image").to_pylist(), splits.table.column("human").to_pylist(),
                                      splits.table.column("split").to_pylist()) if s == "test"]
    run.write_parquet("test_predictions.parquet", pa.table({
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


__all__ = [
    "TrainConfig", "TrainResult", "EpochMetrics", "TrainingError", "train_model", "train_one_epoch", "evaluate",
    "spearman", "bootstrap_spearman", "pairwise_rank_loss", "build_splits", "ImageIndex", "HumanScoreDataset",
    "make_loader", "predict", "TrainTransform", "RunFolder",
]
