"""The ``score-archive`` flow: SOURCE images in, DEST Parquet out.

discover -> plan (skip what DEST holds) -> one ``score-shard`` task run per shard
(DataLoader + model) -> one atomic part per shard -> drop superseded rows ->
summary. :func:`score_archive` is the Prefect flow; it works against a Prefect
server when one is configured and starts a temporary local API otherwise.

Tasks that touch storage (listing and planning, writing parts, compaction) retry
with backoff. A run keeps a progress artifact up to date and ends with a summary
artifact (counts, throughput, errors by reason). With ``dask_address`` the shard
tasks run on an existing Dask cluster through prefect-dask: each worker process
loads the model once, and on a machine with several GPUs each worker takes its own.

The flow's body is :func:`tasks.pipeline.run_score` with these tasks as its steps; the
plain ``memscore score`` path and ``memscore.score()`` run the same function with the
plain steps, without Prefect.
"""

from __future__ import annotations

import os
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from memscore.errors import UserError
from memscore.flows.checked_flow import checked_flow
from memscore.flows.dest_lock import hold_destination
from memscore.models.devices import resolve_device
from memscore.storage.schema import ERRORS_DIR
from memscore.storage.uris import Location
from memscore.tasks import pipeline
from memscore.tasks.discover import DiscoveryCounts, SourceNotFoundError  # noqa: F401 - kept importable here
from memscore.tasks.plan import Plan
from memscore.tasks.progress import ProgressReporter
from memscore.tasks.score import ScoreSettings, ShardResult
from memscore.tasks.score_request import ScoreRequest, ScoreSummary, new_run_id

__all__ = ["ScoreSummary", "new_run_id", "score_archive", "summary_markdown", "plan_run", "score_shard",
           "write_shard", "compact", "worker_device"]


STORAGE_RETRIES = 3
STORAGE_RETRY_DELAYS = [2, 8, 30]  # seconds; exponential backoff, with jitter below


