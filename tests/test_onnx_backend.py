"""``--backend onnxruntime``: the model exported to ONNX and run by ONNX Runtime on the CPU.

What a user sees: the same scores and features as the torch backend (float32, within
1e-6 for scores), a one-line error for combinations that cannot run (CUDA, fp16,
--compile, packages missing), and an export that happens once per model and
weights (cached on disk). Parity with the official package through this backend is
in tests/test_score_parity.py.
"""

from __future__ import annotations

import json
import tempfile

import numpy as np
import pytest
import torch

from memscore.models import onnx_runtime
from memscore.models.registry import load_model
from memscore.models.speed import SpeedSettings, check_backend, default_speed, prepare

CPU = torch.device("cpu")


def photo_batch(size: int = 227) -> torch.Tensor:
    from conftest import photo
    from memscore.models.preprocess import resmem_transform

    names = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field")
    return torch.stack([resmem_transform(photo(name, size=None)) for name in names])


def test_backend_settings_are_checked():
    assert default_speed(CPU, SpeedSettings(backend="onnxruntime")).channels_last is False
    assert check_backend("ONNXRuntime", CPU) == "onnxruntime"
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'"):
        check_backend("tensorrt", CPU)
    with pytest.raises(ValueError, match="runs on the CPU"):
        check_backend("onnxruntime", torch.device("cuda"))
    with pytest.raises(ValueError, match="float32"):
        check_backend("onnxruntime", CPU, precision="bf16")
    with pytest.raises(ValueError, match="--compile"):
        check_backend("onnxruntime", CPU, compile=True)


def test_missing_packages_say_what_to_install(monkeypatch, tmp_path, capsys):
    import importlib.util

    from conftest import photo

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(onnx_runtime.BackendUnavailableError, match=r"pip install 'memscore\[onnx\]'"):
        check_backend("onnxruntime", CPU)  # the flow checks this before any shard (deployments too)
    photo("coffee").save(tmp_path / "coffee.jpg")
    code, _, err = run_cli(capsys, "score", str(tmp_path), "--out", str(tmp_path / "out"), "--device", "cpu",
                           "--backend", "onnxruntime")
    assert code == 1 and err.strip() == (
        "memscore: error: --backend onnxruntime needs onnxruntime: pip install 'memscore[onnx]'")
    assert check_backend("torch", CPU) == "torch"  # the default needs none of it


def test_resmem_on_onnxruntime_matches_torch_and_is_exported_once(onnx_cache, monkeypatch):
    pixels = photo_batch()
    layers = ["resnet152", "fc11", "alexnet"]
    reference = prepare(load_model("resmem", None, CPU), SpeedSettings())(pixels, layers)

    loaded = load_model("resmem", None, CPU)
    runner = prepare(loaded, SpeedSettings(backend="onnxruntime"))
    scores, feats = runner(pixels, layers)
    assert scores.dtype == np.float32 and scores.shape == (5,)
    assert np.abs(scores - reference[0]).max() <= 1e-6
    for name in layers:
        assert feats[name].shape == reference[1][name].shape
        np.testing.assert_allclose(feats[name], reference[1][name], rtol=1e-4, atol=1e-4)
    # a batch of one, and a batch asking for no features: the batch dimension is dynamic
    one, none = runner(pixels[:1], [])
    assert one.shape == (1,) and none == {} and abs(one[0] - reference[0][0]) <= 1e-6

    cached = onnx_runtime.exported_path(loaded, folded=True)
    assert cached.is_file() and cached.parent == onnx_cache / "onnx"
    assert not list(cached.parent.glob(".*.tmp"))  # written under a temporary name, then renamed

    def no_export(*args, **kwargs):
        raise AssertionError("exported again although the cache has it")

    monkeypatch.setattr(onnx_runtime, "export_onnx", no_export)
    again = prepare(load_model("resmem", None, CPU), SpeedSettings(backend="onnxruntime"))
    assert np.array_equal(again(pixels, [])[0], scores)


