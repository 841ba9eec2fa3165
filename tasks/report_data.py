"""What ``memscore report`` reads from DEST: DuckDB queries that return small results.

Everything here runs as SQL over the Parquet parts where they lie (a local folder
or a bucket through fsspec), reading only the columns it needs, and returns a few
rows: counts, summary statistics, histogram bin counts, the few gallery rows and
error examples. No query brings a row per image into Python, so a DEST of millions
of rows costs DuckDB's streaming aggregation, not Python memory
(benchmarks/bench_report.py measures it).

Provenance comes from the parts (model, weights digest, rows, run ids, time range,
errors by reason) and, when present, the run summaries in ``DEST/runs``
(:mod:`storage.runs`: source, device, skipped, throughput), which ``score-archive``
writes since the report exists; older runs have none and the report says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import duckdb

from memscore.errors import UserError
from memscore.storage.compact import current_rows_sql
from memscore.storage.human import lit, q
from memscore.storage.parts import duckdb_parts
from memscore.storage.runs import read_run_summaries
from memscore.storage.schema import ERRORS_DIR, SCORES_DIR
from memscore.storage.uris import Location, open_location

TOP_LEVEL = "(top level)"
OTHER_GROUPS = "(other folders)"


class ReportError(UserError, ValueError):
    """DEST or the options cannot make a report; the message is one line."""


@dataclass
class DestTables:
    """DEST opened for queries: SQL relations over its scores and errors parts."""

    location: Location
    scores_sql: str
    errors_sql: str | None
    score_parts: int
    error_parts: int
    columns: list[str] = field(default_factory=list)


def connect(memory_limit: str | None = "512MB", temp_directory: str | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection for the report's queries: at most ``memory_limit`` (DuckDB's setting,
    e.g. ``"512MB"``; None: DuckDB's default of 80% of RAM), spilling to ``temp_directory``
    beyond it (exact distinct counts and quantiles of millions of rows stay within the limit)."""
    con = duckdb.connect()
    if memory_limit:
        con.sql(f"SET memory_limit = {lit(memory_limit)}")
    if temp_directory:
        con.sql(f"SET temp_directory = {lit(temp_directory)}")
    return con


def open_dest(con: duckdb.DuckDBPyConnection, dest: str, storage_options: dict[str, Any] | None = None) -> DestTables:
    """DEST's parts as relations on ``con``; :class:`ReportError` when DEST holds no scores."""
    try:
        location = open_location(dest, storage_options)
        if not location.fs.isdir(location.root):
            if location.fs.exists(location.root):
                raise ReportError(f"{dest} is a file, not a memscore output folder (the report reads DEST/scores)")
            raise ReportError(f"DEST not found: {dest}")
        scores = duckdb_parts(con, location, SCORES_DIR)
        errors = duckdb_parts(con, location, ERRORS_DIR)
    except ReportError:
        raise
    except Exception as error:  # noqa: BLE001 - credentials, network: one line for the user
        raise ReportError(f"cannot read DEST {dest}: {error}") from error
    if not scores:
        raise ReportError(f"{dest} holds no scores (no Parquet parts in {dest.rstrip('/')}/{SCORES_DIR}); "
                          f"is it a `memscore score` output folder?")

    def rel(files: list[str]) -> str:
        return f"read_parquet([{', '.join(lit(f) for f in files)}], union_by_name = true)"

    scores_sql = rel(scores)
    columns = [r[0] for r in con.sql(f"DESCRIBE SELECT * FROM {scores_sql}").fetchall()]
    missing = {"path", "model", "score"} - set(columns)
    if missing:
        raise ReportError(f"{dest}: the scores parts lack column(s) {', '.join(sorted(missing))}")
    errors_sql = rel(errors) if errors else None
    if {"uri", "model", "weights", "run_id", "scored_at"} <= set(columns):
        # Only the current row of each (uri, model, weights): never the stale rows a killed or
        # concurrent run left before compaction (storage/compact.py).
        scores_sql = current_rows_sql(scores, errors, SCORES_DIR)
        errors_sql = current_rows_sql(scores, errors, ERRORS_DIR) if errors else None
    return DestTables(location, scores_sql, errors_sql, len(scores), len(errors), columns)


def models_in(con: duckdb.DuckDBPyConnection, tables: DestTables) -> list[str]:
    """The models with scores in DEST, sorted."""
    return [r[0] for r in con.sql(f"SELECT DISTINCT model FROM {tables.scores_sql} ORDER BY 1").fetchall()]


