"""Parquet parts under DEST: atomic writes, what is already done, and compaction.

Each scored shard becomes one part ``DEST/scores/part-<run>-<shard>.parquet`` (and
``DEST/errors/...`` when some of its images failed). A part is written whole or
not at all: locally to a hidden temporary name and then renamed; on object
stores as a single PUT of the finished bytes. Readers glob ``*.parquet`` and so
never see a partial part, and a run killed at any moment loses only the shards
it had in flight. Temporaries left by a killed run (``.<name>.<random>.inprogress``)
are removed by a later run once they are older than :data:`STALE_TEMPORARY_SECONDS`.

A file in ``DEST/scores`` or ``DEST/errors`` that is named like a part but is no
Parquet file (a broken copy, a file from elsewhere) is a :class:`CorruptPartError`
naming the file and how to move it away, never a traceback.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from memscore.errors import UserError
from memscore.storage import atomic
from memscore.storage.schema import ERRORS_DIR, SCORES_DIR
from memscore.storage.uris import Location

if TYPE_CHECKING:
    import duckdb


STALE_TEMPORARY_SECONDS = 3600.0
"""A ``.inprogress`` temporary older than this (by its modification time) belongs to a run that
died: a live run writes a part in seconds."""


class CorruptPartError(UserError, ValueError):
    """A file in DEST that is named like a part cannot be read as Parquet (the message names it)."""

    def __init__(self, dest: Location, part: str, error: BaseException) -> None:
        self.part = dest.full_uri(part) if not dest.is_local else part
        name = part.rstrip("/").rsplit("/", 1)[-1]
        detail = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        where = part.rsplit("/", 1)[0]
        super().__init__(
            f"{self.part} is not a readable Parquet part ({type(error).__name__}: {detail}); move it out of "
            f"{dest.relative(where)}/ or rename it to start with '_' (e.g. _{name}.corrupt), which memscore skips"
        )


def read_part(dest: Location, part: str, columns: list[str] | None = None) -> pa.Table | None:
    """The given columns (all when None; those the part lacks, e.g. columns added in a later
    memscore, are left out) of one part; None when it is gone (another run's compaction
    removed it since it was listed). A part that is no Parquet file is a
    :class:`CorruptPartError`."""
    try:
        with dest.fs.open(part, "rb") as handle:
            if columns is None:
                return pq.read_table(handle)
            present = set(pq.ParquetFile(handle).schema_arrow.names)
            handle.seek(0)
            return pq.read_table(handle, columns=[c for c in columns if c in present])
    except FileNotFoundError:
        return None
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, EOFError) as error:
        raise CorruptPartError(dest, part, error) from None


def remove_stale_temporaries(dest: Location, older_than_s: float = STALE_TEMPORARY_SECONDS) -> int:
    """Delete ``.inprogress`` temporaries of killed runs in DEST/scores and DEST/errors (local DEST
    only; object stores get no temporaries); return how many. Younger ones may belong to a run
    writing right now and are left alone."""
    return atomic.remove_temporaries(dest, (SCORES_DIR, ERRORS_DIR), older_than_s)


def write_part_atomic(dest: Location, folder: str, name: str, table: pa.Table) -> str:
    """Write ``table`` as ``DEST/folder/name`` so that no reader sees a partial file."""
    def to_bytes() -> bytes:
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        return buffer.getvalue()

    # Locally a temporary renamed into place; on object stores one PUT of the finished bytes
    # (s3fs switches to a multipart upload only past its chunk size, and that too becomes
    # visible only when complete): readers see the whole object or nothing. A retried PUT
    # overwrites the same key with the same bytes, so retries never duplicate rows.
    atomic.write_with(dest, f"{folder}/{name}",
                      lambda temporary: pq.write_table(table, temporary, compression="zstd"), to_bytes)
    return dest.join(folder, name)


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
    """The given columns of all parts in ``DEST/folder`` (None when there are none; a column
    that some parts lack is null in their rows)."""
    tables = []
    for part in list_parts(dest, folder):
        table = read_part(dest, part, columns)
        if table is not None:
            for name in columns:
                if name not in table.column_names:
                    table = table.append_column(name, pa.nulls(table.num_rows))
            tables.append(table.select(columns))
    return pa.concat_tables(tables, promote_options="default") if tables else None


def replace_part(dest: Location, part: str, kept: pa.Table) -> None:
    """Replace ``part`` by ``kept`` (atomically; deletes the part when ``kept`` is empty, and
    a part already deleted by someone else stays deleted)."""
    folder, name = part.rsplit("/", 1)
    if kept.num_rows == 0:
        try:
            dest.fs.rm_file(part)
        except FileNotFoundError:
            pass
        return
    write_part_atomic(dest, dest.relative(folder), name, kept)


def part_paths(dest: Location) -> Iterable[tuple[str, list[str]]]:
    """(folder, parts) for the scores and errors folders."""
    for folder in (SCORES_DIR, ERRORS_DIR):
        yield folder, list_parts(dest, folder)


def check_parts_readable(con: "duckdb.DuckDBPyConnection", dest: Location, parts: list[str]) -> None:
    """Raise :class:`CorruptPartError` for the first of ``parts`` (as :func:`duckdb_parts` names
    them) whose Parquet footer DuckDB cannot read; reads footers only."""
    import duckdb

    def quoted(part: str) -> str:
        return "'" + part.replace("'", "''") + "'"

    if not parts:
        return
    try:
        con.sql(f"SELECT count(*) FROM parquet_metadata([{', '.join(map(quoted, parts))}])").fetchall()
        return
    except duckdb.Error:
        pass  # find which one
    for part in parts:
        try:
            con.sql(f"SELECT count(*) FROM parquet_metadata({quoted(part)})").fetchall()
        except duckdb.Error as error:
            raise CorruptPartError(dest, dest.fs._strip_protocol(part), error) from None
