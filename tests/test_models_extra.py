"""The models of issue 6: M3M, resmem-retrain, memnet-baseline (registry entries, shapes, sizes, weights)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from memscore.models.registry import get_model_spec, load_model
from memscore.models.weights import WeightsNotFoundError

HAS_RESMEM = importlib.util.find_spec("resmem") is not None


def meta_build(name: str) -> torch.nn.Module:
    with torch.device("meta"):
        return get_model_spec(name).build()


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_and_memory():
    resmem = count(meta_build("resmem"))
    assert count(meta_build("resmem-retrain")) == resmem == 131_688_809
    assert count(meta_build("memnet-baseline")) == 56_258_881
    m3m = meta_build("m3m")
    assert count(m3m) == 139_176_907
    assert count(m3m.segmenter) == 3_221_538
    assert m3m.fc6.in_features == 9216 + 1000 + 1024
    # far below the seed's 11 GB first layer: the whole model is about 0.5 GiB in float32
    assert count(m3m) * 4 < 0.6 * 2**30
    assert count(meta_build("m3m-deeplabv3")) == 175_594_238


def test_trained_models_need_a_checkpoint():
    for name in ("m3m", "m3m-deeplabv3", "resmem-retrain", "memnet-baseline"):
        with pytest.raises(WeightsNotFoundError, match="no published weights.*--weights"):
            get_model_spec(name).default_weights()
    assert get_model_spec("memnet").name == "memnet-baseline"


def test_memnet_forward_shapes_and_features():
    from memscore.models.memnet import MemNetBaseline

    torch.manual_seed(0)
    model = MemNetBaseline().eval()
    with torch.inference_mode():
        score, feats = model.forward_features(torch.rand(2, 3, 227, 227), ["alexnet", "fc6", "fc7"])
    assert score.shape == (2,) and bool(((score > 0) & (score < 1)).all())
    assert {k: tuple(v.shape) for k, v in feats.items()} == {"alexnet": (2, 9216), "fc6": (2, 4096), "fc7": (2, 4096)}
    with pytest.raises(ValueError, match="unknown memnet-baseline layer"):
        model.forward_features(torch.rand(1, 3, 227, 227), ["resnet152"])


def test_memnet_checkpoint_loads_through_the_registry(tmp_path):
    from memscore.models.memnet import MemNetBaseline

    torch.manual_seed(0)
    state = MemNetBaseline().state_dict()
    path = tmp_path / "model.pt"
    torch.save({"model": state, "memscore": {"model": "memnet-baseline"}}, path)
    loaded = load_model("memnet-baseline", str(path))
    assert loaded.weights.digest.startswith("sha256:")
    torch.testing.assert_close(loaded.module.fc8.weight, state["fc8.weight"])
    assert not loaded.module.training


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    from memscore.models.memnet import MemNetBaseline

    path = tmp_path / "memnet.pt"
    torch.save({"model": MemNetBaseline().state_dict()}, path)
    with pytest.raises((ValueError, RuntimeError)):  # missing keys / size mismatch
        load_model("m3m", str(path))


def test_a_checkpoint_names_the_model_it_was_trained_as(tmp_path):
    """Weights that fit but were trained as another model (resmem-retrain weights given to
    resmem have the same shapes) are refused, so rows are never labelled with the wrong model;
    a file that is no state dict is a one-line error, not an unpickling traceback."""
    from memscore.models.memnet import MemNetBaseline
    from memscore.models.registry import WeightsMismatchError

    state = MemNetBaseline().state_dict()
    path = tmp_path / "model.pt"
    torch.save({"model": state, "memscore": {"model": "M3M"}}, path)  # names are matched case-blind
    with pytest.raises(WeightsMismatchError, match="holds 'm3m' weights .*not 'memnet-baseline'"):
        load_model("memnet-baseline", str(path))
    torch.save({"model": state, "memscore": {"model": "memnet-baseline"}}, path)
    assert load_model("memnet-baseline", str(path)).spec.name == "memnet-baseline"
    text = tmp_path / "scores.csv"
    text.write_text("image,score\na.jpg,0.5\n")
    with pytest.raises(WeightsMismatchError, match="not a PyTorch state dict"):
        load_model("memnet-baseline", str(text))


@pytest.mark.skipif(not HAS_RESMEM, reason="needs the resmem package's published weights")
def test_memnet_starts_from_resmems_alexnet_branch():
    from memscore.models.memnet import initial_memnet
    from memscore.models.weights import published_resmem_state

    state = published_resmem_state()
    model = initial_memnet(state)
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5"):
        torch.testing.assert_close(getattr(model, name).weight, state[f"{name}.weight"])


def test_segmenter_weights_from_a_local_file(tmp_path):
    from memscore.models.m3m import build_segmenter, segmenter_state_dict

    torch.manual_seed(1)
    segmenter = build_segmenter("lraspp")
    path = tmp_path / "lraspp.pt"
    torch.save(segmenter.state_dict(), path)
    state = segmenter_state_dict("lraspp", path)
    assert state.keys() == segmenter.state_dict().keys()
    torch.save({"model": segmenter.state_dict()}, tmp_path / "wrapped.pt")  # a memscore-style checkpoint works too
    assert segmenter_state_dict("lraspp", tmp_path / "wrapped.pt").keys() == state.keys()
    with pytest.raises(WeightsNotFoundError, match="segmenter weights file not found"):
        segmenter_state_dict("lraspp", tmp_path / "nope.pt")


def test_torchvision_segmenter_weights_offline_error_says_what_to_do(monkeypatch):
    from torchvision.models import segmentation

    from memscore.models.m3m import segmenter_state_dict

    def offline(self, *args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(segmentation.LRASPP_MobileNet_V3_Large_Weights, "get_state_dict", offline)
    with pytest.raises(WeightsNotFoundError, match="torch hub cache.*--segmenter-weights"):
        segmenter_state_dict("lraspp")
    # the folder named is the one torch uses: $TORCH_HOME moves it
    monkeypatch.setenv("TORCH_HOME", "/somewhere/torch-home")
    with pytest.raises(WeightsNotFoundError, match="/somewhere/torch-home/hub/checkpoints"):
        segmenter_state_dict("lraspp")


def test_frozen_parts_stay_in_eval_mode():
    from memscore.models.m3m import M3M

    with torch.device("meta"):
        model = M3M("lraspp")
    model.features.requires_grad_(False)
    model.train()
    assert model.training and model.fc6.training
    assert not model.segmenter.training and not model.features.training


@pytest.mark.slow
@pytest.mark.skipif(not HAS_RESMEM, reason="needs the resmem package's published weights")
def test_untrained_m3m_reproduces_resmem_and_has_the_right_shapes():
    """fc6's segmentation columns start at zero: before training M3M predicts what ResMem predicts."""
    from memscore.models.m3m import initial_m3m
    from memscore.models.resmem import ResMem
    from memscore.models.weights import published_resmem_state

    from memscore.models.m3m import build_segmenter

    state = published_resmem_state()
    torch.manual_seed(0)
    segmenter_state = build_segmenter("lraspp").state_dict()
    m3m = initial_m3m("lraspp", resmem_state=state, segmenter_state=segmenter_state).eval()
    torch.testing.assert_close(m3m.segmenter.state_dict()["classifier.low_classifier.weight"],
                               segmenter_state["classifier.low_classifier.weight"])
    assert not any(p.requires_grad for p in m3m.segmenter.parameters())
    resmem = ResMem()
    resmem.load_state_dict(state)
    resmem.eval()
    x = torch.rand(1, 3, 227, 227)
    with torch.inference_mode():
        score, feats = m3m.forward_features(x, ["alexnet", "resnet152", "segmentation", "fc6", "fc11"])
        expected = resmem(x)
    torch.testing.assert_close(score, expected, rtol=1e-5, atol=1e-6)
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "alexnet": (1, 9216), "resnet152": (1, 1000), "segmentation": (1, 1024), "fc6": (1, 4096), "fc11": (1, 256),
    }


