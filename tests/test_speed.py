"""The speed settings (models/speed.py) keep results within their documented tolerances.

Tolerances (docs/performance.md): channels_last and BatchNorm folding keep
float32 scores within 1e-6 of the plain module (measured: ~2e-7); bf16 autocast
within 2e-2 (measured: ~5e-3). No timings are asserted here.
"""

from __future__ import annotations

import pyarrow as pa
import pytest
import torch
from torchvision.models import resnet18

from memscore.models.preprocess import resmem_transform
from memscore.models.registry import load_model
from memscore.models.speed import SpeedSettings, default_speed, fold_batchnorm, prepare, resolve_precision

CPU = torch.device("cpu")


def test_defaults_per_device():
    cpu = default_speed(CPU)
    assert (cpu.precision, cpu.channels_last, cpu.fold_batchnorm, cpu.compile) == ("fp32", True, True, False)
    assert resolve_precision("auto", torch.device("mps")) == "fp32"
    assert resolve_precision("FP16", CPU) == "fp16"
    assert default_speed(CPU, SpeedSettings(channels_last=False)).channels_last is False
    with pytest.raises(ValueError):
        resolve_precision("int8", CPU)


def test_fold_batchnorm_matches_unfolded_resnet():
    torch.manual_seed(0)
    model = resnet18(weights=None).eval()
    for module in model.modules():  # non-trivial running statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        before = model(x)
        folded = fold_batchnorm(model)
        after = model(x)
    assert folded == 20  # stem + 8 blocks x 2 + 3 downsamples
    assert fold_batchnorm(model) == 0  # idempotent
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert torch.allclose(before, after, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def batch(photos):
    return torch.stack([resmem_transform(photos[name]) for name in ("astronaut", "coffee", "rocket")])


@pytest.fixture(scope="module")
def plain(batch):
    runner = prepare(load_model("resmem", None, CPU), SpeedSettings(precision="fp32", channels_last=False, fold_batchnorm=False))
    return runner(batch, ("resnet152", "fc11"))


def test_channels_last_and_folding_keep_float32_scores(batch, plain):
    runner = prepare(load_model("resmem", None, CPU))  # the CPU defaults: channels_last + folding
    assert runner.speed.channels_last and runner.speed.fold_batchnorm and runner.speed.precision == "fp32"
    scores, feats = runner(batch, ("resnet152", "fc11"))
    assert abs(scores - plain[0]).max() <= 1e-6
    for name in ("resnet152", "fc11"):
        assert feats[name].shape == plain[1][name].shape
        assert abs(feats[name] - plain[1][name]).max() <= 1e-4 * max(1.0, abs(plain[1][name]).max())


def test_bf16_autocast_within_tolerance(batch, plain):
    runner = prepare(load_model("resmem", None, CPU), SpeedSettings(precision="bf16"))
    scores, _ = runner(batch[:1], ())  # bf16 is emulated (slow) on CPUs without native support
    assert scores.dtype.name == "float32"
    assert abs(scores - plain[0][:1]).max() <= 2e-2


@pytest.mark.parametrize("workers", [0, 1])
def test_score_images_speed_fields(tmp_path, photos, workers):
    """ScoreSettings' speed fields reach the model; forkserver-started workers deliver the same scores."""
    from memscore.storage.uris import open_location
    from memscore.tasks.discover import iter_listing
    from memscore.tasks.plan import plan_shards
    from memscore.tasks.score import ScoreSettings, get_model, score_images

    for name in ("astronaut", "coffee"):
        photos[name].save(tmp_path / f"{name}.jpg", "JPEG")
    source = open_location(str(tmp_path))
    empty = pa.table({"path": pa.array([], pa.string()), "source_version": pa.array([], pa.string())})
    shard = plan_shards(iter_listing(source), empty, 64).shards[0]
    model = get_model("resmem", None, CPU)
    fast = score_images(shard, source, model, ScoreSettings(2, workers, ("fc11",), None, "t"))
    plain = score_images(shard, source, model,
                         ScoreSettings(2, 0, ("fc11",), None, "t", precision="fp32", channels_last=False))
    assert fast.scores.num_rows == plain.scores.num_rows == 2 and fast.errors.num_rows == 0
    a, b = fast.scores["score"].to_numpy(), plain.scores["score"].to_numpy()
    assert abs(a - b).max() <= 1e-6


def test_worker_start_method_override(monkeypatch):
    from memscore.tasks.decode import worker_context

    monkeypatch.setenv("MEMSCORE_WORKER_START", "spawn")
    assert worker_context().get_start_method() == "spawn"
    monkeypatch.setenv("MEMSCORE_WORKER_START", "fork-please")
    with pytest.raises(ValueError):
        worker_context()
    monkeypatch.delenv("MEMSCORE_WORKER_START")
    assert worker_context().get_start_method() in ("forkserver", "spawn")
