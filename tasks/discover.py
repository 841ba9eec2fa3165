"""Discover: list SOURCE recursively and keep image files by extension.

The listing is streamed folder by folder (``fs.walk``) into Arrow record batches
with the columns ``path`` (relative to SOURCE, '/'-separated), ``uri``,
``size_bytes`` and ``source_version`` (the store's version tag: ETag or
generation on object stores, size and mtime locally), so no list of every key's
metadata is ever held at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from storage.uris import Location

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})

LISTING_SCHEMA = pa.schema(
    [
        pa.field("path", pa.string()),
        pa.field("uri", pa.string()),
        pa.field("size_bytes", pa.int64()),
        pa.field("source_version", pa.string()),
    ]
)


class SourceUnreadableError(RuntimeError):
    """SOURCE does not exist or cannot be listed."""


@dataclass
class DiscoveryCounts:
    """How many files were seen and how many were kept as images."""

    files: int = 0
    images: int = 0

    @property
    def ignored(self) -> int:
        return self.files - self.images


def is_image_name(name: str) -> bool:
    """True for file names with an image extension (any case)."""
    dot = name.rfind(".")
    return dot > 0 and name[dot:].lower() in IMAGE_EXTENSIONS


def version_tag(info: dict[str, Any]) -> str:
    """The store's version tag of a file: ETag / generation / version id, else size and mtime."""
    for key in ("ETag", "etag", "VersionId", "generation", "md5Hash", "content_md5"):
        value = info.get(key)
        if value:
            return f"{key.lower()}:{str(value).strip(chr(34))}"
    mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified") or info.get("created")
    if hasattr(mtime, "timestamp"):
        mtime = mtime.timestamp()
    return f"size:{info.get('size')}|mtime:{mtime}"


def iter_listing(source: Location, batch_rows: int = 10_000, counts: DiscoveryCounts | None = None) -> Iterator[pa.RecordBatch]:
    """Yield the image files under ``source`` as record batches of :data:`LISTING_SCHEMA`."""
    counts = counts if counts is not None else DiscoveryCounts()
    try:
        if not source.fs.exists(source.root):
            raise SourceUnreadableError(f"source not found: {source.uri}")
        if not source.fs.isdir(source.root):
            raise SourceUnreadableError(f"source is not a folder: {source.uri}")
        walker = source.fs.walk(source.root, detail=True)
        rows: dict[str, list] = {name: [] for name in LISTING_SCHEMA.names}
        for _folder, _dirs, files in walker:
            for _name, info in sorted(files.items()):
                if info.get("type", "file") != "file":
                    continue
                full_path = info["name"]
                counts.files += 1
                name = full_path.rsplit("/", 1)[-1]
                if not is_image_name(name):
                    continue
                counts.images += 1
                rows["path"].append(source.relative(full_path))
                rows["uri"].append(source.full_uri(full_path))
                rows["size_bytes"].append(int(info.get("size") or 0))
                rows["source_version"].append(version_tag(info))
                if len(rows["path"]) >= batch_rows:
                    yield pa.RecordBatch.from_pydict(rows, schema=LISTING_SCHEMA)
                    rows = {name: [] for name in LISTING_SCHEMA.names}
        if rows["path"]:
            yield pa.RecordBatch.from_pydict(rows, schema=LISTING_SCHEMA)
    except SourceUnreadableError:
        raise
    except (OSError, PermissionError) as error:
        raise SourceUnreadableError(f"cannot list source {source.uri}: {error}") from error
