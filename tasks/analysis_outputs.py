"""The files of ``memscore analyze --out``: joined.parquet (per image and model),
stats.json (the result) and report.md, in a local folder or a bucket; and the check,
before any statistics, that the folder can be written."""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

import duckdb

from memscore.storage.relations import lit
from memscore.storage.uris import Location, open_location
from memscore.tasks.analysis_options import AnalysisError
from memscore.tasks.summary import summary_markdown


def write_outputs(con: duckdb.DuckDBPyConnection, result: dict[str, Any], out_dir: str,
                  storage_options: dict[str, Any] | None = None) -> dict[str, str]:
    """joined.parquet (per image), stats.json (``result`` with these paths as ``outputs``) and
    report.md under ``out_dir``: a local folder or an fsspec URI (``s3://``, ``gs://``, ...,
    opened with ``storage_options``). Returns the paths (URIs for a bucket)."""
    names = {"joined": "joined.parquet", "stats": "stats.json", "report": "report.md"}
    try:
        location, base = _open_out(out_dir, storage_options)
        if base is not None:
            paths = {key: os.path.join(base, name) for key, name in names.items()}
        else:
            paths = {key: location.full_uri(location.join(name)) for key, name in names.items()}
        stats = (json.dumps({**result, "outputs": paths}, indent=2, default=str) + "\n").encode()
        report = summary_markdown(result).encode()
        if base is not None:
            os.makedirs(os.path.dirname(paths["joined"]) or ".", exist_ok=True)
            con.sql(f"COPY (SELECT * FROM joined ORDER BY image) TO {lit(paths['joined'])} (FORMAT parquet)")
            Path(paths["stats"]).write_bytes(stats)
            Path(paths["report"]).write_bytes(report)
        else:  # DuckDB writes a local file, which goes up whole (as the text files do)
            with tempfile.TemporaryDirectory(prefix="memscore-analyze-") as folder:
                joined = os.path.join(folder, names["joined"])
                con.sql(f"COPY (SELECT * FROM joined ORDER BY image) TO {lit(joined)} (FORMAT parquet)")
                location.fs.put_file(joined, location.join(names["joined"]))
            location.fs.pipe_file(location.join(names["stats"]), stats)
            location.fs.pipe_file(location.join(names["report"]), report)
    except (OSError, ValueError, ImportError) as error:  # no such bucket, credentials, a file in the way
        raise AnalysisError(f"cannot write {out_dir}: {error}") from error
    except duckdb.Error as error:
        raise AnalysisError(f"cannot write {out_dir}: {str(error).splitlines()[0]}") from error
    return paths


def _open_out(out_dir: str, storage_options: dict[str, Any] | None) -> tuple[Location, str | None]:
    """The location of ``--out`` and, when it is local, its folder as a plain path (else None)."""
    location = open_location(out_dir, storage_options)
    if not location.is_local:
        return location, None
    return location, out_dir if "://" not in out_dir else location.root


def check_writable(out_dir: str, storage_options: dict[str, Any] | None = None) -> None:
    """Raise :class:`AnalysisError` now, before any statistics, if ``out_dir`` cannot be written.

    Writes and deletes an empty probe file there (a folder is created, as the
    outputs would create it), so a typo or a missing bucket costs seconds, not a
    finished bootstrap.
    """
    probe_name = f".memscore-write-probe-{uuid.uuid4().hex}"
    try:
        location, base = _open_out(out_dir, storage_options)
        if base is not None:
            os.makedirs(base, exist_ok=True)
            probe = Path(base) / probe_name
            probe.write_bytes(b"")
            probe.unlink()
        else:
            probe = location.join(probe_name)
            location.fs.pipe_file(probe, b"")
            location.fs.rm_file(probe)
    except (OSError, ValueError, ImportError) as error:  # no such bucket, credentials, a file in the way
        raise AnalysisError(f"cannot write {out_dir}: {error}") from error


