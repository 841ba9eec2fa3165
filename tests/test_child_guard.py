"""A SIGKILLed ``memscore score`` leaves no process behind (tasks/child_guard.py).

The run is killed alone (``kill -9`` of its pid, not of its process group), as the OOM
killer or a user would; every process in its process group (the run starts in a new
session, so the group is exactly what it started) must be gone within a bounded time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")


def group_members(pgid: int) -> dict[int, str]:
    """Live (non-zombie) processes of process group ``pgid``: pid -> command line, from /proc."""
    members = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
            command = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            members[int(name)] = command
    return members


@pytest.mark.slow
def test_a_sigkilled_flow_run_leaves_no_prefect_server_or_decode_worker(tmp_path, photos):
    source, dest = tmp_path / "archive", tmp_path / "out"
    source.mkdir()
    for i in range(12):
        photos["coffee"].rotate(i * 7).save(source / f"img{i:02d}.jpg", "JPEG")
    command = [sys.executable, "-m", "memscore.flows.cli", "score", str(source), "--out", str(dest), "--device", "cpu",
               "--prefect", "--shard-size", "2", "--batch-size", "2", "--workers", "2", "--no-progress"]
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_API")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not list((dest / "scores").glob("*.parquet")):
            assert process.poll() is None, "the run ended before it could be killed"
            time.sleep(0.2)
        started = group_members(process.pid)
        # What the run had started when killed: the temporary Prefect API and the decode workers' forkserver.
        assert any("uvicorn" in c and "prefect.server" in c for c in started.values()), started
        assert any("multiprocessing.forkserver" in c for c in started.values()), started
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        deadline = time.monotonic() + 30
        left = group_members(process.pid)
        while left and time.monotonic() < deadline:
            time.sleep(0.5)
            left = group_members(process.pid)
        assert not left, f"still running 30 s after the run was SIGKILLed: {left}"
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if process.poll() is None:
            process.wait(timeout=30)
