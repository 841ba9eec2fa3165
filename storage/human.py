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
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from memscore.errors import UserError
from memscore.storage.relations import MATCH_MODES, key_sql, lit, num, q
from memscore.storage.stats import MEASURES, canonical_measure, measure_sql, observations_sql, register_measure_functions

FORMATS = ("auto", "lamem", "table", "counts", "trials", "bids")
ID_CANDIDATES = ("path", "image_id", "image_name", "image", "filename", "image_file", "file_name", "file", "stim_file",
                 "stimulus", "name")
HUMAN_SCORE_CANDIDATES = ("human", "memorability_w_fa_correction", "memorability", "mem_score", "memscore", "score",
                          "hr", "hit_rate", "corrected_recognition", "cr", "crr")  # MemCat: memorability_w_fa_correction
PARTICIPANT_CANDIDATES = ("participant_id", "participant", "subject_id", "subject", "worker_id", "worker", "sub")
RESPONSE_TRUE = ("1", "1.0", "true", "t", "yes", "y", "old", "seen", "hit")
RESPONSE_FALSE = ("0", "0.0", "false", "f", "no", "n", "new", "unseen")
ORDER_CANDIDATES = ("trial", "trial_index", "trial_number", "trial_num", "order", "position", "onset", "time",
                    "timestamp", "time_stamp", "datetime", "date_time", "time_elapsed", "start_time", "trial_start",
                    "onset_time", "created_at", "responded_at", "submitted_at")
# further time-like column names (a reaction time such as rt or response_time is not an order)
TIME_PATTERN = re.compile(r"(time_?stamp|date_?time|onset|start_?time|time_?elapsed|^time$|_time$|^t$|_at$)", re.I)
NOT_ORDER_PATTERN = re.compile(r"(^rt$|_rt$|reaction|response_?time|duration)", re.I)
EMPTY_RESPONSES = ("missing", "no")
DEFAULT_MEASURE = "hit_rate"


class HumanDataError(UserError, ValueError):
    """Human data that cannot be used as given; the message is one line."""


@dataclass
class Exclusion:
    """Participant exclusion rules for trial-level data (None disables a rule)."""

    max_filler_fa: float | None = 0.5
    max_vigilance_miss: float | None = 0.5

    def as_dict(self) -> dict[str, Any]:
        return {"max_filler_fa": self.max_filler_fa, "max_vigilance_miss": self.max_vigilance_miss}


@dataclass
class HumanLoad:
    """What was read: the format, the measure and what happened on the way."""

    path: str
    format: str
    id_column: str
    score_column: str | None = None
    measure: str | None = None
    rows: int = 0
    images: int = 0
    warnings: list[str] = field(default_factory=list)
    participants: dict[str, Any] | None = None
    published_check: dict[str, float] | None = None
    extra_columns: list[str] = field(default_factory=list)
    has_trials: bool = False
    duplicates: str = "error"
    # what was assumed, stated in the text, the JSON and report.md
    count_columns: dict[str, str] | None = None  # hit/miss/fa/cr -> the column read (counts)
    response_coding: str | None = None  # how responses were read (trials)
    order_source: str | None = None  # what decides first showing vs repeat (trials)
    has_observations: bool = False  # the human table has a per-image ``observations`` column

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("has_trials", "duplicates", "has_observations")}


def column_types(con: duckdb.DuckDBPyConnection, relation_sql: str) -> dict[str, str]:
    try:
        return {r[0]: r[1] for r in con.sql(f"DESCRIBE SELECT * FROM {relation_sql}").fetchall()}
    except duckdb.Error as error:
        raise HumanDataError(f"cannot read human data: {str(error).splitlines()[0]}") from error


# ---------------------------------------------------------------------------
# reading raw files


def _is_parquet(path: str) -> bool:
    return path.lower().endswith((".parquet", ".pq", ".parq"))


