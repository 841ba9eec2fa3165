"""Readers for human memorability data, participant exclusion, image matching.

Formats (``format=``; ``auto`` picks one from the file):

- ``lamem``: LaMem split files, one ``image_name score`` pair per line (separated
  by any run of spaces or tabs; further columns are ignored).
- ``table``: any CSV/TSV/Parquet with an image column and a score column (MemCat's
  CSV, the official ResMem CSV, ...).
- ``counts``: per-image hit / miss / false-alarm / correct-rejection counts as
  published by continuous-recognition studies (``target_hit``, ``target_miss``,
  ``target_fa``, ``target_cr``; plain ``hit``/``miss``/``fa``/``cr`` also work).
  Measures: hit_rate = hit/(hit+miss), false_alarm_rate = fa/(fa+cr),
  corrected_recognition = hit_rate - false_alarm_rate.
- ``trials``: one row per presentation: participant_id, image_id, trial_type
  (target, filler, vigilance), presentation (1 first showing, 2 repeat; when
  absent derived from a trial-number or time column within each participant, else
  from the file order, which is refused when the rows look out of order) and
  response (1/0, true/false, yes/no; other values are an error; empty ones are
  missing or, with ``empty_response="no"``, a "no"). A target image's repeat
  counts as hit or miss, its first showing as false alarm or correct rejection.
  What was assumed is recorded in :class:`HumanLoad` (``order_source``,
  ``response_coding``, ``count_columns``).
- ``bids``: a folder with participants.tsv and sub-*/beh/*_beh.tsv files with
  stim_file, trial_type, response (and optionally presentation, onset).

Participants of trial data are excluded by two rules (defaults in
:class:`Exclusion`): a false-alarm rate on first showings of fillers and
vigilance images above ``max_filler_fa`` (0.5), or a miss rate on vigilance
repeats above ``max_vigilance_miss`` (0.5). Excluded participants are listed in
the load report, never dropped silently.

Everything is read and aggregated by DuckDB; nothing here imports Prefect.

This module holds the public entry points (:func:`load_human`, :func:`read_human_scores`,
:func:`read_human_scores_and_info`) and re-exports every name the readers define, so
``from memscore.storage.human import ...`` is the one import other layers use. The
readers live in :mod:`memscore.storage.human_base` (error type, load report, raw files,
the finished ``human`` table), :mod:`memscore.storage.human_tables` (lamem, table,
counts, format detection) and :mod:`memscore.storage.human_trials` (trials, BIDS,
ordering, participant exclusion).
"""

from __future__ import annotations

import os

import duckdb
import pyarrow as pa

from memscore.storage.human_base import (
    DEFAULT_MEASURE,
    HUMAN_SCORE_CANDIDATES,
    ID_CANDIDATES,
    PARTICIPANT_CANDIDATES,
    HumanDataError,
    HumanLoad,
    column_types,
    find_column,
    raw_relation_sql,
)
from memscore.storage.human_tables import (
    COUNT_SUFFIXES,
    _load_counts,
    _load_lamem,
    _load_table,
    detect_format,
    find_count_columns,
)
from memscore.storage.human_trials import (
    EMPTY_RESPONSES,
    NOT_ORDER_PATTERN,
    ORDER_CANDIDATES,
    RESPONSE_FALSE,
    RESPONSE_TRUE,
    TIME_PATTERN,
    Exclusion,
    _load_bids,
    _load_trials,
    exclusion_sql,
    find_order_column,
)
from memscore.storage.relations import MATCH_MODES, key_sql, lit, num, q
from memscore.storage.stats import MEASURES, canonical_measure, register_measure_functions

FORMATS = ("auto", "lamem", "table", "counts", "trials", "bids")

