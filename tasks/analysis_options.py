"""The options and the error type of ``memscore analyze`` (shared by the modules of the
analysis: :mod:`memscore.tasks.model_scores`, :mod:`memscore.tasks.matching`,
:mod:`memscore.tasks.analyze`, :mod:`memscore.tasks.analysis_outputs`).

:class:`AnalysisOptions` is every option of the analysis (pydantic: each option's type,
default and description is written here only; ``memscore analyze``'s options, the
``analyze`` flow's form and :func:`memscore.analyze`'s keywords are read off it);
:class:`AnalyzeRequest` is the ``analyze`` flow's one parameter: the inputs, the output
folder and the options.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field

from memscore.storage.human import HumanDataError
from memscore.tasks.params import (
    EmptyResponse,
    HumanFormat,
    HumanMeasure,
    MatchMode,
    Parameters,
    StorageOptionsField,
    StorageSecretField,
)

WARN_OBSERVATIONS = 5  # images with fewer observations than this are counted in a warning
MAX_BOOTSTRAP = 1_000_000  # resamples: beyond this the run takes hours and the intervals gain nothing
MAX_SPLITS = 10_000  # split halves


class AnalysisError(HumanDataError):
    """Inputs that cannot be analysed as given; the message is one line."""


def _canonical_measure(value: Any) -> Any:
    """Measure aliases (crr, hr, far, ...) as the canonical names; other values as given (checked by the type)."""
    if isinstance(value, str):
        from memscore.storage.stats import MEASURE_ALIASES

        key = value.strip().lower().replace("-", "_")
        return MEASURE_ALIASES.get(key, key)
    return value


def _canonical_measures(value: Any) -> Any:
    """``human_measures`` as canonical names: a list or ``a,b`` text, aliases and ``all``
    accepted (:func:`tasks.measure_table.parse_measures`); None stays None."""
    if value is None or not isinstance(value, (str, list, tuple)):
        return value
    from memscore.tasks.measure_table import parse_measures

    return parse_measures(value)


Rate = Annotated[float | None, Field(ge=0, le=1)]


class AnalysisOptions(Parameters):
    """Every option of ``memscore analyze`` (the CLI, the flow and the Python API build one).

    ``score_column``: one column, several (a list, or names separated by commas), or None
    (the first of :data:`SCORE_CANDIDATES`); several columns, or several models in a
    memscore folder without ``model``, are compared pairwise. ``human_measures``: two or more
    measures for the model x measure table (the first also fills the top-level keys, as
    ``human_measure`` would). ``derived``: :mod:`memscore.tasks.derived`."""

    id_column: str | None = Field(None, description="image id column, both sides unless human_id_column (default: "
                                                    "first of path, image_id, image_name, image, filename)")
    human_id_column: str | None = Field(None, description="image id column of the human data")
    score_column: str | list[str] | None = Field(
        None, description="model score column(s) (default: score, resmem, memorability, ...); several (a list or "
                          "names separated by commas) are compared pairwise")
    human_column: str | None = Field(None, description="a ready human score column (instead of a measure derived "
                                                       "from counts or trials)")
    human_measure: Annotated[HumanMeasure | None, BeforeValidator(_canonical_measure)] = Field(
        None, description="measure derived from counts or trials: hit_rate (default), false_alarm_rate, "
                          "corrected_recognition (hit rate - false-alarm rate), miss_rate, dprime (d' with the "
                          "log-linear correction); aliases hr, far, crr, d'")
    human_format: HumanFormat = Field("auto", description="format of the human data: lamem, table, counts, trials, "
                                                          "bids; auto picks one from the file")
    match: MatchMode = Field("auto", description="match images by relative path, file name or file name without "
                                                 "extension (auto: the most specific that matches the most images "
                                                 "without ambiguity)")
    bootstrap: int = Field(1000, ge=0, le=MAX_BOOTSTRAP,
                           description=f"bootstrap resamples over images for the intervals (0: none; at most "
                                       f"{MAX_BOOTSTRAP:_})")
    splits: int = Field(25, ge=0, le=MAX_SPLITS, description=f"random split halves of participants for split-half "
                                                             f"reliability (trial data; at most {MAX_SPLITS:_})")
    seed: int = Field(0, ge=0, lt=2**32, description="seed of the bootstrap resamples and the splits (0 <= seed < "
                                                     "2**32, numpy's range)")
    confidence: float = Field(0.95, gt=0, lt=1, description="coverage of every interval, e.g. 0.9 for 90% intervals")
    group_column: str | None = Field(None, description="also report the statistics per value of this column (human "
                                                       "data or scores), e.g. MemCat's category")
    model: str | None = Field(None, description="only this model's scores of a memscore folder (default: every "
                                                "model, compared pairwise)")
    max_filler_fa: Rate = Field(0.5, description="exclude participants whose filler false-alarm rate is above "
                                                 "this (trial data; none/null: off)")
    max_vigilance_miss: Rate = Field(0.5, description="exclude participants whose vigilance miss rate is above "
                                                      "this (trial data; none/null: off)")
    kendall_max_n: int = Field(10_000, ge=0, description="Kendall's tau-b is computed only up to this many images")
    min_group_size: int = Field(3, ge=0, description="report a group_column value only with at least this many "
                                                     "images")
    min_observations: int = Field(0, ge=0, description="drop images whose measure rests on fewer trials (counts "
                                                       f"and trial data; 0 keeps all; images under {WARN_OBSERVATIONS} "
                                                       "are counted in a warning), from the model correlations and "
                                                       "the split-half alike")
    empty_response: EmptyResponse = Field("missing", description="trial data: an empty response is missing "
                                                                 "(ignored) or no (no key press)")
    storage_options: StorageOptionsField = None
    storage_options_secret: StorageSecretField = None
    human_measures: Annotated[list[HumanMeasure] | None, BeforeValidator(_canonical_measures)] = Field(
        None, description="two or more measures from counts or trials (e.g. [\"hit_rate\", \"dprime\"], or \"all\"): "
                          "a table model x measure with Spearman, Pearson, intervals and, with trial data, each "
                          "measure's split-half reliability and noise ceiling; the first fills the top-level keys")
    derived: list[str] | None = Field(None, description="derived predictors computed per image from the models' "
                                                        "scores, \"NAME=EXPR\" or \"EXPR\" with model names, numbers "
                                                        "and + - * / (e.g. \"gap=resmem - falseresmem\")")


class AnalyzeRequest(Parameters):
    """What the ``analyze`` flow is asked to do: its one parameter (``memscore analyze
    --prefect`` builds it; a deployment run passes it as ``{"request": {...}}``)."""

    scores: str = Field(description="memscore output folder, or a Parquet/CSV file with an id and a score column "
                                    "(a local path or a URI: s3://, gs://, az://, ...)")
    human: str = Field(description="human memorability data: a LaMem list, a table, per-image counts, trials, or a "
                                   "BIDS folder (a local path or a URI)")
    out: str | None = Field(None, description="write joined.parquet (per image), stats.json and report.md to this "
                                              "folder or URI")
    options: AnalysisOptions = Field(default_factory=AnalysisOptions, description="the analysis options")
    report: str | None = Field(None, description="end with `memscore report` of the scores (a memscore folder) with "
                                                 "this human data, written to this folder or URI (docs/report.md; "
                                                 "none: no report)")
