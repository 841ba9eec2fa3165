"""Our ResMem reproduces the official `resmem` package's scores (float32, CPU, 1e-5)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from memscore.storage.uris import open_location
from memscore.tasks.discover import iter_listing
from memscore.tasks.plan import plan_shards
from memscore.tasks.score import ScoreSettings, get_model, score_images
import pyarrow as pa
from conftest import PHOTO_FORMATS, official_resmem, write_photo_formats

resmem = pytest.importorskip("resmem", reason="the official resmem package is needed for the parity check")


@pytest.fixture(scope="module")
def official_model():
    """The official package's own class and forward pass, with its weights (conftest.official_resmem)."""
    return official_resmem(resmem)


def official_score(model, path: Path) -> float:
    image = Image.open(path).convert("RGB")
    with torch.inference_mode():
        return float(model(resmem.transformer(image).view(-1, 3, 227, 227)).item())


@pytest.mark.parametrize("workers, backend", [(0, "torch"), (1, "torch"), (1, "onnxruntime")])
def test_pipeline_scores_match_official_package(tmp_path, official_model, workers, backend, request):
    if backend != "torch":
        request.getfixturevalue("onnx_cache")  # the exported model is cached in the session's folder
    write_photo_formats(tmp_path)
    source = open_location(str(tmp_path))
    plan = plan_shards(iter_listing(source), pa.table({"path": pa.array([], pa.string()), "source_version": pa.array([], pa.string())}), 64)
    model = get_model("resmem", None, torch.device("cpu"))
    result = score_images(
        plan.shards[0], source, model,
        ScoreSettings(batch_size=4, workers=workers, features=("resnet152", "fc11"), max_pixels=None, run_id="t",
                      backend=backend),
    )
    assert result.errors.num_rows == 0
    ours = dict(zip(result.scores["path"].to_pylist(), result.scores["score"].to_pylist()))
    assert set(ours) == {filename for _, filename, _, _ in PHOTO_FORMATS}
    diffs = {f: abs(ours[f] - official_score(official_model, tmp_path / f)) for f in ours}
    assert max(diffs.values()) <= 1e-5, diffs


def test_features_match_official_forward(official_model):
    """feat_resnet152 is the official ResNet-152 output; feat_fc11 its last hidden layer."""
    from conftest import photo
    from memscore.models.preprocess import to_model_input

    model = get_model("resmem", None, torch.device("cpu"))
    image = photo("coffee", size=None)
    x = to_model_input(model.spec.preprocess(image)[None])
    reference = resmem.transformer(image).view(-1, 3, 227, 227)
    assert torch.equal(x, reference)
    with torch.inference_mode():
        score, feats = model.module.forward_features(x, ["resnet152", "fc11", "alexnet"])
        logits = official_model.features(reference)
    assert torch.allclose(feats["resnet152"], logits, atol=1e-5)
    assert feats["fc11"].shape == (1, 256) and feats["alexnet"].shape == (1, 9216)
    assert (feats["fc11"] >= 0).all()  # after ReLU, as fed to fc12
    assert torch.allclose(torch.sigmoid(model.module.fc12(feats["fc11"])).squeeze(1), score)
