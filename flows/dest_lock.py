"""One run at a time per DEST: a Prefect global concurrency limit named after the destination.

A scheduled run and a manual run writing to the same DEST would each score the
same new images (the parts stay correct, compaction keeps one row per image, but
the work is done twice). The ``score-archive`` flow therefore holds one slot of
the global concurrency limit :func:`limit_name` (``memscore-dest-`` + 16 hex
digits of the SHA-256 of the DEST URI) for the whole run; a second run on the
same DEST waits until the first one ends. The limit is created with one slot
the first time a DEST is used; raise it (``prefect gcl update NAME --limit 2``)
or delete it to allow overlapping runs. Seen in the UI under Concurrency.

Only with a Prefect server or Prefect Cloud configured (``PREFECT_API_URL``): a
temporary local API (``memscore score`` without a server) lives as long as its
process and does not expire the leases of killed runs, so there the limit would
only block the run that follows a crash. A run killed on a server frees its slot
when its lease runs out (:data:`LEASE_SECONDS`; renewed while the run lives).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

LEASE_SECONDS = 60  # renewed in the background while the run lives; a killed run's slot frees after this


def limit_name(destination_uri: str) -> str:
    """The global concurrency limit's name for a DEST URI (Prefect names allow no '/')."""
    return "memscore-dest-" + hashlib.sha256(destination_uri.rstrip("/").encode()).hexdigest()[:16]


def ensure_limit(name: str, slots: int = 1) -> None:
    """Create the global concurrency limit ``name`` with ``slots`` slots unless it exists."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
            return
        except ObjectNotFound:
            pass
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=slots))
        except ObjectAlreadyExists:  # another run created it meanwhile
            pass


@contextmanager
def hold_destination(destination_uri: str, logger) -> Iterator[str]:
    """Hold DEST's slot for the body of the ``with`` block; yields the limit's name (None without a server)."""
    from prefect.concurrency.sync import concurrency
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        yield None
        return
    name = limit_name(destination_uri)
    ensure_limit(name)
    logger.info("holding concurrency limit %s for DEST %s (other runs on it wait)", name, destination_uri)
    with concurrency(name, occupy=1, lease_duration=LEASE_SECONDS, strict=True):
        yield name