def test_other_weights_get_their_own_export(onnx_cache, tmp_path):
    """The cache is keyed by the weights' digest: a retrained model is never run with stale weights."""
    from memscore.models.memnet import MemNetBaseline

    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        path = tmp_path / f"memnet-{seed}.pt"
        torch.save({"model": MemNetBaseline().state_dict(), "memscore": {"model": "memnet-baseline"}}, path)
        paths.append(path)
    pixels = photo_batch()
    exported, results = set(), []
    for path in paths:
        loaded = load_model("memnet-baseline", str(path), CPU)
        reference = prepare(load_model("memnet-baseline", str(path), CPU), SpeedSettings())(pixels, ["fc7"])
        scores, feats = prepare(loaded, SpeedSettings(backend="onnxruntime"))(pixels, ["fc7"])
        assert np.abs(scores - reference[0]).max() <= 1e-6
        np.testing.assert_allclose(feats["fc7"], reference[1]["fc7"], rtol=1e-5, atol=1e-5)
        exported.add(onnx_runtime.exported_path(loaded, folded=True))
        results.append(scores)
    assert len(exported) == 2 and all(p.is_file() for p in exported)
    assert not np.allclose(results[0], results[1])


def test_an_unwritable_cache_still_scores(tmp_path, monkeypatch):
    """A cache folder that cannot be written (read-only home, a file in the way) costs a warning, not the run."""
    from memscore.models.memnet import MemNetBaseline

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("MEMSCORE_CACHE_DIR", str(blocker / "cache"))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    torch.manual_seed(0)
    weights = tmp_path / "memnet.pt"
    torch.save({"model": MemNetBaseline().state_dict(), "memscore": {"model": "memnet-baseline"}}, weights)
    pixels = photo_batch()
    reference = prepare(load_model("memnet-baseline", str(weights), CPU), SpeedSettings())(pixels, [])[0]
    with pytest.warns(RuntimeWarning, match="cannot write the ONNX cache"):
        runner = prepare(load_model("memnet-baseline", str(weights), CPU), SpeedSettings(backend="onnxruntime"))
    assert np.abs(runner(pixels, [])[0] - reference).max() <= 1e-6
    assert list(scratch.iterdir()) == []  # the one-off export is gone


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    from memscore.flows.cli import main

    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("extra, message", [
    (["--precision", "fp16"], "--backend onnxruntime runs in float32"),
    (["--compile"], "--compile is for the torch backend"),
])
def test_cli_refuses_what_the_backend_cannot_do(tmp_path, capsys, extra, message):
    from conftest import photo

    photo("coffee").save(tmp_path / "coffee.jpg")
    code, _, err = run_cli(capsys, "score", str(tmp_path), "--out", str(tmp_path / "out"), "--device", "cpu",
                           "--backend", "onnxruntime", *extra)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1, err
    assert lines[0].startswith("memscore: error: ") and message in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_memscore_score_with_onnxruntime_end_to_end(tmp_path, capsys, onnx_cache, prefect_api):
    """`memscore score --backend onnxruntime` writes the same Parquet as the torch backend."""
    import pyarrow.parquet as pq

    from conftest import photo

    archive = tmp_path / "archive"
    archive.mkdir()
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        photo(name).save(archive / f"{name}.jpg")
    (archive / "broken.jpg").write_bytes(b"not a jpeg")
    tables = {}
    for backend in ("torch", "onnxruntime"):
        code, out, err = run_cli(capsys, "score", str(archive), "--out", str(tmp_path / backend), "--device", "cpu",
                                 "--backend", backend, "--no-progress", "--json")
        assert code == 0, err[-3000:]
        summary = json.loads(out)
        assert (summary["scored"], summary["failed"], summary["backend"]) == (4, 1, backend)
        tables[backend] = pq.read_table(tmp_path / backend / "scores").sort_by("path").to_pydict()
    torch_rows, onnx_rows = tables["torch"], tables["onnxruntime"]
    assert onnx_rows["path"] == torch_rows["path"]
    assert max(abs(a - b) for a, b in zip(onnx_rows["score"], torch_rows["score"])) <= 1e-6
    np.testing.assert_allclose(np.array(onnx_rows["feat_fc11"]), np.array(torch_rows["feat_fc11"]), atol=1e-5)