def raw_relation_sql(path: str) -> str:
    """SQL reading a CSV/TSV/Parquet file (or a folder of Parquet files); CSV as text."""
    p = Path(path)
    if p.is_dir():
        files = sorted(str(f) for f in p.rglob("*.parquet"))
        if not files:
            raise HumanDataError(f"{path} is a folder without Parquet files (for BIDS use --human-format bids)")
        return f"read_parquet([{', '.join(lit(f) for f in files)}], union_by_name = true)"
    if not p.exists():
        raise HumanDataError(f"human data not found: {path}")
    if _is_parquet(path):
        return f"read_parquet({lit(path)})"
    delim = "'\\t'" if path.lower().endswith((".tsv", ".tab")) else None
    opts = "header = true, all_varchar = true, nullstr = ['n/a', 'NA', '']"
    if delim:
        opts += f", delim = {delim}"
    return f"read_csv({lit(path)}, {opts})"


def _columns(con: duckdb.DuckDBPyConnection, relation_sql: str) -> list[str]:
    try:
        return list(con.sql(f"SELECT * FROM {relation_sql} LIMIT 0").columns)
    except duckdb.Error as error:
        raise HumanDataError(f"cannot read human data: {str(error).splitlines()[0]}") from error


def find_column(columns: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, path: str) -> str:
    """The column named ``wanted`` (any case), else the first of ``candidates`` present; HumanDataError otherwise."""
    lower = {c.lower(): c for c in columns}
    if wanted is not None:
        if wanted in columns:
            return wanted
        if wanted.lower() in lower:
            return lower[wanted.lower()]
        raise HumanDataError(f"{path} has no column {wanted!r} ({what}); columns: {', '.join(columns)}")
    for c in candidates:
        if c in lower:
            return lower[c]
    raise HumanDataError(f"{path}: no {what} column found (tried {', '.join(candidates)}); "
                         f"name it with an option; columns: {', '.join(columns)}")


def _looks_like_lamem(path: str) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines = [line.strip() for _, line in zip(range(5), handle) if line.strip()]
    except OSError:
        return False
    if not lines or any("," in line for line in lines):
        return False
    for line in lines[1:] or lines:
        parts = line.split()
        if len(parts) < 2:
            return False
        try:
            float(parts[1])
        except ValueError:
            return False
    return True


COUNT_SUFFIXES = {
    "hit": ("hit", "hits", "n_hit", "n_hits"),
    "miss": ("miss", "misses", "n_miss", "n_misses"),
    "fa": ("fa", "false_alarm", "false_alarms", "n_fa"),
    "cr": ("cr", "correct_rejection", "correct_rejections", "n_cr"),
}


def find_count_columns(columns: list[str]) -> tuple[str, dict[str, str]] | None:
    """(prefix, {hit, miss, fa, cr -> column}) for per-image count columns; target_* first."""
    lower = {c.lower(): c for c in columns}
    for prefix in ("target_", "", "image_", "targ_"):
        found = {}
        for key, suffixes in COUNT_SUFFIXES.items():
            for s in suffixes:
                if prefix + s in lower:
                    found[key] = lower[prefix + s]
                    break
        if len(found) == 4:
            return prefix, found
    return None


def detect_format(con: duckdb.DuckDBPyConnection, path: str) -> str:
    p = Path(path)
    if p.is_dir():
        if (p / "participants.tsv").exists() or any(p.glob("sub-*/beh/*_beh.tsv")):
            return "bids"
        return "table"
    if not p.exists():
        raise HumanDataError(f"human data not found: {path}")
    if not _is_parquet(path) and not path.lower().endswith((".csv", ".tsv")) and _looks_like_lamem(path):
        return "lamem"
    columns = [c.lower() for c in _columns(con, raw_relation_sql(path))]
    if any(c in columns for c in PARTICIPANT_CANDIDATES) and "response" in columns:
        return "trials"
    if find_count_columns(columns) is not None:
        return "counts"
    if len(columns) == 1 and _looks_like_lamem(path):
        return "lamem"
    return "table"


# ---------------------------------------------------------------------------
# loading into a connection


