"""memscore sql: run DuckDB SQL over a memscore output folder (views scores and errors).

With a query, prints its result as a table; without one, opens a prompt (end a
statement with ';', quit with .quit or Ctrl-D). The views: scores (DEST/scores/*.parquet)
and errors (DEST/errors/*.parquet; empty when no image failed), each holding only the
current row of every (uri, model, weights): the newest across both (storage/compact.py),
so stale rows a killed or concurrent run left behind are never seen. A part that is no
Parquet file is named in one line, with how to move it away.

This is full DuckDB with the user's rights: COPY, ATTACH and read_csv/read_parquet
reach any file the user can. ``--read-only`` locks the connection once the views
exist: DuckDB's ``enable_external_access=false`` with ``allowed_paths`` set to the
part files the views read, then ``lock_configuration=true``, so queries can read
the views (and build in-memory tables) but any other file, extension or database
is refused.
"""

from __future__ import annotations

import argparse
import sys

EPILOG = """examples:
  memscore sql ./photos-scores "SELECT path, score FROM scores ORDER BY score DESC LIMIT 10"
  memscore sql ./photos-scores "SELECT stage, error, count(*) FROM errors GROUP BY ALL"
  memscore sql ./photos-scores --csv "SELECT path, score FROM scores" > scores.csv
  memscore sql ./photos-scores --read-only "SELECT ..."   # no other file can be read or written
  memscore sql ./photos-scores          # interactive prompt

--csv writes list columns (feat_<layer>) as '[0.1, 0.2, ...]' text; unnest them in
SQL for one value a cell, e.g. SELECT path, unnest(feat_fc11) FROM scores.
memscore sql is full DuckDB: COPY, ATTACH and the read_* functions reach any
file you can; --read-only refuses everything but the views."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("destination", metavar="DEST", help="memscore output folder (with scores/ and errors/)")
    parser.add_argument("query", nargs="?", default=None, metavar="SQL", help="query to run (default: a prompt)")
    parser.add_argument("--max-rows", type=int, default=40, metavar="N", help="rows to show in the table (default 40)")
    parser.add_argument("--csv", action="store_true", help="print the whole result as CSV instead of a table")
    parser.add_argument("--storage-options", default=None, metavar="JSON",
                        help="fsspec options when DEST is a URI (s3://, gs://, ...), as JSON")
    parser.add_argument("--read-only", action="store_true",
                        help="refuse every file but DEST's parts (no COPY, ATTACH, read_csv of other paths, "
                             "INSTALL); for shared machines")


def connect(destination: str, storage_options: dict | None = None, read_only: bool = False):
    """A DuckDB connection with views ``scores`` and ``errors`` over DEST (a folder or a URI).

    With ``read_only`` the connection can afterwards reach only the part files of
    the views (DuckDB ``allowed_paths`` + ``enable_external_access=false``, then
    ``lock_configuration``): COPY, ATTACH, INSTALL and reads of any other path raise
    ``duckdb.PermissionException``.
    """
    import duckdb

    from memscore.flows.cli import UserError
    from memscore.storage.human import lit
    from memscore.storage.compact import current_rows_sql
    from memscore.storage.parts import CorruptPartError, check_parts_readable, duckdb_parts
    from memscore.storage.schema import ERRORS_DIR, ERRORS_SCHEMA, SCORES_DIR
    from memscore.storage.uris import open_location

    dest = open_location(destination, storage_options)
    try:
        is_folder = dest.fs.isdir(dest.root)
    except Exception as error:  # noqa: BLE001 - credentials, network: one line for the user
        raise UserError(f"cannot read {destination}: {error}") from error
    if not is_folder:
        raise UserError(f"{destination} is not a folder (expected a memscore output folder)")
    con = duckdb.connect()
    scores = duckdb_parts(con, dest, SCORES_DIR)
    errors = duckdb_parts(con, dest, ERRORS_DIR)
    if not scores and not errors:
        raise UserError(f"{destination} has no scores/*.parquet or errors/*.parquet (is it a memscore output folder?)")
    try:
        check_parts_readable(con, dest, scores + errors)
    except CorruptPartError as error:
        raise UserError(str(error)) from None
    # One current row per (uri, model, weights), the newest across scores and errors, even where a
    # killed or concurrent run left stale rows that compaction has not removed yet.
    if scores:
        con.sql(f"CREATE VIEW scores AS SELECT * FROM {current_rows_sql(scores, errors, SCORES_DIR)}")
    else:
        con.sql("CREATE VIEW scores AS SELECT NULL::VARCHAR AS image_id, NULL::VARCHAR AS path, NULL::VARCHAR AS uri, "
                "NULL::FLOAT AS score WHERE false")
    if errors:
        con.sql(f"CREATE VIEW errors AS SELECT * FROM {current_rows_sql(scores, errors, ERRORS_DIR)}")
    else:
        empty = ERRORS_SCHEMA.empty_table()
        con.register("_errors_empty", empty)
        con.sql("CREATE VIEW errors AS SELECT * FROM _errors_empty")
    if read_only:
        con.sql(f"SET allowed_paths = [{', '.join(map(lit, scores + errors))}]")
        con.sql("SET enable_external_access = false")
        con.sql("SET lock_configuration = true")
    return con


def format_table(columns: list[str], rows: list[tuple], total: int | None = None) -> str:
    def cell(v) -> str:
        if v is None:
            return "NULL"
        if isinstance(v, float):
            return f"{v:.6g}"
        if isinstance(v, (list, tuple)):
            text = "[" + ", ".join(cell(x) for x in v[:4]) + (", ..." if len(v) > 4 else "") + "]"
            return f"{text} ({len(v)})" if len(v) > 4 else text
        text = str(v)
        return text if len(text) <= 60 else text[:57] + "..."

    body = [[cell(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in body]) for i, c in enumerate(columns)]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)), line]
    out += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in body]
    if total is not None and total > len(rows):
        out.append(f"({len(rows)} of {total} rows shown; --max-rows N for more)")
    else:
        out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out)


def run_query(con, query: str, max_rows: int = 40, csv: bool = False) -> str:
    import duckdb

    from memscore.flows.cli import UserError

    try:
        rel = con.sql(query)
    except duckdb.Error as error:
        raise UserError(str(error).splitlines()[0]) from error
    if rel is None:  # a statement without a result (CREATE, SET, ...)
        return "ok"
    if csv:
        import io

        import pyarrow.csv as pacsv

        nested = [name for name, kind in zip(rel.columns, rel.types) if str(kind).endswith("]") or
                  str(kind).upper().startswith(("STRUCT", "MAP", "UNION"))]
        if nested:  # CSV has no lists: write them as DuckDB's text of the value, '[0.1, 0.2]'
            def quoted(name: str) -> str:
                return '"' + name.replace('"', '""') + '"'

            rel = rel.project(", ".join(
                f"CAST({quoted(n)} AS VARCHAR) AS {quoted(n)}" if n in nested else quoted(n) for n in rel.columns))
        try:
            table = rel.to_arrow_table()
        except duckdb.Error as error:
            raise UserError(str(error).splitlines()[0]) from error
        buffer = io.BytesIO()
        pacsv.write_csv(table, buffer)
        return buffer.getvalue().decode().rstrip("\n")
    try:
        rows = rel.limit(max_rows + 1).fetchall()
        total = len(rows)
        if total > max_rows:
            total = rel.aggregate("count(*)").fetchall()[0][0]
    except duckdb.Error as error:
        raise UserError(str(error).splitlines()[0]) from error
    return format_table(list(rel.columns), rows[:max_rows], total)


def interactive(con, max_rows: int) -> int:
    from memscore.flows.cli import UserError

    print("memscore sql: views scores, errors; end statements with ';', .quit to leave", file=sys.stderr)
    buffer: list[str] = []
    while True:
        try:
            line = input("memscore> " if not buffer else "     ...> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        if not buffer and line.strip() in (".quit", ".exit", "quit", "exit"):
            return 0
        buffer.append(line)
        if line.rstrip().endswith(";"):
            query = "\n".join(buffer).strip().rstrip(";")
            buffer = []
            try:
                print(run_query(con, query, max_rows))
            except UserError as error:
                print(f"error: {error}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from memscore.flows.cli import parse_storage_options

    con = connect(args.destination, parse_storage_options(args.storage_options), read_only=args.read_only)
    if args.query is None:
        return interactive(con, args.max_rows)
    print(run_query(con, args.query, args.max_rows, args.csv))
    return 0