def test_training_recipes_freeze_what_they_say():
    """Trainable parameters per recipe (built on the meta device: no weights needed)."""
    from memscore.tasks.train import TrainConfig, build_trainable

    expected = {
        "resmem": 131_688_809 - 60_192_808,  # ResNet-152 frozen
        "resmem-retrain": 131_688_809,  # everything
        "memnet-baseline": 56_258_881,
        "m3m": 75_762_561,  # ResNet-152 and segmenter frozen
    }
    for name, trainable in expected.items():
        config = TrainConfig(model=name, human="", images="", out="", init="random")
        with torch.device("meta"):
            model, frozen = build_trainable(config)
        assert sum(p.numel() for p in model.parameters() if p.requires_grad) == trainable, name
    config = TrainConfig(model="m3m", human="", images="", out="", init="random", freeze=["segmenter"])
    with torch.device("meta"):
        model, frozen = build_trainable(config)
    assert frozen == ("segmenter",)
    assert all(p.requires_grad for p in model.features.parameters())


def test_wrong_starting_weights_files_are_one_line_errors(tmp_path):
    """--resmem-weights / --segmenter-weights naming a wrong file: WeightsMismatchError (the CLI's one line)."""
    from memscore.models.m3m import build_segmenter, initial_m3m, segmenter_state_dict
    from memscore.models.memnet import MemNetBaseline
    from memscore.models.registry import WeightsMismatchError, trainable_model
    from memscore.models.weights import published_resmem_state

    text = tmp_path / "scores.csv"
    text.write_text("image,score\na.jpg,0.5\n")
    with pytest.raises(WeightsMismatchError, match="not a PyTorch state dict"):
        published_resmem_state(str(text))
    with pytest.raises(WeightsMismatchError, match="not a PyTorch state dict"):
        segmenter_state_dict("lraspp", text)
    memnet = tmp_path / "memnet.pt"
    with torch.device("meta"):
        state = MemNetBaseline().state_dict()
    torch.save({k: torch.zeros(v.shape) for k, v in state.items() if not k.startswith(("fc6", "fc7"))}, memnet)
    with pytest.raises(WeightsMismatchError, match="do not fit"):
        trainable_model("resmem-retrain").initial({"init": "published", "resmem_weights": str(memnet)})
    with pytest.raises(WeightsMismatchError):
        trainable_model("m3m").initial({"init": "published", "resmem_weights": str(memnet), "segmenter_weights": str(memnet)})
    with torch.device("meta"):
        deeplab = build_segmenter("deeplabv3").state_dict()
    with pytest.raises(WeightsMismatchError, match="segmenter weights .*do not fit"):
        initial_m3m("lraspp", segmenter_state={k: torch.zeros(v.shape) for k, v in list(deeplab.items())[:3]})


def test_memscore_models_reports_each_models_size(capsys):
    """The size M3M is asked to report (and every other model's), without building real tensors."""
    from memscore.flows.cli import main
    from memscore.models.memnet import MemNetBaseline

    expected = sum(p.numel() for p in MemNetBaseline().parameters())
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert f"parameters: {expected:,} (" in out
    m3m = out[out.index("m3m:"):].splitlines()[1]
    assert m3m.startswith("  parameters: 139,176,907 (532 MiB in float32)")
