"""Processes a ``memscore score`` run started end with it, even when it is SIGKILLed.

A run starts processes of its own: Prefect's temporary local API (a uvicorn
subprocess, flow path only), the multiprocessing forkserver and resource tracker,
and the DataLoader decode workers forked from that forkserver. They stop when the
run ends normally; a SIGKILLed run (OOM killer, ``kill -9``, a batch scheduler)
runs no clean-up, and before this module they ran on for good.

:func:`guard_children` marks this process's environment with a token unique to the
run (``MEMSCORE_RUN_TOKEN``; every child inherits the environment it was started
with) and starts a small guard process that waits on a pipe only this process
holds. When the run is gone, however it ended, the pipe reads end-of-file and the
guard stops every process whose environment (``/proc/<pid>/environ``) carries the
token: SIGTERM, then SIGKILL after a grace period. It then exits itself. Linux
only (``/proc``); elsewhere it does nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

TOKEN_VARIABLE = "MEMSCORE_RUN_TOKEN"

#: Run by the guard (``python -c``): argv[1] is the marker ``MEMSCORE_RUN_TOKEN=<token>``,
#: argv[2] the grace period in seconds between SIGTERM and SIGKILL.
_GUARD = r"""
import os, signal, sys, time
for name in ("SIGINT", "SIGHUP", "SIGTERM", "SIGQUIT"):
    signal.signal(getattr(signal, name), signal.SIG_IGN)  # outlive the run's own end: Ctrl-C, a closed terminal
marker, grace, me = sys.argv[1].encode(), float(sys.argv[2]), os.getpid()
try:
    while sys.stdin.buffer.read(65536):
        pass
except OSError:
    pass

def marked():
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != me:
            try:
                with open(f"/proc/{name}/environ", "rb") as handle:
                    if marker in handle.read().split(b"\0"):
                        found.append(int(name))
            except OSError:
                pass
    return found

for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
    for pid in marked():
        try:
            os.kill(pid, sig)
        except OSError:
            pass
    deadline = time.monotonic() + wait
    while marked() and time.monotonic() < deadline:
        time.sleep(0.1)
"""

_guard: subprocess.Popen | None = None


def guard_children(grace_s: float = 5.0) -> str | None:
    """Mark this run's children and start the guard that stops them when this process ends.

    Call once, early, before any child process starts (children started before keep no
    mark). Returns the run's token, or None where there is no ``/proc`` (not Linux).
    Idempotent within a process. ``grace_s``: seconds between SIGTERM and SIGKILL.
    """
    global _guard
    if _guard is not None:
        return os.environ[TOKEN_VARIABLE]
    if not os.path.isdir("/proc/self"):
        return None
    token = uuid.uuid4().hex
    os.environ[TOKEN_VARIABLE] = token
    # The pipe's write end stays in this process only (not inheritable; forkserver and
    # spawn children get only the descriptors they are passed), so EOF means "run gone".
    _guard = subprocess.Popen(
        [sys.executable, "-c", _GUARD, f"{TOKEN_VARIABLE}={token}", str(grace_s)],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True,
        env={key: value for key, value in os.environ.items() if key != TOKEN_VARIABLE},
    )
    return token