def load_human(
    con: duckdb.DuckDBPyConnection,
    path: str,
    *,
    format: str = "auto",
    id_column: str | None = None,
    score_column: str | None = None,
    measure: str | None = None,
    exclusion: Exclusion | None = None,
    duplicates: str = "error",
    empty_response: str = "missing",
) -> HumanLoad:
    """Read human data into ``con``: temp table ``human`` (image, human, extra columns; with
    counts or trials also hit, miss, fa, cr and ``observations``, the trials behind each
    image's measure); with trial data also ``trials``, ``participants`` and ``trial_counts``
    (participant, image, hit, miss, fa, cr) for split-half analysis.

    ``empty_response``: ``missing`` ignores trials with an empty response, ``no`` counts them
    as "no" (no key press). Raises :class:`HumanDataError` (one line) on unusable data."""
    path = os.fspath(path)
    register_measure_functions(con)  # d' (memscore_probit)
    fmt = (format or "auto").lower()
    if fmt not in FORMATS:
        raise HumanDataError(f"unknown human data format {format!r} (choose from {', '.join(FORMATS)})")
    if fmt == "auto":
        fmt = detect_format(con, path)
    if measure is not None:
        try:
            measure = canonical_measure(measure)
        except ValueError as error:
            raise HumanDataError(str(error)) from error
    if score_column is not None and measure is not None:
        raise HumanDataError("give either a human score column or a human measure, not both")
    if score_column is not None and fmt == "counts":
        fmt = "table"  # a ready column of a count table (e.g. target_crr)
    if measure is not None and fmt in ("lamem", "table"):
        raise HumanDataError(f"--human-measure {measure} needs counts or trials; {path} was read as {fmt} "
                             f"(use --human-column for a ready score, or --human-format)")
    if duplicates not in ("error", "mean"):
        raise HumanDataError(f"duplicates must be 'error' or 'mean', not {duplicates!r}")
    info = HumanLoad(path=path, format=fmt, id_column=id_column or "", duplicates=duplicates)
    if fmt == "lamem":
        _load_lamem(con, info)
    elif fmt == "table":
        _load_table(con, info, id_column, score_column)
    elif fmt == "counts":
        _load_counts(con, info, id_column, measure)
    elif fmt == "trials":
        _load_trials(con, info, id_column, measure, exclusion or Exclusion(), empty_response)
    else:
        _load_bids(con, info, id_column, measure, exclusion or Exclusion(), empty_response)
    return info


def read_human_scores(
    path: str,
    *,
    format: str = "auto",
    id_column: str | None = None,
    score_column: str | None = None,
    measure: str | None = None,
    duplicates: str = "error",
) -> pa.Table:
    """Per-image human scores as a table with at least ``image`` (string, as in the
    file) and ``human`` (float64), plus the file's other columns (counts, categories).
    Several rows for one image raise an error, or with ``duplicates="mean"`` are
    averaged (other columns: their smallest value).
    Raises :class:`HumanDataError` with a one-line message on unusable input."""
    return read_human_scores_and_info(path, format=format, id_column=id_column, score_column=score_column,
                                      measure=measure, duplicates=duplicates)[0]


def read_human_scores_and_info(
    path: str,
    *,
    format: str = "auto",
    id_column: str | None = None,
    score_column: str | None = None,
    measure: str | None = None,
    duplicates: str = "error",
) -> tuple[pa.Table, HumanLoad]:
    """:func:`read_human_scores` and what the reader made of the file (:class:`HumanLoad`)."""
    con = duckdb.connect()
    try:
        info = load_human(con, path, format=format, id_column=id_column, score_column=score_column, measure=measure,
                          duplicates=duplicates)
        table = con.sql("SELECT * FROM human ORDER BY image").to_arrow_table()
    finally:
        con.close()
    return table.set_column(table.schema.get_field_index("human"), "human", table["human"].cast(pa.float64())), info


__all__ = [
    "COUNT_SUFFIXES", "DEFAULT_MEASURE", "EMPTY_RESPONSES", "Exclusion", "FORMATS", "HUMAN_SCORE_CANDIDATES",
    "HumanDataError", "HumanLoad", "ID_CANDIDATES", "MATCH_MODES", "MEASURES", "NOT_ORDER_PATTERN",
    "ORDER_CANDIDATES", "PARTICIPANT_CANDIDATES", "RESPONSE_FALSE", "RESPONSE_TRUE", "TIME_PATTERN",
    "column_types", "detect_format", "exclusion_sql", "find_column", "find_count_columns", "find_order_column",
    "key_sql", "lit", "load_human", "num", "q", "raw_relation_sql", "read_human_scores",
    "read_human_scores_and_info",
]