def choose_model(con: duckdb.DuckDBPyConnection, tables: DestTables, model: str | None) -> str:
    """``model`` if DEST has its scores, the only model when there is one; else :class:`ReportError`."""
    models = models_in(con, tables)
    if model is not None:
        if model not in models:
            raise ReportError(f"DEST has no scores of model {model!r} (models: {', '.join(models)})")
        return model
    if len(models) > 1:
        raise ReportError(f"DEST holds scores of several models ({', '.join(models)}); choose one with --model")
    return models[0]


def provenance(con: duckdb.DuckDBPyConnection, tables: DestTables) -> dict[str, Any]:
    """Per model and weights digest: rows, images, runs, first and last scored_at; errors by
    model and reason; the run summaries of DEST/runs (may be empty)."""
    has = set(tables.columns)
    weights = "weights" if "weights" in has else "NULL"
    runs = "count(DISTINCT run_id)" if "run_id" in has else "NULL"
    times = "min(scored_at), max(scored_at)" if "scored_at" in has else "NULL, NULL"
    rows = con.sql(f"SELECT model, {weights}, count(*), count(DISTINCT path), {runs}, {times} "
                   f"FROM {tables.scores_sql} GROUP BY ALL ORDER BY 1, 2").fetchall()
    scored = [{"model": m, "weights": w, "rows": int(n), "images": int(i), "runs": r,
               "first_scored_at": _iso(t0), "last_scored_at": _iso(t1)} for m, w, n, i, r, t0, t1 in rows]
    failed: list[dict[str, Any]] = []
    if tables.errors_sql:
        failed = [{"model": m, "stage": s, "reason": e, "images": int(n)} for m, s, e, n in con.sql(
            f"SELECT model, stage, error, count(DISTINCT path) FROM {tables.errors_sql} "
            f"GROUP BY ALL ORDER BY 4 DESC, 1, 2, 3").fetchall()]
    summaries, warnings = read_run_summaries(tables.location)
    return {"dest": tables.location.uri, "score_parts": tables.score_parts, "error_parts": tables.error_parts,
            "scored": scored, "failed": failed, "runs": summaries, "warnings": warnings}


def _iso(value: Any) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None


def group_expression(columns: list[str], group_column: str | None) -> tuple[str, str]:
    """(SQL expression, label) of the grouping: the named column, else the top-level folder of ``path``."""
    if group_column:
        if group_column not in columns:
            raise ReportError(f"the scores have no column {group_column!r} to group by "
                              f"(columns: {', '.join(c for c in columns if not c.startswith('feat_'))})")
        return f"coalesce({q(group_column)}::VARCHAR, '(none)')", group_column
    return (f"CASE WHEN strpos(path, '/') > 0 THEN split_part(path, '/', 1) ELSE {lit(TOP_LEVEL)} END",
            "top-level folder")


def score_summary(con: duckdb.DuckDBPyConnection, rel: str) -> dict[str, Any]:
    """n, mean, sd, min, quartiles (exact, ``quantile_cont``) and max of ``score`` in ``rel``."""
    row = con.sql(f"SELECT count(score), avg(score), stddev_samp(score), min(score), "
                  f"quantile_cont(score, [0.25, 0.5, 0.75]), max(score) FROM {rel}").fetchall()[0]
    quart = row[4] or [None, None, None]
    return {"n": int(row[0]), "mean": row[1], "sd": row[2], "min": row[3], "q1": quart[0], "median": quart[1],
            "q3": quart[2], "max": row[5]}


