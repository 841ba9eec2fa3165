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
"""

from __future__ import annotations

import multiprocessing
import os
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from memscore.errors import UserError
from memscore.flows.dest_lock import hold_destination
from memscore.flows.params import Backend, Decode, Device, Precision, StorageOptions, resolve_storage_options
from memscore.models.devices import defaults_for, resolve_device
from memscore.models.registry import get_model_spec, resolve_weights
from memscore.models.speed import check_backend
from memscore.storage.compact import drop_superseded_rows
from memscore.storage.parts import remove_stale_temporaries, write_part_atomic
from memscore.storage.runs import write_run_summary
from memscore.storage.schema import ERRORS_DIR, SCORES_DIR
from memscore.storage.uris import Location, open_location
from memscore.tasks.checks import check_destination, check_source
from memscore.tasks.decode import start_worker_server
from memscore.tasks.device_decode import resolve_decode
from memscore.tasks.discover import DiscoveryCounts, SourceNotFoundError, iter_listing
from memscore.tasks.plan import Plan, done_keys, plan_shards
from memscore.tasks.progress import ProgressReporter
from memscore.tasks.score import ScoreSettings, ShardResult, get_model, score_images


@dataclass
class ScoreSummary:
    """What a run did: counts, throughput and where the results are."""

    run_id: str
    source: str
    destination: str
    model: str
    weights: str
    device: str
    backend: str = "torch"
    files_seen: int = 0
    images_found: int = 0
    ignored_files: int = 0
    skipped: int = 0
    scored: int = 0
    failed: int = 0
    shards: int = 0
    seconds: float = 0.0
    images_per_second: float = 0.0
    superseded_rows_removed: int = 0
    errors_by_reason: dict[str, int] = field(default_factory=dict)
    failed_transient: int = 0  # of failed: store outages, timeouts, throttling; the next run tries them again
    retried_after_transient: int = 0  # of the images scored now: their last try had failed transiently
    not_followed: dict[str, int] = field(default_factory=dict)  # dangling links, loops, FIFOs, devices
    unreadable_folders: int = 0
    escaped_names: int = 0  # images whose path is not valid UTF-8 (stored escaped, see docs/output-format.md)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.errors_by_reason.items())) or "none"
        transient = f" ({self.failed_transient} transient: the next run tries them again)" if self.failed_transient else ""
        retried = f" ({self.retried_after_transient} after a transient failure)" if self.retried_after_transient else ""
        unseen = ""
        if self.not_followed or self.unreadable_folders:
            kinds = [f"{n} {kind}(s)" for kind, n in sorted(self.not_followed.items())]
            kinds += [f"{self.unreadable_folders} unreadable folder(s)"] if self.unreadable_folders else []
            unseen = "; not followed: " + ", ".join(kinds)
        return (
            f"scored {self.scored}{retried}, skipped {self.skipped} (already in DEST), failed {self.failed}{transient}, "
            f"ignored {self.ignored_files} non-image file(s){unseen}; {self.images_per_second:.2f} images/s "
            f"over {self.seconds:.1f} s on {self.device}; errors by reason: {reasons}"
        )


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
    src: Location, dest: Location, model: str, weights_digest: str, shard_size: int, retry_errors: bool
) -> tuple[Plan, DiscoveryCounts]:
    """List SOURCE (streamed), anti-join what DEST holds, cut the rest into shards."""
    counts = DiscoveryCounts()
    remove_stale_temporaries(dest)
    done = done_keys(dest, model, weights_digest, include_errors=not retry_errors)
    plan = plan_shards(iter_listing(src, counts=counts), done, shard_size)
    return plan, counts


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
    torch_device = resolve_device(worker_device(device))
    if settings.batch_size is None or settings.workers is None:  # decided where the shard runs (Dask)
        defaults = defaults_for(torch_device, resolve_decode(settings.decode, torch_device, get_model_spec(model).preprocess))
        settings = replace(
            settings,
            batch_size=settings.batch_size or defaults.batch_size,
            workers=defaults.workers if settings.workers is None else settings.workers,
        )
    if settings.workers and multiprocessing.current_process().daemon:
        # Daemonic processes (Dask's default workers) may not start DataLoader workers.
        get_run_logger().warning(
            "this process is daemonic (a Dask worker?): decoding in-process; start Dask workers with "
            "DASK_DISTRIBUTED__WORKER__DAEMON=False to use %d decode workers", settings.workers
        )
        settings = replace(settings, workers=0)
    start_worker_server(settings.workers)  # its torch import runs while the model loads
    loaded = get_model(model, weights, torch_device)
    return score_images(shard, source, loaded, settings, on_batch=progress.advance if progress else None)


@task(name="write-parts", task_run_name="write-parts-{shard_index}", **_storage_task)
def write_shard(dest: Location, run_id: str, shard_index: int, result: ShardResult) -> dict[str, Any]:
    """Write a shard's scores (and errors, if any) as atomic parts under DEST.

    Part names depend only on the run and the shard, so a retried write replaces
    the same objects and never duplicates rows.
    """
    name = f"part-{run_id}-{shard_index:06d}.parquet"
    if result.scores.num_rows:
        write_part_atomic(dest, SCORES_DIR, name, result.scores)
    if result.errors.num_rows:
        write_part_atomic(dest, ERRORS_DIR, name, result.errors)
    reasons: dict[str, int] = {}
    for reason in result.errors.column("error").to_pylist():
        reasons[reason] = reasons.get(reason, 0) + 1
    transient = sum(bool(t) for t in result.errors.column("transient").to_pylist())
    return {"scored": result.scores.num_rows, "failed": result.errors.num_rows, "errors_by_reason": reasons,
            "failed_transient": transient}


@task(name="compact", **_storage_task)
def compact(dest: Location) -> int:
    """Drop rows superseded by newer reads of the same images; return how many."""
    return drop_superseded_rows(dest)


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


def new_run_id() -> str:
    """A sortable, unique run id: UTC time plus a random suffix."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