def _check_duplicates(con: duckdb.DuckDBPyConnection, table: str, path: str, hint: str) -> None:
    dup = con.sql(
        f"SELECT count(*), sum(c), list(image ORDER BY image)[1:3] FROM "
        f"(SELECT image, count(*) AS c FROM {table} GROUP BY image HAVING count(*) > 1)"
    ).fetchall()[0]
    if dup[0]:
        raise HumanDataError(
            f"{path}: {dup[0]} image id(s) appear more than once ({dup[1]} rows; e.g. {', '.join(dup[2])}); {hint}"
        )


def _finish_scores(con: duckdb.DuckDBPyConnection, info: HumanLoad, staged: str, range_check: bool) -> None:
    """Drop rows without a usable score (warning with counts), check duplicates, create ``human``."""
    bad = con.sql(f"SELECT count(*) FILTER (WHERE image IS NULL), count(*) FILTER (WHERE image IS NOT NULL AND "
                  f"(human IS NULL OR NOT isfinite(human))), count(*) FROM {staged}").fetchall()[0]
    info.rows = int(bad[2])
    if bad[0]:
        info.warnings.append(f"human data: dropped {bad[0]} row(s) without an image id")
    if bad[1]:
        info.warnings.append(f"human data: dropped {bad[1]} row(s) with a missing, non-numeric or NaN human score")
    con.sql(f"CREATE OR REPLACE TEMP TABLE human AS SELECT * FROM {staged} "
            f"WHERE image IS NOT NULL AND human IS NOT NULL AND isfinite(human)")
    if info.rows and not con.sql("SELECT count(*) FROM human").fetchall()[0][0]:
        raise HumanDataError(f"{info.path}: no row has a usable human score")
    if info.duplicates == "mean":
        dup = con.sql("SELECT count(*), sum(c) FROM (SELECT count(*) AS c FROM human GROUP BY image "
                      "HAVING count(*) > 1)").fetchall()[0]
        if dup[0]:
            others = [c for c in con.sql("SELECT * FROM human LIMIT 0").columns if c not in ("image", "human")]
            con.sql(f"CREATE OR REPLACE TEMP TABLE human AS SELECT image, avg(human) AS human"
                    f"{''.join(f', min({q(c)}) AS {q(c)}' for c in others)} FROM human GROUP BY image")
            info.warnings.append(f"human data: {dup[0]} image id(s) had several rows ({dup[1]} rows): "
                                 f"their scores were averaged")
    _check_duplicates(con, "human", info.path, "give one row per image (for trial data use --human-format trials)")
    if range_check:
        out = con.sql("SELECT count(*) FROM human WHERE human < 0 OR human > 1").fetchall()[0][0]
        if out:
            info.warnings.append(f"human data: {out} score(s) outside [0, 1] (kept)")
    info.images = int(con.sql("SELECT count(*) FROM human").fetchall()[0][0])


def _load_lamem(con, info: HumanLoad) -> None:
    path = info.path
    if not Path(path).is_file():
        raise HumanDataError(f"human data not found: {path}")
    # one text column per line, split on any run of whitespace (spaces, tabs)
    con.sql(
        f"CREATE OR REPLACE TEMP TABLE human_raw AS SELECT row_number() OVER () AS line, "
        f"regexp_split_to_array(trim(text), '\\s+') AS parts FROM read_csv({lit(path)}, delim = '{chr(1)}', "
        f"header = false, columns = {{'text': 'VARCHAR'}}, quote = '', escape = '', auto_detect = false) "
        f"WHERE trim(coalesce(text, '')) <> ''"
    )
    short = con.sql("SELECT count(*), min(line) FROM human_raw WHERE len(parts) < 2").fetchall()[0]
    if short[0]:
        raise HumanDataError(f"{path}: expected 'image_name score' on each line (separated by spaces or tabs); "
                             f"{short[0]} line(s) have one field (first: line {short[1]})")
    # a first line whose score is not a number is a header
    first = con.sql(f"SELECT {num('parts[2]')} FROM human_raw WHERE line = 1").fetchall()
    skip = 1 if first and first[0][0] is None else 0
    info.id_column, info.score_column = "column0", "column1"
    con.sql(f"CREATE OR REPLACE TEMP VIEW human_staged AS SELECT parts[1] AS image, "
            f"{num('parts[2]')} AS human FROM human_raw WHERE line > {skip}")
    info.measure = "score"
    _finish_scores(con, info, "human_staged", range_check=True)


