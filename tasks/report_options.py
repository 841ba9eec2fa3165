"""The options of ``memscore report``: one typed object, its defaults written once, here.

:class:`ReportOptions` is the report pipeline's parameter object: ``memscore report``
builds it from its arguments, :func:`memscore.tasks.report_build.build_report` takes it,
and the Prefect flow ``report`` takes it as its ``options`` parameter (Prefect validates
it and shows it as a form). ``analysis`` holds ``memscore analyze``'s options for the
human data; the report's own ``seed``, ``group_column`` and ``storage_options`` replace
the analysis' ones (one seed draws the gallery's random sample, the bootstrap and the
split halves).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field

from memscore.tasks.analysis_options import AnalysisOptions
from memscore.tasks.params import Device, Parameters

MapsMethod = Literal["auto", "occlusion"]
# DuckDB's memory_limit: a number and a unit (1000^i or 1024^i bytes), as its SET statement reads it.
_MEMORY_LIMIT = re.compile(r"\s*[0-9]+(\.[0-9]+)?\s*[KMGT]i?B\s*", re.IGNORECASE)


def check_memory_limit(value: str | None) -> str | None:
    """``value`` if DuckDB's ``SET memory_limit`` takes it ('4GB', '512MiB', '1.5 GB'); else a ValueError."""
    if value is not None and not _MEMORY_LIMIT.fullmatch(value):
        raise ValueError(f"memory_limit must be a number and a unit (KB, MB, GB, TB or KiB, MiB, GiB, TiB), "
                         f"e.g. '4GB' or '512MiB' (got {value!r})")
    return value


MemoryLimit = Annotated[str | None, AfterValidator(check_memory_limit)]


class ReportOptions(Parameters):
    """What ``memscore report`` shows and how (every default of the report is here).

    Built from Python, a refused value raises :class:`~memscore.tasks.params.ParameterError`
    (one line), as the other parameter objects do."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    model: str | None = Field(None, description="the model reported on (needed when DEST holds several)")
    human: str | None = Field(None, description="human memorability data (file, BIDS folder or URI)")
    analysis: AnalysisOptions = Field(default_factory=AnalysisOptions,
                                      description="memscore analyze's options for `human` (format, measure, match, ...)")
    group_column: str | None = Field(None, description="group histograms and the human statistics by this column")
    top: int = Field(12, ge=0, description="gallery: the N most and N least memorable images")
    sample: int = Field(12, ge=0, description="gallery: N more images at random")
    seed: int = Field(0, ge=0, lt=2**32, description="seed of the random sample, the bootstrap and the split halves")
    bins: int = Field(40, ge=1, description="histogram bins, at most (fewer for small archives)")
    maps: bool = Field(False, description="memorability maps of the gallery images, one per model in DEST")
    maps_method: MapsMethod = Field("auto", description="auto: Grad-CAM on the model's cam_layer, occlusion for "
                                                        "models without one; occlusion: occlusion for every model")
    maps_models: list[str] | None = Field(None, description="maps for these models only (default: every model in DEST)")
    maps_weights: dict[str, str] = Field(default_factory=dict,
                                         description="weights file per model for the maps (default: published weights)")
    maps_device: Device = Field("cpu", description="device the maps are computed on (auto, cpu, cuda, cuda:N, mps)")
    occlusion_grid: int = Field(5, ge=1, le=32, description="occlusion: windows per side (5: 25 forward passes "
                                                            "per image, each window a third of the side)")
    error_examples: int = Field(5, ge=0, description="example rows per error reason")
    memory_limit: MemoryLimit = Field("512MB",
                                     description="DuckDB memory limit for the queries, a number and a unit "
                                                 "(KB, MB, GB, TB or KiB, MiB, GiB, TiB: '4GB', '512MiB'; "
                                                 "None: DuckDB's)")
    storage_options: dict[str, Any] | None = Field(None, description="fsspec options for DEST, the images, "
                                                                     "--human and --out URIs")
    notes: list[str] = Field(default_factory=list, description="lines added to the report's warnings (what a "
                                                               "run's --report assumed)")
