"""AiM memory (issue 18): the layout against the post's Keras rule written in NumPy, the wrapped
ResNet against torchvision's own, memory shapes at every block, parameter counts by hand from
layer shapes, save/load, and (slow) memscore train -> memscore score (torch and ONNX Runtime)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torchvision.models as tvm
from PIL import Image

from memscore.models.aim import AiMResNet, MemorabilityResNet, layout_memory
from memscore.models.registry import build_with_weights, get_model_spec
from memscore.models.weights import local_weights


def post_reshape(memory_nhwc: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """The post's memory_reshape_block in NumPy (Keras is channels-last): returns [rows, cols, k]."""
    total = memory_nhwc.size
    sq = math.isqrt(total - 1) + 1  # smallest square holding the memory (the post's find_closest_perfect_square)
    if rows > sq:
        flat = np.pad(memory_nhwc.reshape(-1), (sq * sq - total) // 2)
        square = flat.reshape(sq, sq, 1)
        pad = (rows - sq) // 2
        return np.pad(square, ((pad, pad), (pad, pad), (0, 0)))
    assert rows * cols < total
    return memory_nhwc.reshape(rows, cols, total // (rows * cols))


@pytest.mark.parametrize("shape, rows", [((1024, 7, 7), 56), ((1024, 7, 7), 7), ((16, 2, 2), 2), ((4, 2, 2), 8),
                                         ((1024, 7, 7), 448)])
def test_layout_is_the_posts_reshape_and_padding(shape, rows):
    memory = torch.randn(1, *shape)
    expected = post_reshape(memory[0].permute(1, 2, 0).numpy(), rows, rows).transpose(2, 0, 1)
    got = layout_memory(memory, rows, rows)[0].numpy()
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


def test_layout_when_the_post_cannot_divide_pads_the_flat_memory_at_the_end():
    memory = torch.arange(1.0, 17.0).view(1, 4, 2, 2)  # 16 floats on a 3x3 map: ceil(16/9) = 2 channels
    flat = np.concatenate([memory[0].permute(1, 2, 0).reshape(-1).numpy(), np.zeros(2)])
    np.testing.assert_array_equal(layout_memory(memory, 3, 3)[0].numpy(), flat.reshape(3, 3, 2).transpose(2, 0, 1))
    # a long thin map with more pixels than the memory has floats: filled row by row
    np.testing.assert_array_equal(layout_memory(memory, 2, 10)[0, 0].numpy().reshape(-1),
                                  np.concatenate([memory[0].permute(1, 2, 0).reshape(-1).numpy(), np.zeros(4)]))


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_wrapped_resnet_starts_as_torchvision_computes_it(arch):
    """Memory channels of the first convolutions start at zero: the output is torchvision's own."""
    torch.manual_seed(0)
    reference = getattr(tvm, arch)(num_classes=5).eval()
    torch.manual_seed(0)
    wrapped = AiMResNet(getattr(tvm, arch)(num_classes=5), (32, 7, 7), input_size=64).eval()
    torch.manual_seed(0)
    plain = AiMResNet(getattr(tvm, arch)(num_classes=5), None, input_size=64).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference(x)
        assert torch.equal(plain(x), expected)
        torch.testing.assert_close(wrapped(x), expected, rtol=1e-5, atol=1e-5)  # the zero channels change the summation order


def test_memory_shapes_at_every_block_forward_and_backward():
    torch.manual_seed(0)
    model = AiMResNet(tvm.resnet18(num_classes=3), (64, 7, 7), input_size=112, memory_weight_init="kaiming")
    seen, memories = [], []
    blocks = [block for stage in ("layer1", "layer2", "layer3", "layer4") for block in getattr(model, stage)]
    for block in blocks:
        block.conv1.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    for update in model.memory_update:
        update.register_forward_hook(lambda m, args, out: memories.append(tuple(out.shape)))
    out = model(torch.rand(2, 3, 112, 112))
    # 112 px: maps 28, 28, 28 (layer2.0 input), 14, 14, 7, 7, 4; 64*7*7 = 3136 floats -> ceil(3136 / pixels) channels
    maps = [28, 28, 28, 14, 14, 7, 7, 4]
    widths = [64, 64, 64, 128, 128, 256, 256, 512]
    k = [math.ceil(3136 / (m * m)) for m in maps]
    assert k == [4, 4, 4, 16, 16, 64, 64, 196]
    assert seen == [(2, w + c, m, m) for w, c, m in zip(widths, k, maps)]
    assert memories == [(2, 64, 7, 7)] * 4
    out.square().mean().backward()
    assert model.memory_init.weight.grad.abs().sum() > 0
    for update in model.memory_update:
        assert update.write.weight.grad.abs().sum() > 0
    for block, width in zip(blocks, widths):
        assert block.conv1.weight.grad[:, width:].abs().sum() > 0  # the memory channels learn


def test_zero_initialised_memory_weights_get_gradients_and_any_input_size_works():
    torch.manual_seed(0)
    model = MemorabilityResNet(memory_shape=(64, 7, 7), input_size=227)
    score, feats = model.forward_features(torch.rand(3, 3, 50, 70), ("pool", "memory"))
    assert score.shape == (3,) and feats["pool"].shape == (3, 512) and feats["memory"].shape == (3, 64 * 49)
    score.sum().backward()
    assert model.features.layer4[1].conv1.weight.grad[:, 512:].abs().sum() > 0
    model.eval()
    for size in ((32, 32), (227, 227), (96, 64)):
        with torch.no_grad():
            assert torch.isfinite(model(torch.rand(1, 3, *size))).all()


def update_block_params(in_channels: int, memory_channels: int) -> int:
    """Three 3x3 convs (16, 16, 32 filters, with bias), three BatchNorms (weight, bias), a 1x1 conv to C."""
    return (in_channels * 9 * 16 + 16) + 2 * 16 + (16 * 9 * 16 + 16) + 2 * 16 + (16 * 9 * 32 + 32) + 2 * 32 \
        + (32 * memory_channels + memory_channels)


def test_parameter_overhead_resnet50_with_the_posts_memory_by_hand():
    """ResNet-50 (120 classes, Stanford Dogs) at 224 px with 7x7x1024 memory; the post claims 23.8M -> 24.1M."""
    with torch.device("meta"):
        base = sum(p.numel() for p in tvm.resnet50(num_classes=120).parameters())
        aim = sum(p.numel() for p in AiMResNet(tvm.resnet50(num_classes=120), (1024, 7, 7), 224).parameters())
    assert base == 23_508_032 + 2048 * 120 + 120  # torchvision's ResNet-50 trunk + the 120-class head
    # blocks' first convolutions are 1x1 with 64/128/256/512 filters; maps 56 (layer1, layer2.0), 28, 14, 7
    k = {56: 16, 28: 64, 14: 256, 7: 1024}  # 50,176 / pixels
    first_convs = 3 * 64 * k[56] + 128 * k[56] + 3 * 128 * k[28] + 256 * k[28] + 5 * 256 * k[14] + 512 * k[14] \
        + 2 * 512 * k[7]
    updates = (update_block_params(256 + k[56], 1024) + update_block_params(512 + k[28], 1024)
               + update_block_params(1024 + k[14], 1024) + update_block_params(2048 + k[7], 1024))
    initial = 1024 * 1024 + 1024
    assert aim - base == first_convs + updates + initial == 3_515_392
    assert aim == 27_269_304  # not the post's 24.1M (see docs/aim.md)


def test_registered_variants_and_their_overhead_by_hand():
    aim, plain = get_model_spec("aim-resnet18"), get_model_spec("resnet18-nomem")
    # 227 px: maps 57 (layer1, layer2.0), 29, 15, 8; 64*7*7 = 3136 floats -> 1, 4, 14, 49 channels; 3x3 first convs
    k = {57: 1, 29: 4, 15: 14, 8: 49}
    first_convs = 9 * (2 * 64 * k[57] + 128 * k[57] + 128 * k[29] + 256 * k[29] + 256 * k[15] + 512 * k[15] + 512 * k[8])
    updates = sum(update_block_params(c + k[m], 64) for c, m in ((64, 57), (128, 29), (256, 15), (512, 8)))
    overhead = first_convs + updates + 64 * 64 + 64
    assert plain.size()[0] == 11_176_512 + 513  # torchvision's ResNet-18 trunk and a 512 -> 1 head
    assert aim.size()[0] - plain.size()[0] == overhead == 527_744
    assert "+527,744 parameters" in aim.description
    resmem, resmem_aim = get_model_spec("resmem"), get_model_spec("resmem-retrain-aim")
    assert f"+{resmem_aim.size()[0] - resmem.size()[0]:,} parameters" in resmem_aim.description


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = MemorabilityResNet(memory_shape=(64, 7, 7))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.rand(2, 3, 64, 64)).sum().backward()
    optimizer.step()  # the memory channels are no longer zero
    model.eval()
    path = tmp_path / "aim.pt"
    torch.save({"model": model.state_dict(), "memscore": {"model": "aim-resnet18"}}, path)
    loaded = build_with_weights(get_model_spec("aim-resnet18"), local_weights(path)).eval()
    assert torch.equal(loaded.features.memory_input, model.features.memory_input)
    x = torch.rand(2, 3, 80, 80)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    with pytest.raises(Exception, match="do not fit|aim-resnet18"):
        build_with_weights(get_model_spec("resnet18-nomem"), local_weights(path))


@pytest.mark.slow
def test_resmem_aim_starts_as_resmem_from_its_weights():
    from memscore.models.aim import initial_resmem_aim
    from memscore.models.resmem import ResMem

    torch.manual_seed(1)
    resmem = ResMem().eval()
    aim = initial_resmem_aim(resmem.state_dict()).eval()
    assert aim.features.layer4[2].conv1.weight.shape[1] == 2048 + 784  # 50,176 floats on the 8x8 map
    x = torch.rand(1, 3, 227, 227)
    with torch.no_grad():
        torch.testing.assert_close(aim(x), resmem(x), rtol=1e-5, atol=1e-5)


def make_images(root: Path, n: int = 12) -> tuple[Path, Path]:
    skdata = pytest.importorskip("skimage.data")
    photos = [skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.rocket()]
    folder = root / "images"
    folder.mkdir(parents=True)
    lines = ["image,score"]
    for i in range(n):
        Image.fromarray(photos[i % 4]).resize((64, 64)).save(folder / f"img{i:02d}.jpg", quality=90)
        lines.append(f"img{i:02d}.jpg,{0.3 + 0.04 * i:.3f}")
    (root / "human.csv").write_text("\n".join(lines) + "\n")
    return root / "human.csv", folder


@pytest.mark.slow
def test_memscore_train_aim_resnet18_then_score_with_torch_and_onnxruntime(tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnxruntime")
    from memscore.flows.cli import main

    monkeypatch.setenv("MEMSCORE_CACHE_DIR", str(tmp_path / "cache"))
    human, images = make_images(tmp_path)
    out = tmp_path / "run"
    assert main(["train", "--model", "aim-resnet18", "--human", str(human), "--images", str(images), "--out", str(out),
                 "--init", "random", "--epochs", "1", "--batch-size", "4", "--val-fraction", "0.25",
                 "--test-fraction", "0.25", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["epochs_run"] == 1 and summary["parameters"] == get_model_spec("aim-resnet18").size()[0]
    scores = {}
    for backend in ("torch", "onnxruntime"):
        dest = tmp_path / f"scores-{backend}"
        assert main(["score", str(images), "--out", str(dest), "--model", "aim-resnet18", "--weights", str(out / "model.pt"),
                     "--workers", "0", "--no-progress", "--features", "pool,memory", "--backend", backend]) == 0
        table = pq.read_table(sorted((dest / "scores").glob("*.parquet"))).to_pydict()
        assert set(table["weights"]) == {summary["weights_digest"]}
        assert len(table["feat_memory"][0]) == 3136
        scores[backend] = dict(zip(table["path"], table["score"]))
    assert len(scores["torch"]) == 12 and all(0 < s < 1 for s in scores["torch"].values())
    assert max(abs(scores["torch"][k] - scores["onnxruntime"][k]) for k in scores["torch"]) < 1e-4
