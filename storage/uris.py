"""fsspec URIs: local folders, file://, memory://, s3://, gs://, az:// alike.

A location is opened once into an (filesystem, root path) pair with
:func:`open_location`; everything else joins paths on that filesystem.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem


@dataclass
class Location:
    """A folder on some filesystem: ``fs`` plus the root path as ``fs`` spells it."""

    fs: fsspec.AbstractFileSystem
    root: str
    uri: str
    storage_options: dict[str, Any] = field(default_factory=dict)

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def join(self, *parts: str) -> str:
        """Path (as ``fs`` spells it) of ``parts`` under the root."""
        return "/".join([self.root.rstrip("/"), *(p.strip("/") for p in parts if p)])

    def full_uri(self, path: str) -> str:
        """A URI for ``path`` that any fsspec-aware reader understands."""
        return self.fs.unstrip_protocol(path)

    def relative(self, path: str) -> str:
        """``path`` relative to the root, '/'-separated."""
        root = self.root.rstrip("/") + "/"
        norm = path.replace(os.sep, "/") if self.is_local else path
        return norm[len(root):] if norm.startswith(root) else norm


_ESCAPED_BYTE = re.compile(r"\\x([0-9a-f]{2})")


def escape_path(path: str) -> str:
    """``path`` as stored in DEST: unchanged when it is valid UTF-8; otherwise (a file name in
    another encoding, e.g. Latin-1 from an old ZIP, which Python lists with surrogate escapes)
    every backslash becomes ``\\x5c`` and every byte that is not part of valid UTF-8 becomes
    ``\\xNN`` (two lower-case hex digits). :func:`unescape_path` reverses it."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        raw = path.encode("utf-8", "surrogateescape")
        return raw.replace(b"\\", b"\\x5c").decode("utf-8", "backslashreplace")


def needs_escape(path: str) -> bool:
    """True when ``path`` is not valid UTF-8 (holds surrogate escapes) and :func:`escape_path` changes it."""
    try:
        path.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def unescape_path(stored: str) -> bytes:
    """The file name bytes of a path that :func:`escape_path` escaped (``os.fsdecode`` of the
    result opens the file). Use it on paths that hold ``\\x``: a valid UTF-8 name with a literal
    ``\\xNN`` in it is stored unchanged and would be changed by this."""
    out = bytearray()
    position = 0
    for match in _ESCAPED_BYTE.finditer(stored):
        out += stored[position:match.start()].encode("utf-8")
        out.append(int(match.group(1), 16))
        position = match.end()
    out += stored[position:].encode("utf-8")
    return bytes(out)


def open_location(uri: str, storage_options: dict[str, Any] | None = None) -> Location:
    """Open a local path or fsspec URI as a :class:`Location`."""
    options = dict(storage_options or {})
    if "://" not in uri:
        uri = os.path.abspath(os.path.expanduser(uri))
    fs, root = fsspec.core.url_to_fs(uri, **options)
    if isinstance(fs, LocalFileSystem):
        root = root.replace(os.sep, "/")
    return Location(fs=fs, root=root.rstrip("/") or "/", uri=uri, storage_options=options)


def local_copy(uri: str, folder: str, storage_options: dict | None = None) -> str:
    """A local path for ``uri``: a local path or ``file://`` URI as it is; a file or folder in a
    bucket copied into ``folder`` under its own name (the human data readers read local files
    and tell formats by the file name)."""
    if "://" not in uri:
        return uri
    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    if "file" in protocols or "local" in protocols:
        return path
    target = os.path.join(folder, path.rstrip("/").rsplit("/", 1)[-1] or "human")
    if not fs.exists(path):
        raise FileNotFoundError(f"not found: {uri}")
    if fs.isdir(path):
        fs.get(path.rstrip("/") + "/", target + "/", recursive=True)
    else:
        fs.get_file(path, target)
    return target
