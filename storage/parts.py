"""Parquet parts under DEST: atomic writes, what is already done, and compaction.

Each scored shard becomes one part ``DEST/scores/part-<run>-<shard>.parquet`` (and
``DEST/errors/...`` when some of its images failed). A part is written whole or
not at all: locally to a hidden temporary name and then renamed; on object
stores as a single PUT of the finished bytes. Readers glob ``*.parquet`` and so
never see a partial part, and a run killed at any moment loses only the shards
it had in flight.
"""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from memscore.storage.schema import ERRORS_DIR, SCORES_DIR
from memscore.storage.uris import Location

if TYPE_CHECKING:
    import duckdb


def write_part_atomic(dest: Location, folder: str, name: str, table: pa.Table) -> str:
    """Write ``table`` as ``DEST/folder/name`` so that no reader sees a partial file."""
    target = dest.join(folder, name)
    if dest.is_local:
        dest.fs.makedirs(dest.join(folder), exist_ok=True)
        temporary = dest.join(folder, f".{name}.{uuid.uuid4().hex}.inprogress")
        try:
            pq.write_table(table, temporary, compression="zstd")
            with open(temporary, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(temporary, target)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
    else:
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        # One PUT of the finished bytes (s3fs switches to a multipart upload only
        # past its chunk size, and that too becomes visible only when complete):
        # readers see the whole object or nothing. A retried PUT overwrites the
        # same key with the same bytes, so retries never duplicate rows.
        dest.fs.pipe_file(target, buffer.getvalue())
    return target


def is_part_name(name: str) -> bool:
    """Whether a file name is a finished part: ``*.parquet``, not hidden (``.``: temporaries)
    and not ``_``-prefixed (``_metadata``-style side files, as pyarrow and Spark skip them)."""
    return name.endswith(".parquet") and not name.startswith((".", "_"))


def list_parts(dest: Location, folder: str) -> list[str]:
    """Finished parts in ``DEST/folder``, sorted: the files directly in it (as ``write_part_atomic``
    writes them; subfolders are not searched) whose names pass :func:`is_part_name`. The same
    rule on every filesystem, local or bucket."""
    base = dest.join(folder)
    if not dest.is_local:
        # Other processes (Dask workers, other runs) write here too: never trust a cached listing.
        dest.fs.invalidate_cache(base)
    try:
        entries = dest.fs.ls(base, detail=True)
    except FileNotFoundError:
        return []
    return sorted(e["name"] for e in entries
                  if e.get("type") == "file" and is_part_name(e["name"].rstrip("/").rsplit("/", 1)[-1]))


def duckdb_parts(con: "duckdb.DuckDBPyConnection", dest: Location, folder: str) -> list[str]:
    """The finished parts in ``DEST/folder`` as names DuckDB reads: local paths, or URIs
    with DEST's filesystem registered on ``con`` (DuckDB then reads through fsspec,
    fetching only the columns a query needs)."""
    parts = list_parts(dest, folder)
    if parts and not dest.is_local:
        con.register_filesystem(dest.fs)
        return [dest.full_uri(p) for p in parts]
    return parts


def read_columns(dest: Location, folder: str, columns: list[str]) -> pa.Table | None:
    """The given columns of all parts in ``DEST/folder`` (None when there are none)."""
    tables = []
    for part in list_parts(dest, folder):
        with dest.fs.open(part, "rb") as handle:
            tables.append(pq.read_table(handle, columns=columns))
    return pa.concat_tables(tables, promote_options="default") if tables else None


def rewrite_without(dest: Location, part: str, keep_mask: pa.Array) -> None:
    """Replace ``part`` by its rows where ``keep_mask`` holds (atomically; deletes when empty)."""
    with dest.fs.open(part, "rb") as handle:
        table = pq.read_table(handle)
    kept = table.filter(keep_mask)
    folder, name = part.rsplit("/", 1)
    if kept.num_rows == 0:
        dest.fs.rm_file(part)
        return
    relative_folder = dest.relative(folder)
    write_part_atomic(dest, relative_folder, name, kept)


def part_paths(dest: Location) -> Iterable[tuple[str, list[str]]]:
    """(folder, parts) for the scores and errors folders."""
    for folder in (SCORES_DIR, ERRORS_DIR):
        yield folder, list_parts(dest, folder)
