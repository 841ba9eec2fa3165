"""One current row per image: which row is current, and dropping the others.

A row's key is (``uri``, ``model``, ``weights``): the file's full URI (so two
SOURCEs scored into one DEST never share a key, even where their relative paths
are equal), the model and its weights. Of all rows of a key, across scores and
errors, the current one is the newest: latest ``scored_at``/``failed_at``, then
the larger ``run_id``, then a score before an error, then the larger part name.

Readers never depend on compaction: :func:`current_rows_sql` gives the current
rows only, whatever stale rows the parts still hold (a run killed during
compaction, two runs at once). :func:`drop_superseded_rows` then removes stale
rows from the parts to keep them small. It is safe under concurrency: a row is
removed only when a newer row of its key was seen, and rows are recognised by
their content (key, run, time), never by their position, so a part rewritten by
another run in between loses nothing current. Stale is for ever (a newer row is
only ever replaced by a still newer one), so any interleaving of compactions
leaves every current row in place; at worst a stale row comes back, which the
views hide and the next compaction removes.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from memscore.storage.parts import list_parts, read_part, replace_part
from memscore.storage.schema import ERRORS_DIR, SCORES_DIR
from memscore.storage.uris import Location

KEY_COLUMNS = ("uri", "model", "weights")
_TIME_COLUMN = {SCORES_DIR: "scored_at", ERRORS_DIR: "failed_at"}
_FOLDER_RANK = {SCORES_DIR: 1, ERRORS_DIR: 0}  # on a tie of time and run, the score is current
_ID_COLUMNS = [*KEY_COLUMNS, "run_id"]


def _keys(dest: Location) -> pa.Table | None:
    """(part, folder rank, key, run_id, read_at) of every row in DEST's parts."""
    tables = []
    for folder, time_column in _TIME_COLUMN.items():
        for part in list_parts(dest, folder):
            table = read_part(dest, part, [*_ID_COLUMNS, time_column])
            if table is None:  # removed by another run's compaction since it was listed
                continue
            tables.append(
                pa.table(
                    {
                        "part": pa.array([part] * table.num_rows, pa.string()),
                        "folder_rank": pa.array([_FOLDER_RANK[folder]] * table.num_rows, pa.int8()),
                        **{name: table[name] for name in _ID_COLUMNS},
                        "read_at": table[time_column],
                    }
                )
            )
    return pa.concat_tables(tables) if tables else None


def _row_ids(table: pa.Table, time_column: str) -> list[tuple]:
    """The content identity of each row of a part: (uri, model, weights, run_id, time)."""
    columns = [table[name].to_pylist() for name in (*_ID_COLUMNS, time_column)]
    return list(zip(*columns))


def drop_superseded_rows(dest: Location) -> int:
    """Rewrite parts so each key keeps only its newest row; return the rows dropped by this call.

    Safe to run by several processes at once and to kill at any moment (see the module
    docstring). A part that cannot be read is a :class:`storage.parts.CorruptPartError`.
    """
    keys = _keys(dest)
    if keys is None or keys.num_rows == 0:
        return 0
    con = duckdb.connect()
    con.register("keys", keys)
    stale = con.sql(
        """
        SELECT part, list((uri, model, weights, run_id, read_at)) AS stale_rows FROM (
            SELECT *, row_number() OVER (
                PARTITION BY uri, model, weights
                ORDER BY read_at DESC, run_id DESC, folder_rank DESC, part DESC
            ) AS recency
            FROM keys
        ) WHERE recency > 1 GROUP BY part ORDER BY part
        """
    ).fetchall()
    dropped = 0
    for part, rows in stale:
        folder = SCORES_DIR if dest.relative(part).startswith(SCORES_DIR + "/") else ERRORS_DIR
        drop = {tuple(row.values()) if isinstance(row, dict) else tuple(row) for row in rows}
        table = read_part(dest, part)  # read again now: another run may have rewritten it
        if table is None:
            continue
        keep = [row not in drop for row in _row_ids(table, _TIME_COLUMN[folder])]
        removed = len(keep) - sum(keep)
        if removed == 0:  # another run removed them already
            continue
        replace_part(dest, part, table.filter(pa.array(keep, pa.bool_())))
        dropped += removed
    return dropped


def current_rows_sql(scores: list[str], errors: list[str], folder: str) -> str:
    """A DuckDB relation (a parenthesised subquery) of the current rows of ``folder`` (scores or errors).

    ``scores`` and ``errors`` are the parts as DuckDB reads them (local paths, or URIs
    with their filesystem registered). A row is current when no row of the same key
    (uri, model, weights) in either folder is newer (the order of the module docstring),
    so a reader sees one row per key even before compaction has run. The result has the
    parts' own columns (``union_by_name``). An empty ``folder`` list gives an empty relation
    only if the caller handles it: this needs at least one part in ``folder``.
    """
    if folder not in _TIME_COLUMN:
        raise ValueError(f"folder must be {SCORES_DIR!r} or {ERRORS_DIR!r}")
    mine, other = (scores, errors) if folder == SCORES_DIR else (errors, scores)
    if not mine:
        raise ValueError(f"no {folder} parts")
    other_folder = ERRORS_DIR if folder == SCORES_DIR else SCORES_DIR
    t, o = _TIME_COLUMN[folder], _TIME_COLUMN[other_folder]
    # A tie of time and run goes to the score.
    tie = ">" if folder == SCORES_DIR else ">="

    def files(parts: list[str]) -> str:
        return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in parts) + "]"

    newer_other = ""
    if other:
        newer_other = (
            f"WHERE NOT EXISTS (SELECT 1 FROM read_parquet({files(other)}, union_by_name = true) AS o "
            f"WHERE o.uri = m.uri AND o.model = m.model AND o.weights = m.weights "
            f"AND (o.{o} > m.{t} OR (o.{o} = m.{t} AND o.run_id {tie} m.run_id)))"
        )
    return (
        f"(SELECT * EXCLUDE (_memscore_part) FROM read_parquet({files(mine)}, union_by_name = true, "
        f"filename = '_memscore_part') AS m {newer_other} "
        f"QUALIFY row_number() OVER (PARTITION BY m.uri, m.model, m.weights "
        f"ORDER BY m.{t} DESC, m.run_id DESC, m._memscore_part DESC) = 1)"
    )
