"""memscore prune: remove from DEST the rows of files that are no longer in SOURCE.

Lists SOURCE as `memscore score` does and removes, from DEST/scores and
DEST/errors, the rows of files under SOURCE that are gone (deleted or renamed).
Rows of other SOURCEs scored into the same DEST are kept. Refused when a
sub-folder of SOURCE cannot be read (its files would look deleted).
"""

from __future__ import annotations

import argparse

EPILOG = """examples:
  memscore prune ./photos --out ./photos-scores --dry-run
  memscore prune s3://bucket/archive --out s3://bucket/memscore"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SOURCE", help="the folder or URI that was scored")
    parser.add_argument("--out", "-o", dest="destination", metavar="DEST", required=True, help="memscore output folder or URI")
    parser.add_argument("--dry-run", action="store_true", help="only count what would be removed")
    parser.add_argument("--storage-options", default=None, metavar="JSON", help="fsspec options for SOURCE and DEST, as JSON")


def run(args: argparse.Namespace) -> int:
    from memscore.flows.cli import UserError, parse_storage_options
    from memscore.storage.parts import CorruptPartError
    from memscore.storage.prune import prune_rows
    from memscore.storage.uris import open_location
    from memscore.tasks.discover import DiscoveryCounts, iter_listing

    options = parse_storage_options(args.storage_options)
    src = open_location(args.source, options)
    dest = open_location(args.destination, options)
    counts = DiscoveryCounts()
    present: set[str] = set()
    for batch in iter_listing(src, counts=counts):
        present.update(batch.column("uri").to_pylist())
    if counts.unreadable_folders:
        raise UserError(f"not pruning: {counts.warnings()[0]}; their files would look deleted")
    try:
        result = prune_rows(dest, src.full_uri(src.root).rstrip("/") + "/", present, dry_run=args.dry_run)
    except CorruptPartError as error:
        raise UserError(str(error)) from None
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {result.scores_rows} score row(s) and {result.errors_rows} error row(s) of {result.files} "
          f"file(s) no longer in {src.uri}; {len(present)} image(s) in SOURCE")
    return 0
