"""Checks run before any image is scored: SOURCE listable, DEST writable, the Prefect API reachable.

Each failure raises one error type with a one-line message, so the CLI prints
``memscore: error: ...`` and a deployment run fails at once, without the retries
meant for flaky storage (missing buckets, credentials and endpoints do not heal
by retrying). Used by the ``score-archive`` flow and by ``memscore score``.

On S3 the checks talk to the endpoint through a probe filesystem that tries a
connection twice (:data:`PROBE_BOTOCORE_CONFIG`, and no s3fs retry loop around
it), not s3fs's five times botocore's retries with back-off: an endpoint nobody answers is then one line in well under a
second instead of about ten (the run itself keeps the default retries).
"""

from __future__ import annotations

import os
import uuid

from memscore.errors import UserError
from memscore.storage.uris import Location, open_location
from memscore.tasks.discover import SourceNotFoundError, SourceUnreadableError, is_s3, iter_s3_objects

CREDENTIALS_HINT = ("credentials belong in the worker's environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                    "AWS_PROFILE, an IAM role) or in a Prefect Secret block named by storage_options_secret")


# botocore settings of the probe filesystem (the user's own config_kwargs win over these).
PROBE_BOTOCORE_CONFIG = {"retries": {"total_max_attempts": 2, "mode": "standard"}, "connect_timeout": 10}


def probe_location(location: Location) -> Location:
    """``location`` on a filesystem of its own with few retries, for the checks (S3 only; others as given).

    The user's ``storage_options`` are kept (endpoint, region, credentials, their own
    ``config_kwargs``); only retries and the connect timeout, where the user set none,
    come from :data:`PROBE_BOTOCORE_CONFIG`. Source: botocore's retry modes
    (``total_max_attempts`` counts the first try).
    """
    if not is_s3(location.fs):
        return location
    options = dict(location.storage_options or {})
    config = {**PROBE_BOTOCORE_CONFIG, **dict(options.get("config_kwargs") or {})}
    options["config_kwargs"] = config
    options["skip_instance_cache"] = True  # never hand the probe's settings to the run's cached filesystem
    try:
        probe = open_location(location.uri, options)
    except Exception:  # noqa: BLE001 - the probe is an optimisation: on any trouble, check with the run's own
        return location
    if hasattr(probe.fs, "retries"):
        probe.fs.retries = 1  # s3fs's own loop around botocore's (5 by default): botocore's two tries suffice
    return probe


class DestinationUnwritableError(UserError, RuntimeError):
    """DEST cannot be written (a file in the way, no such bucket, no permission, no credentials)."""


class PrefectApiUnreachableError(UserError, RuntimeError):
    """PREFECT_API_URL is set but nothing answers there."""


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    line = text[0] if text else type(error).__name__
    if "credential" in line.lower() and "NoCredentials" in type(error).__name__:
        line += f" ({CREDENTIALS_HINT})"
    return line


def check_source(location: Location, uri: str) -> None:
    """Raise unless SOURCE is a folder (or prefix) that can be listed.

    Raises:
        SourceNotFoundError: it does not exist or is a file.
        SourceUnreadableError: it cannot be listed (credentials, endpoint, permission).
    """
    location = probe_location(location)
    try:
        if is_s3(location.fs):
            # One ListObjectsV2 call of one key (fs.isdir would list the whole prefix).
            next(iter(iter_s3_objects(location, page_size=1)), None)
            return
        is_folder = location.fs.isdir(location.root)
        exists = is_folder or location.fs.exists(location.root)
    except SourceUnreadableError:
        raise
    except FileNotFoundError as error:
        raise SourceNotFoundError(f"source not found: {uri} ({_one_line(error)})") from None
    except Exception as error:  # noqa: BLE001 - botocore/gcsfs/adlfs raise their own types: one line each
        raise SourceUnreadableError(f"cannot read source {uri}: {_one_line(error)}") from None
    if not is_folder:
        raise SourceNotFoundError(f"source {'is not a folder' if exists else 'not found'}: {uri}")


class OutputInsideSourceError(UserError, ValueError):
    """DEST or the report folder lies inside SOURCE: a rerun would score (or list) its files."""


def _local_path(uri: str) -> str | None:
    """The real path of a local ``uri`` (a path or ``file://``), None for any other scheme."""
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    elif "://" in uri:
        return None
    return os.path.realpath(os.path.expanduser(uri))


def check_outside_source(source: str, outputs: dict[str, str | None]) -> None:
    """Raise :class:`OutputInsideSourceError` (one line) when an output folder lies inside SOURCE.

    ``outputs``: {label: folder}, e.g. ``{"DEST": ..., "--report": ...}``; None entries are
    skipped. Local paths only (links resolved): a report's thumbnails in SOURCE/report/images
    would be scored by the next run. Remote URIs are not compared (no listing, no cost)."""
    root = _local_path(source)
    if root is None:
        return
    for label, uri in outputs.items():
        path = _local_path(uri) if uri else None
        if path is not None and os.path.commonpath([root, path]) == root:
            raise OutputInsideSourceError(f"{label} {uri} is inside SOURCE {source}: the next run would score its "
                                          f"files; write it outside SOURCE")


def check_destination(location: Location, uri: str) -> None:
    """Raise :class:`DestinationUnwritableError` now, before any image is scored, unless DEST can be written.

    Writes and deletes an empty probe object (``.memscore-write-probe-<uuid>``). A local
    folder that does not exist yet is created for the probe and removed again (the first
    part creates it), so a check leaves nothing behind.
    """
    probe_name = f".memscore-write-probe-{uuid.uuid4().hex}"
    location = probe_location(location)
    try:
        if location.is_local:
            created = _missing_folders(location.root)
            os.makedirs(location.root, exist_ok=True)
            probe = os.path.join(location.root, probe_name)
            with open(probe, "wb"):
                pass
            os.remove(probe)
            for folder in created:  # deepest first; one another process filled meanwhile stays
                try:
                    os.rmdir(folder)
                except OSError:
                    break
        else:
            probe = location.join(probe_name)
            location.fs.pipe_file(probe, b"")
            location.fs.rm_file(probe)
    except Exception as error:  # noqa: BLE001 - a file in the way, no bucket, no credentials: one line
        raise DestinationUnwritableError(f"cannot write destination {uri}: {_one_line(error)}") from None


def _missing_folders(path: str) -> list[str]:
    """The folders of ``path`` that do not exist yet, deepest first."""
    missing = []
    path = os.path.abspath(path)
    while path and not os.path.exists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


def check_prefect_api(timeout_s: float = 5.0) -> None:
    """Raise :class:`PrefectApiUnreachableError` if PREFECT_API_URL is set and nothing answers there.

    Any HTTP answer counts as reachable (authentication is Prefect's business);
    only a refused or timed-out connection fails, after ``timeout_s`` seconds
    instead of Prefect's own minute of retries.
    """
    import httpx
    from prefect.context import get_settings_context
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        return
    try:
        httpx.get(url.rstrip("/") + "/health", timeout=timeout_s)
    except httpx.TransportError as error:
        origin = ("the environment" if os.environ.get("PREFECT_API_URL")
                  else f"Prefect profile '{get_settings_context().profile.name}'")
        raise PrefectApiUnreachableError(
            f"the Prefect API at {url} (PREFECT_API_URL, from {origin}) cannot be reached "
            f"({type(error).__name__}); start it (prefect server start) or run without a server: "
            "unset PREFECT_API_URL, or `prefect config unset PREFECT_API_URL` if `prefect config set` wrote it "
            "into the profile"
        ) from None
