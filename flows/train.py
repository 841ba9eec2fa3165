"""The ``train`` flow: train a memorability model on a lab's human data.

A thin Prefect wrapper around :func:`tasks.train.train_model` (the loop is plain
functions): every epoch's train loss, validation loss and validation Spearman is
logged and published as Prefect artifacts (a table of all epochs so far, under the
key ``train-metrics-<model>``, plus a markdown summary at the end). Checkpoints,
``metrics.parquet``, the exported ``model.pt`` and ``model_card.json`` go to OUT.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from memscore.flows.checked_flow import checked_flow
from memscore.tasks.train import EpochMetrics, TrainConfig, TrainingError, train_model
from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.states import Failed, State


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors the user can fix (bad data, weights, device): the run fails with their one-line message."""
    from memscore.models.devices import DeviceUnavailableError
    from memscore.models.registry import UnknownModelError, WeightsMismatchError
    from memscore.models.weights import WeightsNotFoundError

    return (TrainingError, WeightsNotFoundError, WeightsMismatchError, UnknownModelError, DeviceUnavailableError)


def _artifact_key(model: str) -> str:
    return "train-metrics-" + "".join(c if c.isalnum() else "-" for c in model.lower())


@checked_flow(name="train", log_prints=True, flow_run_name="train {config.model} -> {config.out}")
def train(config: TrainConfig) -> dict[str, Any] | State:
    """Train ``config.model`` on ``config.human`` scores of the images under ``config.images``;
    write to ``config.out``.

    Args:
        config: every option of the run: a TrainConfig (tasks/train_config.py), each option
            with its type, default and description. A dict of its fields is accepted too.

    A problem the user can fix (data, weights, device) ends the run Failed with its
    one-line message, no traceback; calling the flow raises that error.
    """
    logger = get_run_logger()
    model, out = config.model, config.out
    key = _artifact_key(model)

    def publish(row: EpochMetrics, history: list[EpochMetrics]) -> None:
        create_table_artifact(
            key=key,
            table=[dataclasses.asdict(r) for r in history],
            description=f"{model}: epoch {row.epoch}: train loss {row.train_loss:.5f}, "
                        f"val loss {row.val_loss:.5f}, val Spearman {row.val_spearman:.4f}",
        )

    try:
        result = train_model(config, on_epoch=publish, log=logger.info)
    except _user_errors() as error:
        # A Failed state rather than a raise: Prefect would log a traceback for what is a
        # one-line problem (missing images, a bad split file, no segmenter weights offline).
        # Calling the flow still raises ``error`` itself.
        return Failed(message=str(error), data=error)
    test = result.test or {}
    create_markdown_artifact(
        key=key + "-summary",
        markdown=(
            f"# {model}: training finished\n\n"
            f"- epochs run: {result.epochs_run} (early stop: {result.stopped_early}; resumed after epoch: {result.resumed_from_epoch})\n"
            f"- best epoch: {result.best_epoch}, validation Spearman {result.best_val_spearman}\n"
            f"- test Spearman: {test.get('spearman')} (95% CI {test.get('spearman_ci95')}) on {test.get('images')} images\n"
            f"- weights: `{out}/model.pt` ({result.weights_digest})\n"
            f"- parameters: {result.parameters:,} ({result.trainable_parameters:,} trained)\n"
        ),
        description=f"{model} training summary",
    )
    summary = {k: v for k, v in dataclasses.asdict(result).items() if k not in ("card", "metrics")}
    summary["metrics"] = [dataclasses.asdict(r) for r in result.metrics]
    return summary