def histograms(con: duckdb.DuckDBPyConnection, rel: str, group_sql: str, bins: int = 40,
               max_groups: int = 12) -> dict[str, Any]:
    """Bin counts of ``score`` over [min, max] in ``bins`` equal bins, overall and per group.

    Groups beyond the ``max_groups`` largest are pooled as ``(other folders)``. Returns
    ``{"edges": [bins + 1], "overall": [bins], "groups": [{"group", "n", "counts", "summary"}]}``.
    """
    lo, hi = con.sql(f"SELECT min(score), max(score) FROM {rel}").fetchall()[0]
    lo, hi = float(lo), float(hi)
    if hi <= lo:
        hi = lo + 1e-6
    width = (hi - lo) / bins
    edges = [lo + i * width for i in range(bins + 1)]
    binned = f"least(greatest(floor((score - {lo!r}) / {width!r})::INTEGER, 0), {bins - 1})"
    sizes = con.sql(f"SELECT {group_sql} AS g, count(*) AS n FROM {rel} GROUP BY 1 ORDER BY 2 DESC, 1").fetchall()
    keep = [g for g, _ in sizes[:max_groups]] if len(sizes) > max_groups else [g for g, _ in sizes]
    pooled = len(sizes) > max_groups
    keep_sql = f"CASE WHEN g IN ({', '.join(lit(g) for g in keep)}) THEN g ELSE {lit(OTHER_GROUPS)} END" \
        if pooled else "g"
    counts = con.sql(f"SELECT {keep_sql} AS grp, b, count(*) FROM (SELECT {group_sql} AS g, {binned} AS b, score "
                     f"FROM {rel}) GROUP BY ALL").fetchall()
    per: dict[str, list[int]] = {}
    overall = [0] * bins
    for g, b, n in counts:
        per.setdefault(g, [0] * bins)[b] += int(n)
        overall[b] += int(n)
    order = keep + ([OTHER_GROUPS] if pooled else [])
    cur = con.sql(f"SELECT {keep_sql} AS grp, count(score), avg(score), stddev_samp(score), min(score), "
                  f"quantile_cont(score, [0.25, 0.5, 0.75]), max(score) FROM (SELECT {group_sql} AS g, score "
                  f"FROM {rel}) GROUP BY 1")
    summaries = {}
    for g, n, mean, sd, low, quart, high in cur.fetchall():
        summaries[g] = {"n": int(n), "mean": mean, "sd": sd, "min": low, "q1": quart[0], "median": quart[1],
                        "q3": quart[2], "max": high}
    groups = [{"group": g, "n": summaries[g]["n"], "counts": per.get(g, [0] * bins), "summary": summaries[g]}
              for g in order]
    return {"edges": edges, "overall": overall, "groups": groups, "n_groups": len(sizes), "pooled": pooled}


def gallery_rows(con: duckdb.DuckDBPyConnection, rel: str, top: int, sample: int, seed: int) -> dict[str, list[dict]]:
    """The ``top`` highest and lowest scores (ties by path) and a seeded random sample of ``sample``
    of the others: ``{"top": [...], "bottom": [...], "random": [...]}`` of {path, uri, score, rank}
    (rank 1 = highest score; tied scores share the best rank). Top-N queries and one counting
    scan, so memory does not grow with the number of rows."""

    def fetch(sql: str) -> list[dict]:
        cur = con.sql(sql)
        names = cur.columns
        return [dict(zip(names, r)) for r in cur.fetchall()]

    top_rows = fetch(f"SELECT path, uri, score FROM {rel} ORDER BY score DESC, path LIMIT {int(top)}")
    bottom_rows = fetch(f"SELECT path, uri, score FROM {rel} ORDER BY score ASC, path LIMIT {int(top)}")
    shown = {r["path"] for r in top_rows + bottom_rows}
    random_rows: list[dict] = []
    if sample > 0:
        exclude = f"WHERE path NOT IN ({', '.join(lit(p) for p in shown)})" if shown else ""
        random_rows = fetch(f"SELECT * FROM (SELECT path, uri, score FROM {rel} {exclude}) "
                            f"USING SAMPLE reservoir({int(sample)} ROWS) REPEATABLE ({int(seed)}) ORDER BY score DESC")
    rows = top_rows + bottom_rows + random_rows
    if rows:
        values = sorted({float(r["score"]) for r in rows})
        counts = con.sql("SELECT " + ", ".join(f"count(*) FILTER (WHERE score > {v!r})" for v in values)
                         + f" FROM {rel}").fetchall()[0]
        above = dict(zip(values, counts))
        for r in rows:
            r["rank"] = int(above[float(r["score"])]) + 1
    return {"top": top_rows, "bottom": bottom_rows, "random": random_rows}


def error_examples(con: duckdb.DuckDBPyConnection, tables: DestTables, model: str | None,
                   per_reason: int = 5) -> list[dict[str, Any]]:
    """Up to ``per_reason`` example rows (path, stage, error, message) per reason, by path."""
    if not tables.errors_sql:
        return []
    cond = f"WHERE model = {lit(model)}" if model else ""
    cur = con.sql(f"SELECT path, stage, error, message FROM (SELECT *, row_number() OVER "
                  f"(PARTITION BY error ORDER BY path) AS k FROM {tables.errors_sql} {cond}) "
                  f"WHERE k <= {int(per_reason)} ORDER BY error, path")
    return [dict(zip(cur.columns, r)) for r in cur.fetchall()]
