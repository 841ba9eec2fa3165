"""Writing a file whole or not at all, locally or in a bucket.

Locally a file is written under a hidden temporary name (``.<name>.<random>.inprogress``)
in its target folder, flushed to disk (fsync) and renamed over the target, so a
reader or a run killed at any moment sees the old file or the new one, never half
of one. On object stores the finished bytes go up in one PUT, which becomes
visible only when complete. Parquet parts (:mod:`memscore.storage.parts`) and a
training run's folder (:mod:`memscore.tasks.train_run`) are written this way;
every local rename of theirs goes through :func:`rename`.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from memscore.storage.uris import Location

TEMPORARY_SUFFIX = ".inprogress"


def rename(source: str, target: str) -> None:
    """Rename a local file over ``target`` (atomic on one filesystem)."""
    os.replace(source, target)


@contextmanager
def local_temporary(location: Location, name: str) -> Iterator[str]:
    """A temporary path beside ``location``'s ``name``; on a clean exit the file there is
    fsynced and renamed to ``name``; on an error it is deleted. Local locations only.

    The temporary gets the permissions a plain ``open()`` would (0o666 less the umask),
    not mkstemp's 0o600, so the finished file is readable as any other output."""
    target = location.join(name)
    folder = os.path.dirname(target)
    os.makedirs(folder, exist_ok=True)
    # .<name>.<random>.inprogress: hidden from readers, and names what it will become
    fd, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=TEMPORARY_SUFFIX, dir=folder)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    try:
        yield temporary
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        rename(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def write_bytes(location: Location, name: str, data: bytes) -> None:
    """Write ``data`` to ``location/name`` whole or not at all."""
    if location.is_local:
        with local_temporary(location, name) as temporary, open(temporary, "wb") as handle:
            handle.write(data)
    else:
        location.fs.pipe_file(location.join(name), data)


def write_with(location: Location, name: str, write: Callable[[str], None], to_bytes: Callable[[], bytes]) -> None:
    """Write ``location/name`` whole or not at all: locally ``write(temporary_path)`` streams
    straight to disk (no in-memory copy of a large file); elsewhere ``to_bytes()`` gives the
    bytes for the one PUT."""
    if location.is_local:
        with local_temporary(location, name) as temporary:
            write(temporary)
    else:
        location.fs.pipe_file(location.join(name), to_bytes())


def remove_temporaries(location: Location, folders: tuple[str, ...] = ("",), older_than_s: float | None = None) -> int:
    """Delete the hidden ``*.inprogress`` files a killed writer left in these folders of a
    local location (with ``older_than_s``: only those last modified more than that many seconds
    ago, since younger ones may belong to a writer still at work); return how many. Buckets have none (one PUT per file)."""
    if not location.is_local:
        return 0
    removed = 0
    now = time.time()
    for folder in folders:
        try:
            entries = list(os.scandir(location.join(folder)))
        except OSError:
            continue
        for entry in entries:
            if not (entry.name.startswith(".") and entry.name.endswith(TEMPORARY_SUFFIX)):
                continue
            try:
                if older_than_s is None or now - entry.stat(follow_symlinks=False).st_mtime > older_than_s:
                    os.unlink(entry.path)
                    removed += 1
            except OSError:
                pass  # gone already, or not ours to remove
    return removed