def _retry_storage_errors(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a storage task unless the failure is one that retrying cannot fix."""
    try:
        state.result()
    except (UserError, ValueError, TypeError, KeyError):  # SourceNotFoundError is a UserError
        return False
    except BaseException:  # noqa: BLE001 - network errors, throttling, 5xx: worth another try
        return True
    return True


_storage_task = dict(
    cache_policy=NO_CACHE,
    persist_result=False,
    retries=STORAGE_RETRIES,
    retry_delay_seconds=STORAGE_RETRY_DELAYS,
    retry_jitter_factor=0.5,
    retry_condition_fn=_retry_storage_errors,
)


@task(name="plan-run", **_storage_task)
def plan_run(
    src: Location, dest: Location, model: str | list[str], weights_digest: str | list[str], shard_size: int,
    retry_errors: bool,
) -> tuple[Plan, DiscoveryCounts]:
    """List SOURCE (streamed), anti-join what DEST holds (per model), cut the rest into shards."""
    return pipeline.plan_run(src, dest, model, weights_digest, shard_size, retry_errors)


_pinned_device: dict[str, str] = {}


def worker_device(device: str) -> str:
    """The device this process scores on; on a Dask worker with several GPUs, its own GPU.

    ``auto``/``cuda`` on a Dask worker that sees more than one GPU (and no
    ``CUDA_VISIBLE_DEVICES`` set for it, as dask-cuda does) becomes ``cuda:i``,
    where i is this worker's rank among the workers on its host. Decided once
    per process.
    """
    if device in _pinned_device:
        return _pinned_device[device]
    resolved = resolve_device(device)
    chosen = str(resolved)
    if resolved.type == "cuda" and resolved.index is None and not os.environ.get("CUDA_VISIBLE_DEVICES"):
        import torch

        gpus = torch.cuda.device_count()
        if gpus > 1:
            try:
                from distributed import get_client, get_worker

                worker = get_worker()
                host = worker.address.rsplit(":", 1)[0]
                peers = sorted(a for a in get_client().scheduler_info(n_workers=-1)["workers"] if a.rsplit(":", 1)[0] == host)
                rank = peers.index(worker.address) if worker.address in peers else 0
                chosen = f"cuda:{rank % gpus}"
            except (ImportError, ValueError):  # not on a Dask worker
                pass
            except Exception as error:  # noqa: BLE001 - pinning is an optimisation, never a failure
                get_run_logger().warning("could not pick a GPU for this Dask worker (%s); using %s", error, chosen)
    if chosen.startswith("cuda:"):
        import torch

        torch.cuda.set_device(torch.device(chosen))
    _pinned_device[device] = chosen
    return chosen


@task(name="score-shard", task_run_name="score-shard-{shard_index}", cache_policy=NO_CACHE, persist_result=False)
def score_shard(
    shard_index: int,
    shard: Any,
    source: Location,
    model: str,
    weights: str | None,
    device: str,
    settings: ScoreSettings,
    progress: ProgressReporter | None = None,
) -> ShardResult:
    """Score one shard of images with the model (loaded once per process)."""
    return pipeline.score_shard(shard_index, shard, source, model, weights, worker_device(device), settings,
                                progress, get_run_logger())


@task(name="write-parts", task_run_name="write-parts-{shard_index}", **_storage_task)
def write_shard(dest: Location, run_id: str, shard_index: int, result: ShardResult) -> dict[str, Any]:
    """Write a shard's scores (and errors, if any) as atomic parts under DEST.

    Part names depend only on the run and the shard, so a retried write replaces
    the same objects and never duplicates rows.
    """
    return pipeline.write_shard(dest, run_id, shard_index, result)


@task(name="compact", **_storage_task)
def compact(dest: Location) -> int:
    """Drop rows superseded by newer reads of the same images; return how many."""
    return pipeline.compact(dest)


class _RunProgress:
    """A Prefect progress artifact for the run (never fails the run)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self._id = None
        try:
            from prefect.artifacts import create_progress_artifact

            self._id = create_progress_artifact(
                progress=0.0 if total else 100.0, key="score-archive-progress",
                description=f"images scored or failed, of {total}",
            )
        except Exception as error:  # noqa: BLE001
            get_run_logger().warning("could not create the progress artifact: %s", error)

    def advance(self, images: int) -> None:
        self.done += images
        if self._id is None or not self.total:
            return
        try:
            from prefect.artifacts import update_progress_artifact

            update_progress_artifact(self._id, progress=min(100.0, 100.0 * self.done / self.total))
        except Exception as error:  # noqa: BLE001
            get_run_logger().warning("could not update the progress artifact: %s", error)


def summary_markdown(summary: ScoreSummary) -> str:
    """The run's summary as Markdown (the flow's final artifact)."""
    rows = [
        ("images found", summary.images_found), ("already in DEST (skipped)", summary.skipped),
        ("scored", summary.scored), ("failed", summary.failed), ("other files ignored", summary.ignored_files),
        ("shards", summary.shards), ("superseded rows removed", summary.superseded_rows_removed),
        ("seconds", f"{summary.seconds:.1f}"), ("images/s", f"{summary.images_per_second:.2f}"),
        ("device", summary.device),
    ]
    if len(summary.per_model) > 1:
        rows[1:4] = [("images read (once each)", summary.images_read)] + [
            (f"{name}: scored / skipped / failed", f"{c['scored']} / {c['skipped']} / {c['failed']}")
            for name, c in summary.per_model.items()]
    lines = [
        f"# memscore run {summary.run_id}", "",
        f"`{summary.source}` -> `{summary.destination}` with **{summary.model}** (weights `{summary.weights[:19]}`)", "",
        "| | |", "|---|---:|", *(f"| {k} | {v} |" for k, v in rows), "",
        "## Errors by reason", "",
    ]
    if summary.errors_by_reason:
        lines += ["| reason | images |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in sorted(summary.errors_by_reason.items(), key=lambda kv: (-kv[1], kv[0]))]
        lines += ["", f"Details: `{summary.destination.rstrip('/')}/{ERRORS_DIR}/*.parquet`"]
    else:
        lines.append("none")
    return "\n".join(lines)


@checked_flow(
    name="score-archive", log_prints=True, flow_run_name="{request.model}: {request.source} -> {request.destination}",
    # The summary (a small JSON dict) is kept as the run's result, readable after a deployment run.
    persist_result=True, result_serializer="json",
)
def score_archive(request: ScoreRequest) -> dict[str, Any]:
    """Score every image under ``request.source`` with ``request.model``; write Parquet under
    ``request.destination``.

    Args:
        request: what to score, where to write the results and how: a ScoreRequest
            (tasks/pipeline.py), every option with its type, default and description.
            A dict of its fields is accepted too (a deployment run's parameters).

    Returns:
        The run's summary (counts, images/s, errors by reason) as a dict; it is also
        the flow run's persisted result (JSON), readable after a deployment run.
    """
    from memscore.tasks.checks import check_outside_source

    check_outside_source(request.source, {"DEST": request.destination, "--report": request.report})
    logger = get_run_logger()
    steps = pipeline.PipelineSteps(plan_run=plan_run, score_shard=score_shard, write_shard=write_shard,
                                   compact=compact, run_shards=_score_on_dask, run_progress=_RunProgress, log=logger,
                                   # one run at a time per DEST (with a Prefect server; flows/dest_lock.py)
                                   hold_destination=lambda uri: hold_destination(uri, logger),
                                   progress_bar=_progress_bar)
    summary = pipeline.run_score(request, steps)
    try:
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(summary_markdown(summary), key="score-archive-summary",
                                 description=f"memscore run {summary.run_id}: {summary.text()}")
    except Exception as error:  # noqa: BLE001 - an artifact must never fail a finished run
        logger.warning("could not create the summary artifact: %s", error)
    result = summary.as_dict()
    if request.report:  # the report of DEST, when asked (flows/report.py)
        from memscore.flows.report import report_after_run

        result["report"] = report_after_run(request.destination, request.report, model=summary.model,
                                            storage_options=request.resolved().storage_options)
    return result


def _progress_bar(total: int, enabled: bool) -> ProgressReporter:
    """The terminal progress bar of a run (this module's ProgressReporter, looked up when called)."""
    return ProgressReporter(total=total, enabled=enabled)


def _api_url_for_workers():
    """Tell Dask workers where this run's Prefect API is.

    With a server or Prefect Cloud configured (PREFECT_API_URL) the workers get it
    from the task context. With none, this process started a temporary local API:
    name its URL in the settings sent along with each task, so that the workers
    report to it instead of each starting a temporary API of their own.
    """
    from contextlib import nullcontext

    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        return nullcontext()
    try:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            url = str(client.api_url).rstrip("/")
    except Exception:  # noqa: BLE001 - fall back to Prefect's own behaviour
        return nullcontext()
    return temporary_settings(updates={PREFECT_API_URL: url})


def _score_on_dask(
    address: str, plan: Plan, src: Location, dest: Location, model: str, weights: str | None,
    device: str, settings: ScoreSettings, account: Any,
) -> None:
    """Run every shard's score and write tasks on the Dask cluster at ``address``.

    Each shard's parts are written by a ``write-parts`` task on the cluster; Dask
    picks its worker (the scored table may move between workers, not through this
    process); this process only collects the counts.
    """
    from prefect_dask import DaskTaskRunner

    with _api_url_for_workers(), DaskTaskRunner(address=address) as runner:
        writes = []
        for index, shard in enumerate(plan.shards):
            scored = runner.submit(
                score_shard,
                parameters=dict(shard_index=index, shard=shard, source=src, model=model, weights=weights,
                                device=device, settings=settings, progress=None),
            )
            writes.append(runner.submit(
                write_shard, parameters=dict(dest=dest, run_id=settings.run_id, shard_index=index, result=scored),
            ))
        for future in writes:
            account(future.result())