@flow(
    name="score-archive", log_prints=True, flow_run_name="{model}: {source} -> {destination}",
    # The summary (a small JSON dict) is kept as the run's result, readable after a deployment run.
    persist_result=True, result_serializer="json",
)
def score_archive(
    source: str,
    destination: str,
    model: str = "resmem",
    weights: str | None = None,
    device: Device = "auto",
    batch_size: int | None = None,
    workers: int | None = None,
    shard_size: int | None = None,
    features: list[str] | None = None,
    max_pixels: int | None = None,
    retry_errors: bool = False,
    storage_options: StorageOptions | None = None,
    show_progress: bool = False,
    dask_address: str | None = None,
    precision: Precision = "auto",
    channels_last: bool | None = None,
    fold_batchnorm: bool | None = None,
    compile_model: bool = False,
    decode: Decode = "auto",
    backend: Backend = "torch",
    storage_options_secret: str | None = None,
) -> dict[str, Any]:
    """Score every image under ``source`` with ``model``; write Parquet under ``destination``.

    Args:
        source: folder or fsspec URI with images (searched recursively).
        destination: folder or fsspec URI for ``scores/`` and ``errors/`` parts.
        model: registered model name (``memscore models`` lists them).
        weights: weights file; default: the model's published weights.
        device: auto, cpu, cuda, cuda:N or mps.
        batch_size: images per forward pass (default depends on the device).
        workers: DataLoader worker processes for reading and decoding.
        shard_size: images per shard (one task run and one Parquet part each).
        features: layers to export as ``feat_<layer>`` columns; [] for none.
        max_pixels: larger images are refused as decompression bombs (default: PIL's limit).
        retry_errors: also rescore images that failed in an earlier run.
        storage_options: passed to fsspec for both SOURCE and DEST (endpoint, region, ...);
            no credentials: keys such as key, secret or token are refused, because
            parameters are stored in Prefect's database (use storage_options_secret).
        show_progress: draw a progress bar on the terminal.
        dask_address: run the shard tasks on this Dask scheduler (``tcp://host:8786``)
            through prefect-dask; the device, batch size and decode workers are then
            resolved on each Dask worker. Without it, shards run here, one after another.
        precision: auto (fp32 on CPU, fp16 autocast on CUDA), fp32, bf16 or fp16.
        channels_last: channels_last memory format (default: on for CPU and CUDA).
        fold_batchnorm: fold BatchNorm into the convolutions (default: on).
        compile_model: torch.compile the model (slow to start; off by default).
        decode: where JPEGs are decoded: ``workers`` (PIL in the DataLoader workers, the
            reference), ``device`` (a batch at a time on the model's device, nvJPEG on
            CUDA) or ``auto`` (device on CUDA, workers elsewhere).
        backend: ``torch`` (the reference) or ``onnxruntime`` (CPU and float32 only;
            needs ``memscore[onnx]``; the model is exported to ONNX once and cached).
        storage_options_secret: name of a Prefect Secret block holding a JSON object of
            fsspec options with the credentials (merged into storage_options), e.g.
            ``{"key": "...", "secret": "..."}``; default: the worker's environment.

    Returns:
        The run's summary (counts, images/s, errors by reason) as a dict; it is also
        the flow run's persisted result (JSON), readable after a deployment run.
    """
    logger = get_run_logger()
    started = time.perf_counter()
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    spec = get_model_spec(model)
    layers = spec.check_features(spec.default_features if features is None else features)
    ref = resolve_weights(spec, weights)
    from PIL import Image

    if dask_address:
        # The workers may have other hardware than this process: resolve there.
        shard_device = device
        device_label = f"{device} on dask {dask_address}"
        guess = "cuda" if device.startswith("cuda") else "cpu"
        import torch

        defaults = defaults_for(torch.device(guess))
        settings_batch, settings_workers = batch_size, workers
    else:
        torch_device = resolve_device(device)
        check_backend(backend, torch_device, precision, compile_model)  # before any shard starts
        shard_device = device_label = str(torch_device)
        defaults = defaults_for(torch_device, resolve_decode(decode, torch_device, spec.preprocess))
        settings_batch = batch_size or defaults.batch_size
        settings_workers = defaults.workers if workers is None else workers
    settings = ScoreSettings(
        batch_size=settings_batch,
        workers=settings_workers,
        features=layers,
        max_pixels=max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS,
        run_id=new_run_id(),
        precision=precision,
        channels_last=channels_last,
        fold_batchnorm=fold_batchnorm,
        compile=compile_model,
        decode=decode,
        backend=backend,
    )
    options = resolve_storage_options(storage_options, storage_options_secret)
    src = open_location(source, options)
    dest = open_location(destination, options)
    # Before any image is scored, and not retried: a missing SOURCE, bucket or credentials stays missing.
    check_source(src, source)
    check_destination(dest, destination)
    with hold_destination(dest.uri, logger):
        return _run(logger, started, started_at, spec, ref, weights, src, dest, settings, defaults, shard_size,
                    retry_errors, show_progress, dask_address, shard_device, device_label)


