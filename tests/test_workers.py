"""DataLoader workers see the environment of the run that starts them (credentials)."""

from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader, Dataset

from memscore.tasks.decode import worker_context, worker_setup


class EnvironmentProbe(Dataset):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> str:
        return os.environ.get("MEMSCORE_PROBE", "<unset>")


def read_in_worker() -> str:
    loader = DataLoader(EnvironmentProbe(), batch_size=None, num_workers=1,
                        multiprocessing_context=worker_context(), worker_init_fn=worker_setup())
    return next(iter(loader))


def test_workers_get_the_current_environment_even_from_an_old_forkserver(monkeypatch):
    monkeypatch.delenv("MEMSCORE_PROBE", raising=False)
    assert read_in_worker() == "<unset>"  # starts the forkserver (once per process)
    monkeypatch.setenv("MEMSCORE_PROBE", "secret-from-this-run")
    assert read_in_worker() == "secret-from-this-run"


def test_the_forkserver_starts_before_the_first_loader_and_serves_it(monkeypatch):
    """start_worker_server runs the forkserver's torch import beside the model load."""
    import multiprocessing.forkserver as forkserver

    from memscore.tasks.decode import start_worker_server

    monkeypatch.delenv("MEMSCORE_WORKER_START", raising=False)
    server = forkserver._forkserver
    start_worker_server(0)  # no workers: nothing to start
    before = server._forkserver_pid
    start_worker_server(1)
    pid = server._forkserver_pid
    assert pid is not None and os.waitpid(pid, os.WNOHANG) == (0, 0)  # running, not waited for
    assert before in (None, pid)  # a forkserver already running is reused
    monkeypatch.setenv("MEMSCORE_PROBE", "after-early-start")
    assert read_in_worker() == "after-early-start"
    assert server._forkserver_pid == pid  # the loader used the server started early
