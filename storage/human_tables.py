"""Per-image human data: LaMem split lists, score tables and hit/miss/fa/cr count tables,
and telling the formats apart (``format="auto"``).

Belongs here: the ``lamem``, ``table`` and ``counts`` readers (each stages
``human_staged`` and finishes it with :func:`memscore.storage.human_base._finish_scores`),
finding count columns, and :func:`detect_format`. Trial-level data is in
:mod:`memscore.storage.human_trials`.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from memscore.storage.human_base import (
    DEFAULT_MEASURE,
    HUMAN_SCORE_CANDIDATES,
    ID_CANDIDATES,
    PARTICIPANT_CANDIDATES,
    HumanDataError,
    HumanLoad,
    _check_not_constant,
    _columns,
    _finish_scores,
    _is_parquet,
    find_column,
    raw_relation_sql,
)
from memscore.storage.relations import lit, num, q
from memscore.storage.stats import canonical_measure, measure_sql, observations_sql


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
    columns = [c.lower() for c in _columns(con, raw_relation_sql(path), path)]
    if any(c in columns for c in PARTICIPANT_CANDIDATES) and "response" in columns:
        return "trials"
    if find_count_columns(columns) is not None:
        return "counts"
    if len(columns) == 1 and _looks_like_lamem(path):
        return "lamem"
    return "table"



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
    columns = _columns(con, rel, info.path)
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
    columns = _columns(con, rel, info.path)
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
