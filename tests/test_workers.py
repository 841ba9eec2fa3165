"""DataLoader workers see the environment of the run that starts them (credentials)."""

from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader, Dataset

from tasks.decode import worker_context, worker_setup


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
