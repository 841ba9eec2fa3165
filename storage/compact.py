"""Keep one current row per image: drop rows superseded by a newer read.

When a file changes, a rerun scores it again; the older row (in an older part)
is then stale. After every run, for each (path, model, weights), only the newest
row across scores and errors is kept: parts holding stale rows are rewritten
atomically without them. A crash in the middle leaves at worst rows that the next
run's compaction removes; no part is ever half written.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from memscore.storage.parts import list_parts, rewrite_without
from memscore.storage.schema import ERRORS_DIR, SCORES_DIR
from memscore.storage.uris import Location

_TIME_COLUMN = {SCORES_DIR: "scored_at", ERRORS_DIR: "failed_at"}


def _keys(dest: Location) -> pa.Table | None:
    tables = []
    for folder, time_column in _TIME_COLUMN.items():
        for part in list_parts(dest, folder):
            with dest.fs.open(part, "rb") as handle:
                table = pq.read_table(handle, columns=["path", "model", "weights", "run_id", time_column])
            tables.append(
                pa.table(
                    {
                        "part": pa.array([part] * table.num_rows, pa.string()),
                        "row_index": pa.array(range(table.num_rows), pa.int64()),
                        "path": table["path"],
                        "model": table["model"],
                        "weights": table["weights"],
                        "run_id": table["run_id"],
                        "read_at": table[time_column],
                    }
                )
            )
    return pa.concat_tables(tables) if tables else None


def drop_superseded_rows(dest: Location) -> int:
    """Rewrite parts so each (path, model, weights) keeps only its newest row; return rows dropped."""
    keys = _keys(dest)
    if keys is None or keys.num_rows == 0:
        return 0
    con = duckdb.connect()
    con.register("keys", keys)
    stale = con.sql(
        """
        SELECT part, list(row_index ORDER BY row_index) AS stale_rows FROM (
            SELECT part, row_index, row_number() OVER (
                PARTITION BY path, model, weights
                ORDER BY read_at DESC, run_id DESC, part DESC, row_index DESC
            ) AS recency
            FROM keys
        ) WHERE recency > 1 GROUP BY part ORDER BY part
        """
    ).fetchall()
    dropped = 0
    for part, rows in stale:
        with dest.fs.open(part, "rb") as handle:
            n = pq.read_metadata(handle).num_rows
        keep = pc.invert(pc.is_in(pa.array(range(n), pa.int64()), value_set=pa.array(rows, pa.int64())))
        rewrite_without(dest, part, keep)
        dropped += len(rows)
    return dropped
