"""SQL relations and quoting: the one place that writes identifiers, literals, number
casts, file readers and image match keys into DuckDB SQL.

Everything else builds its SQL from these helpers; none of them runs a query.
"""

from __future__ import annotations

MATCH_MODES = ("path", "name", "stem")


def q(name: str) -> str:
    """Quote an identifier for DuckDB (``a"b`` -> ``"a""b"``)."""
    return '"' + name.replace('"', '""') + '"'


def lit(value: object) -> str:
    """Quote a string literal for DuckDB (``it's`` -> ``'it''s'``)."""
    return "'" + str(value).replace("'", "''") + "'"


def num(expr: str, type: str = "DOUBLE", source_type: str | None = "VARCHAR") -> str:
    """NULL-safe number from a column. Text goes through trim(): DuckDB 2.0 pushes a
    bare TRY_CAST into the CSV reader, which then fails on a bad value instead of
    giving NULL."""
    if source_type is not None and source_type.upper() != "VARCHAR":
        return f"TRY_CAST({expr} AS {type})"
    return f"TRY_CAST(trim({expr}::VARCHAR) AS {type})"


def parquet_files_sql(files: list[str]) -> str:
    """SQL reading several Parquet files as one relation (columns unioned by name)."""
    return f"read_parquet([{', '.join(lit(f) for f in files)}], union_by_name = true)"


def table_file_sql(path: str) -> str:
    """SQL reading one table file: Parquet by its extension, else CSV as text (TSV by its extension)."""
    if path.lower().endswith((".parquet", ".pq", ".parq")):
        return f"read_parquet({lit(path)})"
    delim = ", delim = '\\t'" if path.lower().endswith((".tsv", ".tab")) else ""
    return f"read_csv({lit(path)}, header = true, all_varchar = true{delim})"


def key_sql(column: str, mode: str) -> str:
    """SQL normalising an id column to a match key: path, file name or stem."""
    path = f"regexp_replace(replace({column}::VARCHAR, '\\', '/'), '^(\\./)+', '')"
    if mode == "path":
        return path
    name = f"regexp_extract({path}, '[^/]*$', 0)"
    if mode == "name":
        return name
    if mode == "stem":
        return f"regexp_replace({name}, '\\.[^.]*$', '')"
    raise ValueError(f"unknown match mode {mode!r}")


__all__ = ["MATCH_MODES", "key_sql", "lit", "num", "parquet_files_sql", "q", "table_file_sql"]
