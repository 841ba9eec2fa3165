"""Discover: list SOURCE recursively and keep image files by extension.

The listing is streamed into Arrow record batches with the columns ``path``
(relative to SOURCE, '/'-separated), ``uri``, ``size_bytes`` and
``source_version`` (the store's version tag: ETag or generation on object
stores, size and mtime locally), so no list of every key's metadata is ever
held at once. On S3 (and S3-compatible stores) the keys come page by page from
``ListObjectsV2`` (1,000 keys a page, no delimiter, nothing cached by s3fs);
local folders are walked with ``os.scandir``; other stores folder by folder
through ``fs.walk``.

Local folders: symbolic links to files and to folders are followed, inside or
outside SOURCE; a file reached through a link keeps the link's path (relative to
SOURCE). A link to a folder that is already on the way down (a loop) is not
followed. What is not followed is counted (:class:`DiscoveryCounts`): dangling
links, loops, FIFOs, sockets and devices, and sub-folders that cannot be read.

A listing that fails transiently (:func:`storage.transient.is_transient`: an
outage, throttling) raises the original error, which the flow's storage retries
try again; any other failure is :class:`SourceUnreadableError`, a user error.

A name that is not valid UTF-8 is listed with its path escaped
(:func:`storage.uris.escape_path`); the real name travels in the listing's
``fs_path`` column so that the file can still be read.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from memscore.errors import UserError
from memscore.storage.transient import is_transient
from memscore.storage.uris import Location, escape_path, needs_escape

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})

LISTING_SCHEMA = pa.schema(
    [
        pa.field("path", pa.string()),
        pa.field("uri", pa.string()),
        pa.field("size_bytes", pa.int64()),
        pa.field("source_version", pa.string()),
        # The path to read as the filesystem spells it, as bytes; set only where ``uri`` had to be
        # escaped (a name that is not valid UTF-8), else null.
        pa.field("fs_path", pa.binary()),
    ]
)


class SourceUnreadableError(UserError, RuntimeError):
    """SOURCE does not exist or cannot be listed."""


class SourceNotFoundError(SourceUnreadableError):
    """SOURCE does not exist or is not a folder (retrying will not help)."""


NOT_FOLLOWED_KINDS = ("dangling link", "link loop", "fifo", "socket", "device", "other")


@dataclass
class DiscoveryCounts:
    """How many files were seen and kept as images, and what was not followed.

    ``not_followed`` counts entries by kind (:data:`NOT_FOLLOWED_KINDS`);
    ``unreadable_folders`` sub-folders that could not be listed (permissions);
    ``escaped_names`` images whose path is not valid UTF-8 (stored escaped).
    ``examples`` keeps up to three paths (relative to SOURCE) per kind.
    """

    files: int = 0
    images: int = 0
    unreadable_folders: int = 0
    escaped_names: int = 0
    not_followed: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ignored(self) -> int:
        return self.files - self.images

    def note(self, kind: str, path: str) -> None:
        """Count one entry of ``kind`` (a not-followed kind, or ``unreadable folder``)."""
        if kind == "unreadable folder":
            self.unreadable_folders += 1
        else:
            self.not_followed[kind] = self.not_followed.get(kind, 0) + 1
        seen = self.examples.setdefault(kind, [])
        if len(seen) < 3:
            seen.append(escape_path(path))

    def warnings(self) -> list[str]:
        """One line per kind of entry that was not scored, for the run's log."""
        lines = []
        if self.unreadable_folders:
            lines.append(f"{self.unreadable_folders} sub-folder(s) could not be read and were skipped "
                         f"(e.g. {', '.join(self.examples.get('unreadable folder', []))})")
        for kind, n in sorted(self.not_followed.items()):
            lines.append(f"{n} {kind}(s) not followed (e.g. {', '.join(self.examples.get(kind, []))})")
        return lines


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


def _special_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "other"


def iter_local_files(source: Location, counts: DiscoveryCounts) -> Iterator[dict[str, Any]]:
    """Every regular file under a local ``source``, following symbolic links (module docstring).

    Yields dicts like fsspec's ``info`` (``name``, ``size``, ``mtime``, ``type``) with the
    followed file's size and modification time. Loop protection: a folder (by device and
    inode) that is already among the folders above is not entered again.
    """
    root = source.root
    try:
        root_stat = os.stat(root)
    except FileNotFoundError:
        raise SourceNotFoundError(f"source not found: {source.uri}") from None
    if not stat.S_ISDIR(root_stat.st_mode):
        raise SourceNotFoundError(f"source is not a folder: {source.uri}")
    stack: list[tuple[str, frozenset[tuple[int, int]]]] = [(root, frozenset({(root_stat.st_dev, root_stat.st_ino)}))]
    while stack:
        folder, above = stack.pop()
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError as error:
            if folder == root:
                raise SourceUnreadableError(f"cannot list source {source.uri}: {error}") from error
            counts.note("unreadable folder", source.relative(folder))
            continue
        folders = []
        for entry in entries:
            path = f"{folder.rstrip('/')}/{entry.name}"
            try:
                info = entry.stat(follow_symlinks=True)
            except OSError:
                if entry.is_symlink():
                    counts.note("dangling link", source.relative(path))
                else:
                    counts.note("unreadable folder" if entry.is_dir(follow_symlinks=False) else "other",
                                source.relative(path))
                continue
            if stat.S_ISDIR(info.st_mode):
                identity = (info.st_dev, info.st_ino)
                if identity in above:
                    counts.note("link loop", source.relative(path))
                else:
                    folders.append((path, above | {identity}))
            elif stat.S_ISREG(info.st_mode):
                yield {"name": path, "size": info.st_size, "mtime": info.st_mtime, "type": "file"}
            else:
                counts.note(_special_kind(info.st_mode), source.relative(path))
        stack.extend(reversed(folders))


def _iter_files(source: Location, counts: DiscoveryCounts) -> Iterator[dict[str, Any]]:
    """Every file under ``source`` as an fsspec info dict, streamed."""
    if is_s3(source.fs):
        yield from iter_s3_objects(source)
        return
    if source.is_local:
        yield from iter_local_files(source, counts)
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
        for info in _iter_files(source, counts):
            full_path = info["name"]
            counts.files += 1
            name = full_path.rsplit("/", 1)[-1]
            if not is_image_name(name):
                continue
            counts.images += 1
            escaped = needs_escape(full_path)
            counts.escaped_names += escaped
            rows["path"].append(escape_path(source.relative(full_path)))
            rows["uri"].append(escape_path(source.full_uri(full_path)))
            rows["fs_path"].append(full_path.encode("utf-8", "surrogateescape") if escaped else None)
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
        if is_transient(error):  # an outage or throttling: the flow's storage retries try again
            raise
        raise SourceUnreadableError(f"cannot list source {source.uri}: {error}") from error