def _load_table(con, info: HumanLoad, id_column, score_column) -> None:
    rel = raw_relation_sql(info.path)
    columns = _columns(con, rel)
    info.id_column = find_column(columns, id_column, ID_CANDIDATES, "image id", info.path)
    candidates = tuple(c for c in columns if c != info.id_column)
    if score_column is None:
        lower = {c.lower(): c for c in candidates}
        score_column = next((lower[c] for c in HUMAN_SCORE_CANDIDATES if c in lower), None)
        if score_column is None:
            numeric = [c for c in candidates if con.sql(
                f"SELECT count(*) = count({num(q(c))}) AND count(*) > 0 FROM {rel}").fetchall()[0][0]]
            if len(numeric) != 1:
                raise HumanDataError(f"{info.path}: cannot tell which column is the human score "
                                     f"(numeric columns: {', '.join(numeric) or 'none'}); use --human-column")
            score_column = numeric[0]
    info.score_column = find_column(columns, score_column, (), "human score", info.path)
    info.measure = info.score_column
    extras = [c for c in columns if c not in (info.id_column, info.score_column) and c.lower() not in ("image", "human")]
    info.extra_columns = extras
    extra_sql = "".join(f", {q(c)}" for c in extras)
    con.sql(f"CREATE OR REPLACE TEMP VIEW human_staged AS SELECT {q(info.id_column)}::VARCHAR AS image, "
            f"{num(q(info.score_column))} AS human{extra_sql} FROM {rel}")
    _finish_scores(con, info, "human_staged", range_check=True)


def _load_counts(con, info: HumanLoad, id_column, measure) -> None:
    rel = raw_relation_sql(info.path)
    columns = _columns(con, rel)
    info.id_column = find_column(columns, id_column, ID_CANDIDATES, "image id", info.path)
    found = find_count_columns(columns)
    if found is None:
        raise HumanDataError(f"{info.path}: no hit/miss/fa/cr count columns (e.g. target_hit, target_miss, "
                             f"target_fa, target_cr); columns: {', '.join(columns)}")
    prefix, cols = found
    info.measure = canonical_measure(measure or DEFAULT_MEASURE)
    counts = {k: num(q(v)) for k, v in cols.items()}
    extras = [c for c in columns if c not in (info.id_column, *cols.values()) and c.lower() not in ("image", "human")]
    info.extra_columns = extras
    extra_sql = "".join(f", {q(c)}" for c in extras)
    con.sql(f"CREATE OR REPLACE TEMP TABLE human_counts AS SELECT {q(info.id_column)}::VARCHAR AS image, "
            f"{counts['hit']} AS hit, {counts['miss']} AS miss, {counts['fa']} AS fa, {counts['cr']} AS cr{extra_sql} "
            f"FROM {rel}")
    neg = con.sql("SELECT count(*) FROM human_counts WHERE hit < 0 OR miss < 0 OR fa < 0 OR cr < 0").fetchall()[0][0]
    if neg:
        raise HumanDataError(f"{info.path}: {neg} row(s) with negative counts")
    info.score_column = ",".join(cols.values())
    info.count_columns = dict(cols)
    info.has_observations = True
    con.sql(f"CREATE OR REPLACE TEMP VIEW human_staged AS SELECT image, {measure_sql(info.measure)} AS human, "
            f"hit, miss, fa, cr, {observations_sql(info.measure)} AS observations{extra_sql} FROM human_counts")
    _finish_scores(con, info, "human_staged", range_check=False)
    _check_not_constant(con, info)
    # does the table's own rate column agree with the counts?
    lower = {c.lower(): c for c in columns}
    checks = {}
    for name, suffixes in {"hit_rate": ("hr", "hit_rate"), "false_alarm_rate": ("far", "fa_rate", "false_alarm_rate"),
                           "corrected_recognition": ("crr", "cr_rate", "corrected_recognition")}.items():
        col = next((lower[prefix + s] for s in suffixes if prefix + s in lower), None)
        if col is None:
            continue
        row = con.sql(f"SELECT max(abs({measure_sql(name)} - {num('r.' + q(col))})), count(*) "
                      f"FROM human_counts c JOIN {rel} r ON c.image = r.{q(info.id_column)}::VARCHAR").fetchall()[0]
        checks[col] = float(row[0]) if row[0] is not None else float("nan")
        if row[0] is not None and row[0] > 1e-9:
            info.warnings.append(f"human data: {col} differs from the rate computed from the counts "
                                 f"(max |difference| {row[0]:.3g})")
    info.published_check = checks or None


