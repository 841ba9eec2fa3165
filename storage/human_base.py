"""What every human-data reader shares: the error type, the load report, the raw file
reader and the last step that turns staged scores into the ``human`` table.

Belongs here: :class:`HumanDataError`, :class:`HumanLoad`, the column-name candidates
every format uses, reading a CSV/TSV/Parquet file as a DuckDB relation, finding a column
by name, and the checks on the finished ``human`` table (rows without a score,
duplicate ids, a measure that is the same for every image). Format-specific reading is
in :mod:`memscore.storage.human_tables` (LaMem lists, tables, counts) and
:mod:`memscore.storage.human_trials` (trials, BIDS, participant exclusion); the public
entry points are in :mod:`memscore.storage.human`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from memscore.errors import UserError
from memscore.storage.relations import lit, q

ID_CANDIDATES = ("path", "image_id", "image_name", "image", "filename", "image_file", "file_name", "file", "stim_file",
                 "stimulus", "name")
HUMAN_SCORE_CANDIDATES = ("human", "memorability_w_fa_correction", "memorability", "mem_score", "memscore", "score",
                          "hr", "hit_rate", "corrected_recognition", "cr", "crr")  # MemCat: memorability_w_fa_correction
PARTICIPANT_CANDIDATES = ("participant_id", "participant", "subject_id", "subject", "worker_id", "worker", "sub")
DEFAULT_MEASURE = "hit_rate"


class HumanDataError(UserError, ValueError):
    """Human data that cannot be used as given; the message is one line."""


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


def encoding_hint(path: str | None, message: str) -> str:
    """``message`` plus a hint when DuckDB could not read a local text file because it is not
    UTF-8 (Excel's "CSV" is Windows-1252/Latin-1 in many locales); else ``message`` as is."""
    if not path or "CSV Error" not in message or "://" in str(path):
        return message
    try:
        with open(path, "rb") as handle:
            head = handle.read(1 << 20)
    except OSError:
        return message
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.start < len(head) - 4:  # not a character cut at the 1 MiB boundary
            return (f"{message} (the file is not UTF-8: byte {head[error.start]:#04x} at offset {error.start}; "
                    "Excel's plain CSV is Windows-1252 in many locales: save it as 'CSV UTF-8')")
    return message


def column_types(con: duckdb.DuckDBPyConnection, relation_sql: str, path: str | None = None) -> dict[str, str]:
    try:
        return {r[0]: r[1] for r in con.sql(f"DESCRIBE SELECT * FROM {relation_sql}").fetchall()}
    except duckdb.Error as error:
        raise HumanDataError(f"cannot read human data: {encoding_hint(path, str(error).splitlines()[0])}") from error


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


def _columns(con: duckdb.DuckDBPyConnection, relation_sql: str, path: str | None = None) -> list[str]:
    try:
        return list(con.sql(f"SELECT * FROM {relation_sql} LIMIT 0").columns)
    except duckdb.Error as error:
        raise HumanDataError(f"cannot read human data: {encoding_hint(path, str(error).splitlines()[0])}") from error

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
