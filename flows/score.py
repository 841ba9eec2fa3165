"""The ``score-archive`` flow: SOURCE images in, DEST Parquet out.

discover -> plan (skip what DEST holds) -> one ``score-shard`` task run per shard
(DataLoader + model) -> one atomic part per shard -> drop superseded rows ->
summary. :func:`score_archive` is the Prefect flow; it works against a Prefect
server when one is configured and starts a temporary local API otherwise.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from models.devices import defaults_for, resolve_device
from models.registry import get_model_spec, resolve_weights
from storage.compact import drop_superseded_rows
from storage.parts import write_part_atomic
from storage.schema import ERRORS_DIR, SCORES_DIR
from storage.uris import Location, open_location
from tasks.discover import DiscoveryCounts, iter_listing
from tasks.plan import done_keys, plan_shards
from tasks.progress import ProgressReporter
from tasks.score import ScoreSettings, ShardResult, get_model, score_images


@dataclass
class ScoreSummary:
    """What a run did: counts, throughput and where the results are."""

    run_id: str
    source: str
    destination: str
    model: str
    weights: str
    device: str
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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.errors_by_reason.items())) or "none"
        return (
            f"scored {self.scored}, skipped {self.skipped} (already in DEST), failed {self.failed}, "
            f"ignored {self.ignored_files} non-image file(s); {self.images_per_second:.2f} images/s "
            f"over {self.seconds:.1f} s on {self.device}; errors by reason: {reasons}"
        )


@task(name="score-shard", cache_policy=NO_CACHE, persist_result=False)
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
    loaded = get_model(model, weights, resolve_device(device))
    return score_images(shard, source, loaded, settings, on_batch=progress.advance if progress else None)


@task(name="write-parts", cache_policy=NO_CACHE, persist_result=False, retries=3, retry_delay_seconds=[1, 4, 16])
def write_shard(dest: Location, run_id: str, shard_index: int, result: ShardResult) -> dict[str, int]:
    """Write a shard's scores (and errors, if any) as atomic parts under DEST."""
    name = f"part-{run_id}-{shard_index:06d}.parquet"
    if result.scores.num_rows:
        write_part_atomic(dest, SCORES_DIR, name, result.scores)
    if result.errors.num_rows:
        write_part_atomic(dest, ERRORS_DIR, name, result.errors)
    return {"scored": result.scores.num_rows, "failed": result.errors.num_rows}


def new_run_id() -> str:
    """A sortable, unique run id: UTC time plus a random suffix."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


@flow(name="score-archive", log_prints=True)
def score_archive(
    source: str,
    destination: str,
    model: str = "resmem",
    weights: str | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    workers: int | None = None,
    shard_size: int | None = None,
    features: list[str] | None = None,
    max_pixels: int | None = None,
    retry_errors: bool = False,
    storage_options: dict[str, Any] | None = None,
    show_progress: bool = False,
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
        storage_options: passed to fsspec for both SOURCE and DEST (credentials, endpoint).
        show_progress: draw a progress bar on the terminal.
    """
    logger = get_run_logger()
    started = time.perf_counter()
    spec = get_model_spec(model)
    layers = spec.check_features(spec.default_features if features is None else features)
    ref = resolve_weights(spec, weights)
    torch_device = resolve_device(device)
    defaults = defaults_for(torch_device)
    from PIL import Image

    settings = ScoreSettings(
        batch_size=batch_size or defaults.batch_size,
        workers=defaults.workers if workers is None else workers,
        features=layers,
        max_pixels=max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS,
        run_id=new_run_id(),
    )
    src = open_location(source, storage_options)
    dest = open_location(destination, storage_options)

    counts = DiscoveryCounts()
    done = done_keys(dest, spec.name, ref.digest, include_errors=not retry_errors)
    plan = plan_shards(iter_listing(src, counts=counts), done, shard_size or defaults.shard_size)
    summary = ScoreSummary(
        run_id=settings.run_id, source=src.uri, destination=dest.uri, model=spec.name, weights=ref.digest,
        device=str(torch_device), files_seen=counts.files, images_found=counts.images,
        ignored_files=counts.ignored, skipped=plan.already_done, shards=len(plan.shards),
    )
    logger.info(
        "found %d image(s) (%d other file(s) ignored); %d already in DEST; scoring %d in %d shard(s) on %s",
        counts.images, counts.ignored, plan.already_done, plan.to_score, len(plan.shards), torch_device,
    )
    progress = ProgressReporter(total=plan.to_score, enabled=show_progress)
    scoring_started = time.perf_counter()
    try:
        for index, shard in enumerate(plan.shards):
            result = score_shard(index, shard, src, spec.name, weights, str(torch_device), settings, progress)
            written = write_shard(dest, settings.run_id, index, result)
            summary.scored += written["scored"]
            summary.failed += written["failed"]
            for reason in result.errors.column("error").to_pylist():
                summary.errors_by_reason[reason] = summary.errors_by_reason.get(reason, 0) + 1
    finally:
        progress.close()
    scoring_seconds = time.perf_counter() - scoring_started
    summary.superseded_rows_removed = drop_superseded_rows(dest)
    summary.seconds = time.perf_counter() - started
    processed = summary.scored + summary.failed
    summary.images_per_second = processed / scoring_seconds if processed and scoring_seconds > 0 else 0.0
    logger.info("%s", summary.text())
    return summary.as_dict()