def _response_sql(col: str, empty_as_no: bool) -> str:
    """1 for a yes/old response, 0 for no/new, NULL for an empty one (0 with ``empty_as_no``),
    -1 for anything else (reported as unrecognised)."""
    v = f"lower(trim({col}::VARCHAR))"
    empty = "0" if empty_as_no else "NULL"
    return (f"CASE WHEN {col} IS NULL OR {v} IN ('', 'n/a', 'na', 'nan', 'none', 'null') THEN {empty} "
            f"WHEN {v} IN ({', '.join(lit(x) for x in RESPONSE_TRUE)}) THEN 1 "
            f"WHEN {v} IN ({', '.join(lit(x) for x in RESPONSE_FALSE)}) THEN 0 ELSE -1 END")


def find_order_column(columns: list[str]) -> str | None:
    """The column giving the presentation order within a participant: a trial number or a
    time (``ORDER_CANDIDATES`` first, then any time-like name such as ``*_timestamp``);
    reaction times (rt, response_time) are not an order."""
    lower = {c.lower(): c for c in columns}
    named = next((lower[c] for c in ORDER_CANDIDATES if c in lower), None)
    if named is not None:
        return named
    return next((c for c in columns if TIME_PATTERN.search(c) and not NOT_ORDER_PATTERN.search(c)), None)


def _order_sql(con, source_sql: str, column: str, source_type: str, path: str) -> tuple[str, str]:
    """(SQL sort key, kind) of an order column: numbers, else timestamps; HumanDataError otherwise."""
    col = q(column)
    if source_type.upper() != "VARCHAR":
        if "TIMESTAMP" in source_type.upper() or "DATE" in source_type.upper():
            return f"epoch({col})", "time"
        return f"TRY_CAST({col} AS DOUBLE)", "number"
    text = f"nullif(trim({col}::VARCHAR), '')"
    row = con.sql(f"SELECT count({text}), count(TRY_CAST({text} AS DOUBLE)), count(TRY_CAST({text} AS TIMESTAMPTZ)), "
                  f"list({text}) FILTER (WHERE TRY_CAST({text} AS DOUBLE) IS NULL)[1:3] FROM {source_sql}").fetchall()[0]
    if row[0] and row[1] == row[0]:
        return f"TRY_CAST({text} AS DOUBLE)", "number"
    if row[0] and row[2] == row[0]:
        return f"epoch(TRY_CAST({text} AS TIMESTAMPTZ))", "time"
    raise HumanDataError(f"{path}: cannot order the trials by column {column!r}: its values are neither numbers nor "
                         f"timestamps (e.g. {', '.join(map(str, row[3] or []))}); add a presentation column "
                         f"(1 first showing, 2 repeat)")