def _run(logger, started, started_at, spec, ref, weights, src, dest, settings, defaults, shard_size, retry_errors,
         show_progress, dask_address, shard_device, device_label) -> dict[str, Any]:
    """The run's body once its checks passed and it holds DEST (plan, score, write, compact, summary)."""
    plan, counts = plan_run(src, dest, spec.name, ref.digest, shard_size or defaults.shard_size, retry_errors)
    summary = ScoreSummary(
        run_id=settings.run_id, source=src.uri, destination=dest.uri, model=spec.name, weights=ref.digest,
        device=device_label, backend=settings.backend, files_seen=counts.files, images_found=counts.images,
        ignored_files=counts.ignored, skipped=plan.already_done, shards=len(plan.shards),
        retried_after_transient=plan.after_transient, not_followed=dict(counts.not_followed),
        unreadable_folders=counts.unreadable_folders, escaped_names=counts.escaped_names,
    )
    for line in counts.warnings():
        logger.warning("%s", line)
    logger.info(
        "found %d image(s) (%d other file(s) ignored); %d already in DEST; scoring %d in %d shard(s) on %s",
        counts.images, counts.ignored, plan.already_done, plan.to_score, len(plan.shards), device_label,
    )
    run_progress = _RunProgress(plan.to_score)

    def account(written: dict[str, Any]) -> None:
        summary.scored += written["scored"]
        summary.failed += written["failed"]
        summary.failed_transient += written.get("failed_transient", 0)
        for reason, n in written["errors_by_reason"].items():
            summary.errors_by_reason[reason] = summary.errors_by_reason.get(reason, 0) + n
        run_progress.advance(written["scored"] + written["failed"])
        if dask_address:  # the shards ran elsewhere: the terminal bar advances as their parts land
            progress.advance(written["scored"] + written["failed"])

    progress = ProgressReporter(total=plan.to_score, enabled=show_progress)
    scoring_started = time.perf_counter()
    try:
        if dask_address and plan.shards:
            _score_on_dask(dask_address, plan, src, dest, spec.name, weights, shard_device, settings, account)
        else:
            for index, shard in enumerate(plan.shards):
                result = score_shard(index, shard, src, spec.name, weights, shard_device, settings, progress)
                account(write_shard(dest, settings.run_id, index, result))
    finally:
        progress.close()
    scoring_seconds = time.perf_counter() - scoring_started
    summary.superseded_rows_removed = compact(dest)
    summary.seconds = time.perf_counter() - started
    processed = summary.scored + summary.failed
    summary.images_per_second = processed / scoring_seconds if processed and scoring_seconds > 0 else 0.0
    logger.info("%s", summary.text())
    if summary.failed:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(summary.errors_by_reason.items(), key=lambda kv: -kv[1]))
        logger.warning("%d image(s) could not be scored (%s); details in %s/%s", summary.failed, reasons,
                       summary.destination.rstrip("/"), ERRORS_DIR)
    try:  # provenance for `memscore report` (storage/runs.py); never fails a finished run
        write_run_summary(dest, {**summary.as_dict(), "started_at": started_at,
                                 "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                 "scoring_seconds": round(scoring_seconds, 3)})
    except Exception as error:  # noqa: BLE001
        logger.warning("could not write the run summary to DEST/runs: %s", error)
    try:
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(summary_markdown(summary), key="score-archive-summary",
                                 description=f"memscore run {summary.run_id}: {summary.text()}")
    except Exception as error:  # noqa: BLE001 - an artifact must never fail a finished run
        logger.warning("could not create the summary artifact: %s", error)
    return summary.as_dict()


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
