"""Discover: list SOURCE recursively and keep image files by extension.

The listing is streamed into Arrow record batches with the columns ``path``
(relative to SOURCE, '/'-separated), ``uri``, ``size_bytes`` and
``source_version`` (the store's version tag: ETag or generation on object
stores, size and mtime locally), so no list of every key's metadata is ever
held at once. On S3 (and S3-compatible stores) the keys come page by page from
``ListObjectsV2`` (1,000 keys a page, no delimiter, nothing cached by s3fs); on
other stores folder by folder through ``fs.walk``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from memscore.errors import UserError
from memscore.storage.uris import Location

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})

LISTING_SCHEMA = pa.schema(
    [
        pa.field("path", pa.string()),
        pa.field("uri", pa.string()),
        pa.field("size_bytes", pa.int64()),
        pa.field("source_version", pa.string()),
    ]
)


class SourceUnreadableError(UserError, RuntimeError):
    """SOURCE does not exist or cannot be listed."""


class SourceNotFoundError(SourceUnreadableError):
    """SOURCE does not exist or is not a folder (retrying will not help)."""


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


def is_s3(fs: Any) -> bool:
    """True for s3fs filesystems (AWS S3 and S3-compatible stores)."""
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return ("s3" in protocols or "s3a" in protocols) and hasattr(fs, "call_s3")


def iter_s3_objects(source: Location, page_size: int = 1000) -> Iterator[dict[str, Any]]:
    """The objects under an S3 prefix, one ``ListObjectsV2`` page at a time.

    Each object is a dict like s3fs's ``info`` (``name``, ``size``, ``ETag``,
    ``LastModified``, ``type``). Only one page is held at a time, and nothing
    goes into s3fs's listings cache.
    """
    fs = source.fs
    bucket, _, key = source.root.strip("/").partition("/")
    prefix = key.rstrip("/") + "/" if key else ""
    request: dict[str, Any] = {"Bucket": bucket, "MaxKeys": page_size}
    if prefix:
        request["Prefix"] = prefix
    seen_any = False
    while True:
        try:
            page = fs.call_s3("list_objects_v2", **request)
        except FileNotFoundError:  # NoSuchBucket
            raise SourceNotFoundError(f"source not found: {source.uri} (no such bucket)") from None
        for item in page.get("Contents", []):
            if item["Key"].endswith("/"):  # a "folder" marker object
                continue
            seen_any = True
            yield {
                "name": f"{bucket}/{item['Key']}",
                "size": item.get("Size", 0),
                "ETag": item.get("ETag"),
                "LastModified": item.get("LastModified"),
                "type": "file",
            }
        token = page.get("NextContinuationToken")
        if not page.get("IsTruncated") or not token:
            break
        request["ContinuationToken"] = token
    if not seen_any:
        # Empty prefix: tell "no such bucket/prefix" and "a file, not a folder" apart.
        try:
            fs.call_s3("head_bucket", Bucket=bucket)
        except FileNotFoundError:
            raise SourceNotFoundError(f"source not found: {source.uri} (no such bucket)") from None
        if key and fs.exists(source.root):
            if fs.isfile(source.root):
                raise SourceNotFoundError(f"source is not a folder: {source.uri}")
            return
        if key:
            raise SourceNotFoundError(f"source not found: {source.uri}")


def _iter_files(source: Location) -> Iterator[dict[str, Any]]:
    """Every file under ``source`` as an fsspec info dict, streamed."""
    if is_s3(source.fs):
        yield from iter_s3_objects(source)
        return
    if not source.fs.exists(source.root):
        raise SourceNotFoundError(f"source not found: {source.uri}")
    if not source.fs.isdir(source.root):
        raise SourceNotFoundError(f"source is not a folder: {source.uri}")
    for _folder, _dirs, files in source.fs.walk(source.root, detail=True):
        for _name, info in sorted(files.items()):
            if info.get("type", "file") == "file":
                yield info


def iter_listing(source: Location, batch_rows: int = 10_000, counts: DiscoveryCounts | None = None) -> Iterator[pa.RecordBatch]:
    """Yield the image files under ``source`` as record batches of :data:`LISTING_SCHEMA`."""
    counts = counts if counts is not None else DiscoveryCounts()
    try:
        rows: dict[str, list] = {name: [] for name in LISTING_SCHEMA.names}
        for info in _iter_files(source):
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