def _stage_trials(con, info: HumanLoad, id_column, source_sql: str, participant_sql: str | None,
                  empty_response: str = "missing") -> None:
    """Normalise trials into temp table ``trials`` (participant, image, trial_type, presentation, response).

    First showing vs repeat comes from a ``presentation`` column, else from the order of a
    trial-number or time column within each participant, else from the file order, which
    is refused when the repeats are recognised no more often than first showings (rows out
    of order). The source is stated in ``info.order_source``."""
    if empty_response not in EMPTY_RESPONSES:
        raise HumanDataError(f"empty_response must be one of {', '.join(EMPTY_RESPONSES)}, not {empty_response!r}")
    columns = _columns(con, source_sql)
    lower = {c.lower(): c for c in columns}
    info.id_column = find_column(columns, id_column, ("image_id", "image", "stim_file", "image_name", "path", "filename",
                                                 "stimulus"), "image id", info.path)
    if participant_sql is None:
        participant_sql = q(find_column(columns, None, PARTICIPANT_CANDIDATES, "participant", info.path))
    if "response" not in lower:
        raise HumanDataError(f"{info.path}: trial data needs a response column; columns: {', '.join(columns)}")
    if "trial_type" not in lower:
        raise HumanDataError(f"{info.path}: trial data needs a trial_type column (target, filler, vigilance); "
                             f"columns: {', '.join(columns)}")
    types = column_types(con, source_sql)
    order_col = find_order_column(columns)
    image_sql = f"{q(info.id_column)}::VARCHAR"
    file_order = False
    if "presentation" in lower:
        presentation = num(q(lower["presentation"]), "INTEGER", types[lower["presentation"]])
        source = source_sql
        info.order_source = f"column {lower['presentation']!r} (1 first showing, 2 or more repeat)"
    else:  # first showing = 1, repeat = 2, in the order of the order column, else of the file
        if order_col:
            key, kind = _order_sql(con, source_sql, order_col, types[order_col], info.path)
            order_sql = f"{key}, _row"
            info.order_source = (f"order of column {order_col!r} ({'time' if kind == 'time' else 'trial number'}) "
                                 f"within each participant")
        else:
            order_sql = "_row"
            file_order = True
            info.order_source = "file order within each participant (no presentation, trial or time column)"
        presentation = (f"row_number() OVER (PARTITION BY ({participant_sql})::VARCHAR, {image_sql} "
                        f"ORDER BY {order_sql})")
        source = f"(SELECT *, row_number() OVER () AS _row FROM {source_sql})"
    rcol = lower["response"]
    rtype = types[rcol].upper()
    empty_as_no = empty_response == "no"
    if rtype == "BOOLEAN" or any(t in rtype for t in ("INT", "DOUBLE", "FLOAT", "DECIMAL")):
        r = q(rcol)
        response = (f"CASE WHEN {r} IS NULL THEN {'0' if empty_as_no else 'NULL'} WHEN {r}::DOUBLE = 1 THEN 1 "
                    f"WHEN {r}::DOUBLE = 0 THEN 0 ELSE -1 END")
        info.response_coding = f"column {rcol!r}: 1 = yes (seen before), 0 = no"
    else:
        response = _response_sql(q(rcol), empty_as_no)
        info.response_coding = (f"column {rcol!r}: yes = {'/'.join(RESPONSE_TRUE)}; no = {'/'.join(RESPONSE_FALSE)} "
                                f"(any case)")
    info.response_coding += "; empty = no (no key press)" if empty_as_no else "; empty = missing (trial ignored)"
    con.sql(
        f"""CREATE OR REPLACE TEMP TABLE trials AS
        SELECT ({participant_sql})::VARCHAR AS participant, {image_sql} AS image,
               lower(trim({q(lower['trial_type'])}::VARCHAR)) AS trial_type,
               {presentation} AS presentation,
               {response} AS response, {q(rcol)}::VARCHAR AS raw_response
        FROM {source}"""
    )
    unknown = con.sql("SELECT count(*), list(DISTINCT raw_response ORDER BY raw_response)[1:8] FROM trials "
                      "WHERE response = -1").fetchall()[0]
    if unknown[0]:
        shown = ", ".join(repr(v) for v in unknown[1])
        raise HumanDataError(f"{info.path}: response column {rcol!r} has {unknown[0]} value(s) that are neither yes "
                             f"nor no: {shown}; recode them as 1 (yes, seen before) / 0 (no)")
    bad = con.sql("SELECT count(*) FILTER (WHERE response IS NULL), count(*) FILTER (WHERE image IS NULL OR "
                  "participant IS NULL), count(*) FROM trials").fetchall()[0]
    info.rows = int(bad[2])
    if bad[0] and bad[0] * 2 > bad[2]:
        raise HumanDataError(f"{info.path}: {bad[0]} of {bad[2]} trial(s) have an empty response, most of the data; "
                             f"if an empty response means no key press, use --empty-response no")
    if bad[0]:
        info.warnings.append(f"trials: ignored {bad[0]} trial(s) with an empty response "
                             f"(use --empty-response no if it means no key press)")
    if bad[1]:
        info.warnings.append(f"trials: ignored {bad[1]} trial(s) without participant or image")
    con.sql("ALTER TABLE trials DROP COLUMN raw_response")
    con.sql("DELETE FROM trials WHERE response IS NULL OR image IS NULL OR participant IS NULL")
    if not con.sql("SELECT count(*) FROM trials WHERE trial_type = 'target'").fetchall()[0][0]:
        types = [r[0] for r in con.sql("SELECT DISTINCT trial_type FROM trials ORDER BY 1 LIMIT 10").fetchall()]
        raise HumanDataError(f"{info.path}: no trial has trial_type 'target' (found: {', '.join(map(str, types))})")
    if file_order:
        rates = con.sql("SELECT avg(response) FILTER (WHERE presentation = 1), avg(response) FILTER "
                        "(WHERE presentation >= 2), count(*) FILTER (WHERE presentation >= 2) FROM trials "
                        "WHERE trial_type = 'target'").fetchall()[0]
        if rates[2] and rates[0] is not None and rates[1] <= rates[0]:
            raise HumanDataError(
                f"{info.path}: the presentation order cannot be determined (no presentation, trial or time column) "
                f"and the rows look out of order: in file order, repeats are called 'seen' no more often than first "
                f"showings (hit rate {rates[1]:.2f} <= false-alarm rate {rates[0]:.2f}); add a presentation column "
                f"(1 first showing, 2 repeat) or a trial/time column, or sort the rows by time")


