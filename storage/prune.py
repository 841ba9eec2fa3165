"""Prune: remove the rows of files that are no longer in their SOURCE.

A rerun never deletes rows: the rows of a file deleted or renamed in SOURCE stay
in DEST until they are pruned. :func:`prune_rows` removes, from scores and
errors, every row whose ``uri`` lies under SOURCE's URI and is not among the
URIs SOURCE holds now. Rows of other SOURCEs in the same DEST are never touched.
Parts are rewritten atomically, rows recognised by content (as compaction does),
so a prune running beside a scoring run loses nothing current.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from memscore.storage.parts import list_parts, read_part, replace_part
from memscore.storage.schema import ERRORS_DIR, SCORES_DIR
from memscore.storage.uris import Location


@dataclass
class PruneResult:
    """Rows (and distinct files) found for files no longer in SOURCE, per folder."""

    scores_rows: int = 0
    errors_rows: int = 0
    files: int = 0


def prune_rows(dest: Location, source_prefix: str, present: set[str], dry_run: bool = False) -> PruneResult:
    """Remove rows whose ``uri`` starts with ``source_prefix`` (SOURCE's URI ending in '/') and
    is not in ``present`` (the URIs listed under SOURCE now, as the listing writes them).

    With ``dry_run`` nothing is written; the counts say what would go.
    """
    if not source_prefix.endswith("/"):
        source_prefix += "/"
    result = PruneResult()
    gone: set[str] = set()
    for folder in (SCORES_DIR, ERRORS_DIR):
        for part in list_parts(dest, folder):
            table = read_part(dest, part)
            if table is None:
                continue
            uris = table.column("uri").to_pylist()
            keep = [not (u.startswith(source_prefix) and u not in present) for u in uris]
            removed = len(keep) - sum(keep)
            if not removed:
                continue
            gone.update(u for u, k in zip(uris, keep) if not k)
            if folder == SCORES_DIR:
                result.scores_rows += removed
            else:
                result.errors_rows += removed
            if not dry_run:
                replace_part(dest, part, table.filter(pa.array(keep, pa.bool_())))
    result.files = len(gone)
    return result
