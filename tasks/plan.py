"""Plan: skip what DEST already holds, cut the rest into shards.

The listing from :mod:`tasks.discover` is anti-joined in DuckDB against the keys
already in DEST (same path, source version, model and weights; scored, or failed
unless errors are to be retried). What is left is cut into shards of
``shard_size`` images, in path order so that shard contents are reproducible.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from memscore.storage.parts import read_columns
from memscore.storage.schema import ERRORS_DIR, SCORES_DIR
from memscore.storage.uris import Location
from memscore.tasks.discover import LISTING_SCHEMA

_KEY_COLUMNS = ["path", "source_version", "model", "weights"]


@dataclass
class Plan:
    """What a run will score: the shards, and how many images were already done."""

    shards: list[pa.Table]
    already_done: int
    to_score: int


def done_keys(dest: Location, model: str, weights: str, include_errors: bool = True) -> pa.Table:
    """(path, source_version) pairs DEST already holds for this model and weights."""
    tables = []
    for folder in (SCORES_DIR, ERRORS_DIR) if include_errors else (SCORES_DIR,):
        table = read_columns(dest, folder, _KEY_COLUMNS)
        if table is not None:
            tables.append(table.select(_KEY_COLUMNS))
    if not tables:
        return pa.table({name: pa.array([], pa.string()) for name in ("path", "source_version")})
    keys = pa.concat_tables(tables)
    con = duckdb.connect()
    con.register("keys", keys)
    return con.sql(
        "SELECT DISTINCT path, source_version FROM keys WHERE model = $model AND weights = $weights",
        params={"model": model, "weights": weights},
    ).to_arrow_table()


def plan_shards(
    listing: Iterable[pa.RecordBatch],
    done: pa.Table,
    shard_size: int,
) -> Plan:
    """Anti-join the listing against ``done`` and cut the rest into shards."""
    if shard_size < 1:
        raise ValueError("shard size must be at least 1")
    con = duckdb.connect()
    reader = pa.RecordBatchReader.from_batches(LISTING_SCHEMA, iter(listing))
    con.register("listing_stream", reader)
    con.sql("CREATE TABLE listing AS SELECT * FROM listing_stream")
    con.register("done", done)
    total = con.sql("SELECT count(*) FROM listing").fetchall()[0][0]
    todo = con.sql(
        """
        SELECT l.* FROM listing AS l
        ANTI JOIN done AS d ON l.path = d.path AND l.source_version = d.source_version
        ORDER BY l.path
        """
    ).to_arrow_table()
    shards = [todo.slice(start, shard_size) for start in range(0, todo.num_rows, shard_size)]
    return Plan(shards=shards, already_done=total - todo.num_rows, to_score=todo.num_rows)
