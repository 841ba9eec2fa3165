"""Memorability maps in ``memscore report --maps``: one per model in DEST, Grad-CAM or occlusion.

Expected values come from Captum itself (``LayerGradCam`` and ``Occlusion`` called here on
the same module and input), from Grad-CAM written out with torch autograd, and from one
occluded forward pass by hand; ViTMem runs on a locally made checkpoint of the official
package's module (tests/test_falseresmem_vitmem.py), nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from memscore.flows.cli import main
from memscore.flows.report import ReportOptions, build_report
from test_falseresmem_vitmem import HAS_VITMEM, vitmem_checkpoint  # noqa: F401 - fixture
from test_report import make_lab, write_dest


def test_every_model_names_a_layer_that_runs_or_none():
    """Each registered model's cam_layer is a submodule whose forward runs in the model's forward
    and gives a [1, C, h, w] map (checked on the meta device: no weights, no compute); only
    ViTMem has none."""
    from memscore.models.registry import available_models, get_model_spec

    without = []
    for name in available_models():
        spec = get_model_spec(name)
        if spec.cam_layer is None:
            without.append(name)
            continue
        with torch.device("meta"):
            module = spec.build().eval()
            x = torch.zeros(1, 3, spec.input_size, spec.input_size)
        seen = []
        handle = module.get_submodule(spec.cam_layer).register_forward_hook(lambda m, i, o: seen.append(o.shape))
        module(x)
        handle.remove()
        assert len(seen) == 1 and len(seen[0]) == 4 and seen[0][0] == 1 and min(seen[0][2:]) >= 7, (name, seen)
    assert without == ["vitmem"]
    assert get_model_spec("resmem").cam_layer == "features.layer4"


def test_occlusion_windows_tile_the_input():
    from memscore.tasks.report_maps import occlusion_window

    for size in (224, 227):
        for grid in (1, 3, 7, 10):
            window, stride = occlusion_window(size, grid)
            assert (size - window) // stride + 1 == grid and (grid - 1) * stride + window == size
            assert grid == 1 or window >= stride  # neighbours overlap or touch: every pixel covered
    assert occlusion_window(224, 7) == (56, 28)


def test_models_without_weights_get_a_warning_not_a_failure(tmp_path, capsys):
    """A model in DEST without published weights (memnet-baseline) and a name that is no
    registered model: no maps for them, a warning naming --maps-weights, the report is written."""
    lab = make_lab(tmp_path, n=4, participants=4)
    write_dest(Path(lab["dest"]), lab["archive"], lab["paths"], lab["scores"], model="memnet-baseline",
               run_id="20260101T000000Z-bbbb")
    write_dest(Path(lab["dest"]), lab["archive"], lab["paths"], lab["scores"], model="somebody-else",
               run_id="20260101T000000Z-cccc")
    assert main(["report", lab["dest"], "--out", str(tmp_path / "r"), "--model", "memnet-baseline", "--top", "1",
                 "--sample", "0", "--maps", "--maps-models", "memnet", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [m["model"] for m in report["maps"]["models"]] == ["memnet-baseline"]
    assert report["maps"]["models"][0]["status"] == "unavailable"
    assert any("no maps for memnet-baseline" in w and "--maps-weights memnet-baseline=PATH" in w
               for w in report["warnings"])
    assert all(g["maps"] == {} for b in report["gallery"] for g in b["rows"])
    assert main(["report", lab["dest"], "--out", str(tmp_path / "r"), "--model", "resmem", "--maps",
                 "--maps-weights", "resmem"]) == 1
    assert "memscore: error: --maps-weights takes MODEL=PATH" in capsys.readouterr().err
    assert main(["report", lab["dest"], "--out", str(tmp_path / "r"), "--model", "resmem", "--maps",
                 "--maps-models", "vitmem"]) == 1
    assert "DEST has no scores of 'vitmem'" in capsys.readouterr().err


def _heat(out: Path, entry: dict) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(out / entry["heat"]), dtype=np.float64) / 255.0


@pytest.mark.slow
@pytest.mark.skipif(not HAS_VITMEM, reason="needs the vitmem package and timm")
def test_maps_equal_captum_for_resmem_and_vitmem(tmp_path, vitmem_checkpoint):  # noqa: F811
    """DEST with ResMem and ViTMem scores: each gallery image gets a ResMem Grad-CAM map
    (features.layer4) and a ViTMem occlusion map; each equals Captum's own method called here
    on the same module and input, and the page and JSON name method and layer/window."""
    import torch.nn.functional as F
    from captum.attr import LayerAttribution, LayerGradCam, Occlusion

    from memscore.models.preprocess import to_model_input
    from memscore.models.registry import load_model
    from memscore.tasks.report_gallery import open_image

    lab = make_lab(tmp_path, n=4, participants=4)
    write_dest(Path(lab["dest"]), lab["archive"], lab["paths"], lab["scores"], model="vitmem",
               run_id="20260101T000000Z-bbbb")
    out = tmp_path / "report"
    report = build_report(lab["dest"], str(out), ReportOptions(
        model="resmem", top=1, sample=0, maps=True, occlusion_grid=3, maps_weights={"vitmem": str(vitmem_checkpoint)}))
    infos = {m["model"]: m for m in report["maps"]["models"]}
    assert set(infos) == {"resmem", "vitmem"}
    assert (infos["resmem"]["method"], infos["resmem"]["layer"]) == ("Grad-CAM", "features.layer4")
    assert (infos["vitmem"]["method"], infos["vitmem"]["window"], infos["vitmem"]["stride"]) == ("occlusion", 112, 56)
    page = (out / "index.html").read_text()
    assert "layer features.layer4" in page and "112 x 112 px window, stride 56" in page
    assert sum("not the weights DEST was scored with" in w for w in report["warnings"]) == 2  # DEST: "abab..."
    rows = [g for b in report["gallery"] for g in b["rows"]]
    ok = [g for g in rows if g["thumb"]["status"] == "ok"]
    assert len(ok) == 1 and len(rows) == 2
    assert all(m["status"] == "missing" for g in rows if g["thumb"]["status"] == "missing" for m in g["maps"].values())
    row = ok[0]
    image = open_image(row["uri"], reduce=False)
    assert all((out / m["map"]).is_file() for m in row["maps"].values())

    # ResMem: Captum's LayerGradCam on features.layer4, and Grad-CAM by hand with autograd
    loaded = load_model("resmem")
    resmem = loaded.module
    x = to_model_input(loaded.spec.preprocess(image).unsqueeze(0))
    cam = LayerGradCam(resmem, resmem.features.layer4).attribute(x.clone().requires_grad_(True), relu_attributions=True)
    cam = LayerAttribution.interpolate(cam, (227, 227), interpolate_mode="bilinear")[0, 0].detach().numpy()
    saved = {}
    handle = resmem.features.layer4.register_forward_hook(lambda m, i, o: saved.setdefault("a", o))
    with torch.enable_grad():
        y = resmem(x.clone().requires_grad_(True))
        (grad,) = torch.autograd.grad(y.sum(), saved["a"])
    handle.remove()
    hand = F.relu((grad.mean(dim=(2, 3), keepdim=True) * saved["a"]).sum(1, keepdim=True))
    hand = F.interpolate(hand, size=(227, 227), mode="bilinear", align_corners=False)[0, 0].detach().numpy()
    np.testing.assert_allclose(cam, hand, rtol=1e-4, atol=1e-6 * hand.max())
    entry = row["maps"]["resmem"]
    np.testing.assert_allclose(_heat(out, entry), cam / cam.max(), atol=0.5 / 255 + 1e-4)
    assert entry["peak"] == pytest.approx(float(cam.max()), rel=1e-4)
    assert entry["score"] == pytest.approx(float(y.detach()[0]), abs=1e-6)

    # ViTMem: Captum's Occlusion with the same 112 px window, stride 56, mid-grey; and the
    # top-left pixel, covered by one window only, is score(x) - score(x with that window grey)
    loaded = load_model("vitmem", str(vitmem_checkpoint))
    vit = loaded.module
    x = to_model_input(loaded.spec.preprocess(image).unsqueeze(0))
    with torch.no_grad():
        occ = Occlusion(vit).attribute(x, sliding_window_shapes=(3, 112, 112), strides=(3, 56, 56),
                                       baselines=0.5)[0, 0].numpy().astype(np.float64)
        grey = x.clone()
        grey[..., :112, :112] = 0.5
        by_hand = float(vit(x)[0] - vit(grey)[0])
    assert occ[0, 0] == pytest.approx(by_hand, abs=1e-6)
    assert occ.max() > 0
    entry = row["maps"]["vitmem"]
    np.testing.assert_allclose(_heat(out, entry), np.clip(occ, 0, None) / occ.max(), atol=0.5 / 255 + 1e-4)
    assert entry["peak"] == pytest.approx(float(occ.max()), rel=1e-4, abs=1e-7)
    assert entry["method"] == "occlusion" and "112 x 112" in entry["where"]