def exclusion_sql(exclusion: Exclusion) -> str:
    """Per participant: filler FA rate, vigilance miss rate, and whether a rule excludes it."""
    conds = []
    if exclusion.max_filler_fa is not None:
        conds.append(f"coalesce(filler_fa_rate, 0) > {float(exclusion.max_filler_fa)}")
    if exclusion.max_vigilance_miss is not None:
        conds.append(f"coalesce(vigilance_miss_rate, 0) > {float(exclusion.max_vigilance_miss)}")
    excluded = " OR ".join(conds) or "false"
    return f"""
        SELECT participant, filler_fa_rate, vigilance_miss_rate, n_trials, ({excluded}) AS excluded
        FROM (SELECT participant, count(*) AS n_trials,
                     avg(response) FILTER (WHERE trial_type IN ('filler', 'vigilance') AND presentation = 1) AS filler_fa_rate,
                     1 - avg(response) FILTER (WHERE trial_type = 'vigilance' AND presentation >= 2) AS vigilance_miss_rate
              FROM trials GROUP BY participant)
    """


def _finish_trials(con, info: HumanLoad, measure, exclusion: Exclusion) -> None:
    con.sql(f"CREATE OR REPLACE TEMP TABLE participants AS {exclusion_sql(exclusion)}")
    row = con.sql("SELECT count(*), count(*) FILTER (WHERE excluded), "
                  "list(participant ORDER BY participant) FILTER (WHERE excluded) FROM participants").fetchall()[0]
    info.participants = {
        "total": int(row[0]), "excluded": int(row[1]), "kept": int(row[0] - row[1]),
        "excluded_ids": list(row[2] or []), "rules": exclusion.as_dict(),
    }
    if row[1]:
        info.warnings.append(f"excluded {row[1]} of {row[0]} participant(s) by the exclusion rules "
                             f"(ids: {', '.join(list(row[2])[:10])}{' ...' if row[1] > 10 else ''})")
    if row[0] == row[1]:
        raise HumanDataError(f"{info.path}: the exclusion rules exclude every participant ({row[0]}); "
                             f"relax --max-filler-fa / --max-vigilance-miss")
    # per participant and target image: hit/miss at the repeat, fa/cr at the first showing
    con.sql("""CREATE OR REPLACE TEMP TABLE trial_counts AS
        SELECT t.participant, t.image,
               count(*) FILTER (WHERE presentation >= 2 AND response = 1) AS hit,
               count(*) FILTER (WHERE presentation >= 2 AND response = 0) AS miss,
               count(*) FILTER (WHERE presentation = 1 AND response = 1) AS fa,
               count(*) FILTER (WHERE presentation = 1 AND response = 0) AS cr
        FROM trials t JOIN participants p ON p.participant = t.participant AND NOT p.excluded
        WHERE t.trial_type = 'target'
        GROUP BY t.participant, t.image""")
    info.measure = canonical_measure(measure or DEFAULT_MEASURE)
    con.sql(f"""CREATE OR REPLACE TEMP VIEW human_staged AS
        SELECT image, {measure_sql(info.measure)} AS human, hit, miss, fa, cr,
               {observations_sql(info.measure)} AS observations, n_participants
        FROM (SELECT image, sum(hit) AS hit, sum(miss) AS miss, sum(fa) AS fa, sum(cr) AS cr,
                     count(DISTINCT participant) AS n_participants FROM trial_counts GROUP BY image)""")
    _finish_scores(con, info, "human_staged", range_check=False)
    info.rows = int(con.sql("SELECT count(*) FROM trials").fetchall()[0][0])
    info.has_trials = True
    info.has_observations = True
    info.extra_columns = ["n_participants"]
    _check_not_constant(con, info)


