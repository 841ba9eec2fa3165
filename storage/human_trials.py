"""Trial-level human data: one row per presentation (a CSV/TSV/Parquet file or a BIDS
folder), turned into per-image hit/miss/fa/cr counts.

Belongs here: reading responses (yes/no codings, empty responses), deciding first
showing vs repeat (a presentation column, a trial or time column, else the file order),
the BIDS layout, participant exclusion (:class:`Exclusion`, :func:`exclusion_sql`) and
the ``trials``, ``participants`` and ``trial_counts`` tables split-half analysis reads.
Per-image tables are in :mod:`memscore.storage.human_tables`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memscore.storage.human_base import (
    DEFAULT_MEASURE,
    PARTICIPANT_CANDIDATES,
    HumanDataError,
    HumanLoad,
    _check_not_constant,
    _columns,
    _finish_scores,
    column_types,
    find_column,
    raw_relation_sql,
)
from memscore.storage.relations import lit, num, q
from memscore.storage.stats import canonical_measure, measure_sql, observations_sql

RESPONSE_TRUE = ("1", "1.0", "true", "t", "yes", "y", "old", "seen", "hit")
RESPONSE_FALSE = ("0", "0.0", "false", "f", "no", "n", "new", "unseen")
ORDER_CANDIDATES = ("trial", "trial_index", "trial_number", "trial_num", "order", "position", "onset", "time",
                    "timestamp", "time_stamp", "datetime", "date_time", "time_elapsed", "start_time", "trial_start",
                    "onset_time", "created_at", "responded_at", "submitted_at")
# further time-like column names (a reaction time such as rt or response_time is not an order)
TIME_PATTERN = re.compile(r"(time_?stamp|date_?time|onset|start_?time|time_?elapsed|^time$|_time$|^t$|_at$)", re.I)
NOT_ORDER_PATTERN = re.compile(r"(^rt$|_rt$|reaction|response_?time|duration)", re.I)
EMPTY_RESPONSES = ("missing", "no")


@dataclass
class Exclusion:
    """Participant exclusion rules for trial-level data (None disables a rule)."""

    max_filler_fa: float | None = 0.5
    max_vigilance_miss: float | None = 0.5

    def as_dict(self) -> dict[str, Any]:
        return {"max_filler_fa": self.max_filler_fa, "max_vigilance_miss": self.max_vigilance_miss}


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
    # empty and n/a-like values are missing (see _check_missing_order), not a reason to refuse the column
    text = (f"CASE WHEN lower(trim({col}::VARCHAR)) IN ('', 'n/a', 'na', 'nan', 'none', 'null') THEN NULL "
            f"ELSE trim({col}::VARCHAR) END")
    row = con.sql(f"SELECT count({text}), count(TRY_CAST({text} AS DOUBLE)), count(TRY_CAST({text} AS TIMESTAMPTZ)), "
                  f"list({text}) FILTER (WHERE TRY_CAST({text} AS DOUBLE) IS NULL)[1:3] FROM {source_sql}").fetchall()[0]
    if row[0] and row[1] == row[0]:
        return f"TRY_CAST({text} AS DOUBLE)", "number"
    if row[0] and row[2] == row[0]:
        return f"epoch(TRY_CAST({text} AS TIMESTAMPTZ))", "time"
    raise HumanDataError(f"{path}: cannot order the trials by column {column!r}: its values are neither numbers nor "
                         f"timestamps (e.g. {', '.join(map(str, row[3] or []))}); add a presentation column "
                         f"(1 first showing, 2 repeat)")


def _check_missing_order(con, info: HumanLoad, source_sql: str, participant_sql: str, image_sql: str, key: str,
                         column: str) -> None:
    """Trials without a usable value in the order column (empty, n/a, NaN): one that is the only
    showing of its image to its participant is a first showing whatever its place, so it is
    kept (with a warning in ``info.warnings``); one whose image that participant saw more than
    once makes first showing vs repeat ambiguous: HumanDataError (one line) naming the column,
    the count and an example participant and image."""
    row = con.sql(
        f"""SELECT count(*) FILTER (WHERE _key IS NULL), count(*) FILTER (WHERE _key IS NULL AND _n > 1),
                   first(_p ORDER BY _row) FILTER (WHERE _key IS NULL AND _n > 1),
                   first(_i ORDER BY _row) FILTER (WHERE _key IS NULL AND _n > 1)
        FROM (SELECT _p, _i, _key, _row, count(*) OVER (PARTITION BY _p, _i) AS _n
              FROM (SELECT ({participant_sql})::VARCHAR AS _p, {image_sql} AS _i,
                           CASE WHEN isfinite(({key})::DOUBLE) THEN 1 END AS _key, row_number() OVER () AS _row
                    FROM {source_sql}))""").fetchall()[0]
    if row[1]:
        raise HumanDataError(
            f"{info.path}: {row[1]} trial(s) have no value in the order column {column!r} although their image was "
            f"shown more than once to the same participant (e.g. participant {row[2]}, image {row[3]}), so first "
            f"showing and repeat cannot be told apart; fill in {column!r} or add a presentation column "
            f"(1 first showing, 2 repeat)")
    if row[0]:
        info.warnings.append(f"trials: {row[0]} trial(s) have no value in the order column {column!r}; each is the "
                             f"only showing of its image to its participant, so it is counted as a first showing")


def _stage_trials(con, info: HumanLoad, id_column, source_sql: str, participant_sql: str | None,
                  empty_response: str = "missing") -> None:
    """Normalise trials into temp table ``trials`` (participant, image, trial_type, presentation, response).

    First showing vs repeat comes from a ``presentation`` column, else from the order of a
    trial-number or time column within each participant, else from the file order, which
    is refused when the repeats are recognised no more often than first showings (rows out
    of order). The source is stated in ``info.order_source``."""
    if empty_response not in EMPTY_RESPONSES:
        raise HumanDataError(f"empty_response must be one of {', '.join(EMPTY_RESPONSES)}, not {empty_response!r}")
    columns = _columns(con, source_sql, info.path)
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
    types = column_types(con, source_sql, info.path)
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
            _check_missing_order(con, info, source_sql, participant_sql, image_sql, key, order_col)
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
    # A target shown more than twice to one participant: every later showing counts as a repeat; say so.
    more = con.sql("SELECT count(*), min(participant || ', image ' || image) FROM trial_counts "
                   "WHERE hit + miss > 1").fetchall()[0]
    if more[0]:
        info.warnings.append(f"trials: {more[0]} participant-image pair(s) show a target more than twice "
                             f"(e.g. participant {more[1]}); every showing after the first is counted as a "
                             f"repeat (a hit or a miss)")
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
