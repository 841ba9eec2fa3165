"""Run summaries under DEST: ``DEST/runs/<run_id>.json``, one small JSON file per run.

The scores and errors parts say which images were scored or failed, by which model
and weights, and when; they do not say what a run skipped (already in DEST), what
SOURCE it read, on which device, or how fast it went. ``score-archive`` therefore
writes its :class:`flows.score.ScoreSummary` here when it ends (a single PUT, like
the parts), and ``memscore report`` reads them for its provenance section. Runs
made before this file existed, or killed before their end, have no summary; the
report then says so and falls back to what the parts hold.
"""

from __future__ import annotations

import json
from typing import Any

from memscore.storage.uris import Location

RUNS_DIR = "runs"


def write_run_summary(dest: Location, summary: dict[str, Any]) -> str:
    """Write ``summary`` (JSON-ready, with a ``run_id``) as ``DEST/runs/<run_id>.json``; return its path."""
    target = dest.join(RUNS_DIR, f"{summary['run_id']}.json")
    if dest.is_local:
        dest.fs.makedirs(dest.join(RUNS_DIR), exist_ok=True)
    dest.fs.pipe_file(target, (json.dumps(summary, indent=1, default=str) + "\n").encode())
    return target


def read_run_summaries(dest: Location) -> tuple[list[dict[str, Any]], list[str]]:
    """All run summaries in ``DEST/runs`` sorted by run id, and one warning per unreadable file."""
    base = dest.join(RUNS_DIR)
    if not dest.is_local:
        dest.fs.invalidate_cache(base)
    try:
        names = sorted(e["name"] for e in dest.fs.ls(base, detail=True)
                       if e.get("type") == "file" and e["name"].endswith(".json"))
    except FileNotFoundError:
        return [], []
    runs, warnings = [], []
    for name in names:
        try:
            runs.append(json.loads(dest.fs.cat_file(name)))
        except (OSError, ValueError) as error:
            warnings.append(f"run summary {name} unreadable: {error}")
    return sorted(runs, key=lambda r: str(r.get("run_id", ""))), warnings