def _check_not_constant(con, info: HumanLoad) -> None:
    """Stop when a measure derived from trials is the same for every image (a misread response
    coding or order looks like this, and nothing could be correlated); warn for counts."""
    row = con.sql("SELECT count(*), count(DISTINCT human), min(human) FROM human").fetchall()[0]
    if row[0] > 1 and row[1] == 1:
        message = f"the {info.measure} is {row[2]:.3g} for every image ({row[0]} images): nothing to correlate"
        if not info.has_trials:  # published counts: say so; the correlations are null with this reason
            info.warnings.append(f"human data: {message}")
            return
        raise HumanDataError(f"{info.path}: {message}; check the response coding ({info.response_coding}) and the "
                             f"order ({info.order_source})")


def _load_trials(con, info: HumanLoad, id_column, measure, exclusion, empty_response: str = "missing") -> None:
    _stage_trials(con, info, id_column, raw_relation_sql(info.path), None, empty_response)
    _finish_trials(con, info, measure, exclusion)


def _load_bids(con, info: HumanLoad, id_column, measure, exclusion, empty_response: str = "missing") -> None:
    root = Path(info.path)
    files = sorted(str(f) for f in root.glob("sub-*/**/*_beh.tsv"))
    if not files:
        raise HumanDataError(f"{info.path}: no sub-*/beh/*_beh.tsv files (BIDS layout)")
    source = (f"read_csv([{', '.join(lit(f) for f in files)}], delim = '\\t', header = true, all_varchar = true, "
              f"union_by_name = true, filename = true, nullstr = ['n/a', ''])")
    # the sub-<label> that starts the file name (not a folder of the root that happens to contain "sub-")
    participant = "regexp_extract(regexp_extract(replace(filename, '\\', '/'), '[^/]*$', 0), '^(sub-[^_]+)', 1)"
    _stage_trials(con, info, id_column or "stim_file", source, participant, empty_response)
    listed = root / "participants.tsv"
    if listed.exists():
        known = con.sql(f"SELECT count(*) FROM read_csv({lit(str(listed))}, delim = '\\t', header = true, "
                        f"all_varchar = true) l WHERE l.participant_id NOT IN (SELECT DISTINCT participant FROM trials)"
                        ).fetchall()[0][0]
        if known:
            info.warnings.append(f"bids: {known} participant(s) in participants.tsv have no *_beh.tsv trials")
    # stimulus paths such as stimuli/img.jpg: keep them as written; matching by name/stem handles folders
    _finish_trials(con, info, measure, exclusion)


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
    "Exclusion", "FORMATS", "HumanDataError", "HumanLoad", "MATCH_MODES", "MEASURES", "key_sql", "load_human",
    "read_human_scores", "read_human_scores_and_info", "detect_format", "lit", "num", "q",
]

