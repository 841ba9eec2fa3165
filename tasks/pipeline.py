"""The scoring pipeline as plain functions: SOURCE images in, DEST Parquet parts out.

discover -> plan (skip what DEST holds) -> score each shard (DataLoader + model) ->
one atomic part per shard -> drop superseded rows -> :class:`ScoreSummary` (also
written to ``DEST/runs/<run_id>.json``, :mod:`storage.runs`).

This is the one way data flows through a scoring run, without Prefect: the plain
``memscore score`` path and ``memscore.score()`` call :func:`run_score` with the
plain steps below, and the ``score-archive`` flow (:mod:`flows.score`) calls it with
the same steps wrapped as Prefect tasks (retries, a progress artifact, Dask). What
belongs here: the run's checks before any work (:func:`check_request`) and the steps;
the run's parameter object and summary are :mod:`tasks.score_request`, its models
:mod:`tasks.model_choice` (both re-exported here).

Several models in one pass (``model="resmem,falseresmem"``): :func:`model_choice` resolves
the names, weights and each model's layers; the plan skips per model
(:func:`tasks.plan.plan_models`); each shard is read and decoded once and scored by every
model that still needs its images (:func:`tasks.score.score_models`); each model's rows go
to their own parts; the summary counts per model (``per_model``).
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, Protocol

import pyarrow as pa

from memscore.storage.uris import Location, open_location
from memscore.tasks.discover import DiscoveryCounts, iter_listing
from memscore.tasks.model_choice import (  # noqa: F401 - re-exported: the run's models
    ModelChoiceError,
    check_decode,
    check_user_weights,
    features_by_model,
    model_choice,
    model_names,
    shared_preprocess,
    weights_by_model,
)
from memscore.tasks.plan import Plan, done_keys_by_model, plan_models
from memscore.tasks.score_request import ScoreRequest, ScoreSummary, new_run_id  # noqa: F401 - re-exported

logger = logging.getLogger("memscore.score")


# ---------------------------------------------------------------------------
# checks before any work


def check_source(source: str, storage_options: dict | None) -> None:
    """Raise :class:`tasks.discover.SourceUnreadableError` unless SOURCE is a folder we can list
    (:func:`tasks.checks.check_source`)."""
    from memscore.tasks import checks
    from memscore.tasks.discover import SourceUnreadableError

    try:
        location = open_location(source, storage_options)
    except (ImportError, ValueError) as error:
        raise SourceUnreadableError(f"cannot open source {source}: {error}") from None
    checks.check_source(location, source)


def check_destination(destination: str, storage_options: dict | None) -> None:
    """Raise :class:`tasks.checks.DestinationUnwritableError` unless DEST can be written (a probe
    object, deleted again; :func:`tasks.checks.check_destination`)."""
    from memscore.tasks.checks import DestinationUnwritableError
    from memscore.tasks.checks import check_destination as probe

    try:
        location = open_location(destination, storage_options)
    except (ImportError, ValueError) as error:
        raise DestinationUnwritableError(f"cannot open destination {destination}: {error}") from None
    probe(location, destination)


def check_request(request: ScoreRequest) -> None:
    """Fail fast on what needs no run: unknown model or layers, weights that are missing or
    do not fit, an unreadable SOURCE, a device or backend not available here.

    Raises: :class:`models.registry.UnknownModelError`, ValueError (layers, backend options),
    :class:`models.weights.WeightsNotFoundError`, :class:`models.registry.WeightsMismatchError`,
    :class:`tasks.discover.SourceUnreadableError`, :class:`tasks.checks.DestinationUnwritableError`,
    :class:`models.devices.DeviceUnavailableError`,
    :class:`models.onnx_runtime.BackendUnavailableError`.
    """
    from memscore.models.devices import resolve_device
    from memscore.models.speed import check_backend
    from memscore.tasks.checks import check_outside_source

    request = request.resolved()  # the credentials named by storage_options_secret, in this process
    specs, refs, _ = model_choice(request.model, request.weights, request.features, request.decode)
    check_user_weights(specs, refs, request.weights)  # a user's file: check it fits its model before any run starts
    check_outside_source(request.source, {"DEST": request.destination, "--report": request.report})
    check_source(request.source, request.storage_options)
    check_destination(request.destination, request.storage_options)
    if not request.dask_address:  # on a Dask cluster the device is resolved on the workers
        device = resolve_device(request.device)
        if request.backend != "torch":
            check_backend(request.backend, device, request.precision, request.compile_model)


# ---------------------------------------------------------------------------
# the steps (the flow wraps each one as a Prefect task)


def plan_run(
    src: Location, dest: Location, model: str | Sequence[str], weights_digest: str | Sequence[str], shard_size: int,
    retry_errors: bool,
) -> tuple[Plan, DiscoveryCounts]:
    """List SOURCE (streamed), anti-join what DEST holds for each model, cut the rest into shards.

    ``model`` and ``weights_digest``: one name and digest, or one of each per model (in the
    same order). The shards have a ``models`` column (:func:`tasks.plan.plan_models`).
    """
    from memscore.storage.parts import remove_stale_temporaries

    models = [model] if isinstance(model, str) else list(model)
    digests = [weights_digest] if isinstance(weights_digest, str) else list(weights_digest)
    if len(models) != len(digests):
        raise ValueError(f"{len(models)} model(s) but {len(digests)} weights digest(s)")
    counts = DiscoveryCounts()
    remove_stale_temporaries(dest)
    done = done_keys_by_model(dest, list(zip(models, digests)), include_errors=not retry_errors)
    plan = plan_models(iter_listing(src, counts=counts), done, models, shard_size)
    return plan, counts


def score_shard(
    shard_index: int,
    shard: pa.Table,
    source: Location,
    model: str | Sequence[str],
    weights: str | None,
    device: str,
    settings: Any,
    progress: Any = None,
    log: logging.Logger | logging.LoggerAdapter | None = None,
) -> Any:
    """Score one shard of images with the model (loaded once per process): a ShardResult.

    With several models (``"resmem,falseresmem"`` or a list) each image is read and decoded
    once and the result is ``{model name: ShardResult}`` (:func:`tasks.score.score_models`).
    ``settings`` is a :class:`tasks.score.ScoreSettings`; a batch size or worker count
    left None is decided here, for the device this process scores on.
    """
    from memscore.models.devices import defaults_for, resolve_device
    from memscore.models.registry import get_model_spec
    from memscore.tasks import score as scoring
    from memscore.tasks.decode import start_worker_server
    from memscore.tasks.device_decode import resolve_decode

    log = log or logger
    names = model_names(model)
    torch_device = resolve_device(device)
    if settings.batch_size is None or settings.workers is None:  # decided where the shard runs (Dask)
        preprocess = shared_preprocess([get_model_spec(name) for name in names])
        defaults = defaults_for(torch_device, resolve_decode(settings.decode, torch_device, preprocess))
        settings = replace(
            settings,
            batch_size=settings.batch_size or defaults.batch_size,
            workers=defaults.workers if settings.workers is None else settings.workers,
        )
    if settings.workers and multiprocessing.current_process().daemon:
        # Daemonic processes (Dask's default workers) may not start DataLoader workers.
        log.warning(
            "this process is daemonic (a Dask worker?): decoding in-process; start Dask workers with "
            "DASK_DISTRIBUTED__WORKER__DAEMON=False to use %d decode workers", settings.workers
        )
        settings = replace(settings, workers=0)
    start_worker_server(settings.workers)  # its torch import runs while the model loads
    files = weights_by_model(names, weights)
    loaded = [scoring.get_model(name, files[name], torch_device) for name in names]
    on_batch = progress.advance if progress else None
    if len(loaded) == 1:
        return scoring.score_images(shard, source, loaded[0], settings, on_batch=on_batch)
    return scoring.score_models(shard, source, loaded, settings, on_batch=on_batch)


def write_shard(dest: Location, run_id: str, shard_index: int, result: Any) -> dict[str, Any]:
    """Write a shard's scores (and errors, if any) as atomic parts under DEST.

    ``result`` is a ShardResult, or ``{model name: ShardResult}`` for several models: one
    part per model then, ``part-<run>-<shard>-<model>.parquet`` (a model's feature columns
    are its own). Part names depend only on the run, the shard (and the model), so a retried
    write replaces the same objects and never duplicates rows. Returns the counts
    ``{"scored", "failed", "errors_by_reason", "failed_transient", "images", "by_model"}``
    (``images``: distinct images in the shard's rows; ``by_model``: the counts per model).
    """
    from memscore.storage.parts import write_part_atomic
    from memscore.storage.schema import ERRORS_DIR, SCORES_DIR

    results = result if isinstance(result, dict) else {None: result}
    total: dict[str, Any] = {"scored": 0, "failed": 0, "errors_by_reason": {}, "failed_transient": 0, "by_model": {}}
    images: set[str] = set()
    for model, one in results.items():
        suffix = f"-{_part_safe(model)}" if len(results) > 1 else ""
        name = f"part-{run_id}-{shard_index:06d}{suffix}.parquet"
        if one.scores.num_rows:
            write_part_atomic(dest, SCORES_DIR, name, one.scores)
        if one.errors.num_rows:
            write_part_atomic(dest, ERRORS_DIR, name, one.errors)
        reasons: dict[str, int] = {}
        for reason in one.errors.column("error").to_pylist():
            reasons[reason] = reasons.get(reason, 0) + 1
        transient = sum(bool(t) for t in one.errors.column("transient").to_pylist())
        counts = {"scored": one.scores.num_rows, "failed": one.errors.num_rows, "errors_by_reason": reasons,
                  "failed_transient": transient}
        images.update(one.scores.column("uri").to_pylist())
        images.update(one.errors.column("uri").to_pylist())
        names = one.scores.column("model").to_pylist()[:1] or one.errors.column("model").to_pylist()[:1]
        total["by_model"][model or (names[0] if names else "")] = counts
        for key in ("scored", "failed", "failed_transient"):
            total[key] += counts[key]
        for reason, n in reasons.items():
            total["errors_by_reason"][reason] = total["errors_by_reason"].get(reason, 0) + n
    total["images"] = len(images)
    return total


def _part_safe(model: str) -> str:
    """A model name as it appears in a part's file name (letters, digits, ``-`` and ``_``)."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in model)


def compact(dest: Location) -> int:
    """Drop rows superseded by newer reads of the same images; return how many."""
    from memscore.storage.compact import drop_superseded_rows

    return drop_superseded_rows(dest)


class RunProgress(Protocol):
    """Something told how many images were scored or failed (a Prefect artifact, ...)."""

    def advance(self, images: int) -> None: ...


class _NoRunProgress:
    def __init__(self, total: int) -> None:
        self.total = total

    def advance(self, images: int) -> None:
        pass


ShardRunner = Callable[..., None]


@dataclass
class PipelineSteps:
    """The steps :func:`run_score` calls: plain functions by default, Prefect tasks in the flow.

    ``run_shards`` replaces the in-process loop over the shards (the flow's Dask
    runner); it is called as ``run_shards(address, plan, src, dest, model, weights,
    device, settings, account)`` and must pass each shard's write counts to ``account``.
    """

    plan_run: Callable[..., tuple[Plan, DiscoveryCounts]] = plan_run
    score_shard: Callable[..., Any] = score_shard
    write_shard: Callable[..., dict[str, Any]] = write_shard
    compact: Callable[[Location], int] = compact
    run_shards: ShardRunner | None = None
    run_progress: Callable[[int], RunProgress] = _NoRunProgress
    log: logging.Logger | logging.LoggerAdapter = logger
    hold_destination: Callable[[str], AbstractContextManager[Any]] = lambda uri: nullcontext()
    progress_bar: Callable[[int, bool], Any] | None = None  # (total, enabled) -> a tasks.progress.ProgressReporter


def run_score(request: ScoreRequest, steps: PipelineSteps | None = None) -> ScoreSummary:
    """Run the pipeline for ``request``; return what it did.

    Writes ``DEST/scores/part-<run>-<shard>.parquet`` (and ``DEST/errors/...``) and
    skips the images DEST already holds for this model and weights. Unreadable
    images become error rows, never exceptions; a bad request raises what
    :func:`check_request` lists (this function does not call it: callers do, before
    any server or work starts).
    """
    import torch
    from memscore.models.devices import defaults_for, resolve_device
    from memscore.models.speed import check_backend
    from memscore.tasks.device_decode import resolve_decode
    from memscore.tasks.score import ScoreSettings
    from PIL import Image

    steps = steps or PipelineSteps()
    request = request.resolved()  # the credentials named by storage_options_secret, in this process
    started = time.perf_counter()
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    specs, refs, layers = model_choice(request.model, request.weights, request.features, request.decode)

    if request.dask_address:
        if steps.run_shards is None:
            raise ValueError("scoring on a Dask cluster runs as the Prefect flow (flows.score.score_archive)")
        # The workers may have other hardware than this process: resolve there.
        shard_device = request.device
        device_label = f"{request.device} on dask {request.dask_address}"
        guess = "cuda" if request.device.startswith("cuda") else "cpu"
        defaults = defaults_for(torch.device(guess))
        settings_batch, settings_workers = request.batch_size, request.workers
    else:
        torch_device = resolve_device(request.device)
        check_backend(request.backend, torch_device, request.precision, request.compile_model)  # before any shard
        shard_device = device_label = str(torch_device)
        defaults = defaults_for(torch_device, resolve_decode(request.decode, torch_device, shared_preprocess(specs)))
        settings_batch = request.batch_size or defaults.batch_size
        settings_workers = defaults.workers if request.workers is None else request.workers
    settings = ScoreSettings(
        batch_size=settings_batch,
        workers=settings_workers,
        features=layers[specs[0].name],
        features_by_model=layers,
        max_pixels=request.max_pixels if request.max_pixels is not None else Image.MAX_IMAGE_PIXELS,
        run_id=new_run_id(),
        precision=request.precision,
        channels_last=request.channels_last,
        fold_batchnorm=request.fold_batchnorm,
        compile=request.compile_model,
        decode=request.decode,
        backend=request.backend,
    )
    src = open_location(request.source, request.storage_options)
    dest = open_location(request.destination, request.storage_options)
    # Before any image is scored, and not retried: a missing SOURCE, bucket or credentials stays missing.
    from memscore.tasks.checks import check_destination as probe_destination
    from memscore.tasks.checks import check_source as list_source

    list_source(src, request.source)
    probe_destination(dest, request.destination)
    with steps.hold_destination(dest.uri):
        return _run(request, steps, started, started_at, specs, refs, src, dest, settings, defaults, shard_device,
                    device_label)


def _run(request: ScoreRequest, steps: PipelineSteps, started: float, started_at: str, specs: list[Any],
         refs: dict[str, Any], src: Location, dest: Location, settings: Any, defaults: Any, shard_device: str,
         device_label: str) -> ScoreSummary:
    """The run's body once its checks passed and it holds DEST (plan, score, write, compact, summary)."""
    from memscore.storage.schema import ERRORS_DIR
    from memscore.tasks.progress import ProgressReporter

    log = steps.log
    names = [spec.name for spec in specs]
    one = len(names) == 1
    plan, counts = steps.plan_run(src, dest, names[0] if one else names,
                                  refs[names[0]].digest if one else [refs[n].digest for n in names],
                                  request.shard_size or defaults.shard_size, request.retry_errors)
    skipped = {name: plan.skipped_by_model.get(name, plan.already_done) for name in names}
    retried = {name: plan.after_transient_by_model.get(name, plan.after_transient) for name in names}
    summary = ScoreSummary(
        run_id=settings.run_id, source=src.uri, destination=dest.uri, model=",".join(names),
        weights=",".join(refs[name].digest for name in names),
        device=device_label, backend=settings.backend, files_seen=counts.files, images_found=counts.images,
        ignored_files=counts.ignored, skipped=sum(skipped.values()), shards=len(plan.shards),
        retried_after_transient=sum(retried.values()), not_followed=dict(counts.not_followed),
        unreadable_folders=counts.unreadable_folders, escaped_names=counts.escaped_names,
        per_model={name: {"weights": refs[name].digest, "scored": 0, "skipped": skipped[name], "failed": 0,
                          "failed_transient": 0, "retried_after_transient": retried[name]} for name in names},
    )
    for line in counts.warnings():
        log.warning("%s", line)
    if one:
        log.info(
            "found %d image(s) (%d other file(s) ignored); %d already in DEST; scoring %d in %d shard(s) on %s",
            counts.images, counts.ignored, plan.already_done, plan.to_score, len(plan.shards), device_label,
        )
    else:
        log.info(
            "found %d image(s) (%d other file(s) ignored); reading %d once for %d models (%s) in %d shard(s) on %s",
            counts.images, counts.ignored, plan.to_score, len(names),
            ", ".join(f"{n}: {plan.to_score_by_model.get(n, 0)} to score, {skipped[n]} already in DEST"
                      for n in names), len(plan.shards), device_label,
        )
    run_progress = steps.run_progress(plan.to_score)

    def account(written: dict[str, Any]) -> None:
        summary.scored += written["scored"]
        summary.failed += written["failed"]
        summary.failed_transient += written.get("failed_transient", 0)
        for reason, n in written["errors_by_reason"].items():
            summary.errors_by_reason[reason] = summary.errors_by_reason.get(reason, 0) + n
        for name, counted in written.get("by_model", {}).items():
            row = summary.per_model.setdefault(name, {"scored": 0, "skipped": 0, "failed": 0, "failed_transient": 0})
            for key in ("scored", "failed", "failed_transient"):
                row[key] = row.get(key, 0) + counted.get(key, 0)
        images = written.get("images", written["scored"] + written["failed"])
        summary.images_read += images
        run_progress.advance(images)
        if request.dask_address:  # the shards ran elsewhere: the terminal bar advances as their parts land
            progress.advance(images)

    make_bar = steps.progress_bar or (lambda total, enabled: ProgressReporter(total=total, enabled=enabled))
    progress = make_bar(plan.to_score, request.show_progress)
    scoring_started = time.perf_counter()
    try:
        if request.dask_address and plan.shards:
            steps.run_shards(request.dask_address, plan, src, dest, ",".join(names), request.weights, shard_device,
                             settings, account)
        else:
            for index, shard in enumerate(plan.shards):
                result = steps.score_shard(index, shard, src, ",".join(names), request.weights, shard_device, settings,
                                           progress)
                account(steps.write_shard(dest, settings.run_id, index, result))
    finally:
        progress.close()
    scoring_seconds = time.perf_counter() - scoring_started
    summary.superseded_rows_removed = steps.compact(dest)
    summary.seconds = time.perf_counter() - started
    processed = summary.images_read
    summary.images_per_second = processed / scoring_seconds if processed and scoring_seconds > 0 else 0.0
    log.info("%s", summary.text())
    if summary.failed:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(summary.errors_by_reason.items(), key=lambda kv: -kv[1]))
        what = "image(s)" if one else "image-and-model row(s)"
        log.warning("%d %s could not be scored (%s); details in %s/%s", summary.failed, what, reasons,
                    summary.destination.rstrip("/"), ERRORS_DIR)
    try:  # provenance for `memscore report` (storage/runs.py); never fails a finished run
        from memscore.storage.runs import write_run_summary

        write_run_summary(dest, {**summary.as_dict(), "started_at": started_at,
                                 "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                 "scoring_seconds": round(scoring_seconds, 3)})
    except Exception as error:  # noqa: BLE001
        log.warning("could not write the run summary to DEST/runs: %s", error)
    return summary
