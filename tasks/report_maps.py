"""Memorability maps for the gallery: Grad-CAM (Captum's ``LayerGradCam``) on a convolutional layer.

For each gallery image the model's score is differentiated with respect to the
activations of one convolutional layer; Grad-CAM weights each channel by its mean
gradient, sums, keeps the positive part (Selvaraju et al. 2017) and the map is
upsampled bilinearly to the model's input (for ResMem the 227 x 227 center crop it
scores, not the whole photo) and drawn over it. The method comes from Captum
(``captum.attr.LayerGradCam`` and ``LayerAttribution.interpolate``), not from here.

Layers: :data:`MAP_LAYERS` names the layer per model (ResMem: ``features.layer4``,
the last residual stage of its ResNet-152 branch, 8 x 8 at 227 px); models not
listed use their last ``Conv2d``. The page says which method and layer made each map.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from memscore.tasks.report_gallery import IMAGES_DIR, image_key, open_image

MAP_LAYERS: dict[str, str] = {"resmem": "features.layer4", "memnet-baseline": "conv5"}
METHOD = "Grad-CAM (captum.attr.LayerGradCam, positive part, bilinear upsampling)"


@dataclass
class MapMaker:
    """A loaded model, the layer Grad-CAM reads, and what to say about it."""

    model_name: str
    loaded: Any
    layer_name: str
    cam: Any
    weights_digest: str

    def describe(self) -> str:
        return f"{METHOD} on layer {self.layer_name} of {self.model_name}"


def last_conv_layer(module: nn.Module) -> str:
    """Name of the last ``nn.Conv2d`` registered in ``module`` (ValueError when there is none)."""
    names = [name for name, m in module.named_modules() if isinstance(m, nn.Conv2d)]
    if not names:
        raise ValueError("the model has no convolutional layer for Grad-CAM")
    return names[-1]


def load_map_maker(model_name: str, weights: str | None = None, device: str = "cpu") -> MapMaker:
    """Load ``model_name`` (its published weights unless ``weights``) and a Grad-CAM on its layer."""
    from captum.attr import LayerGradCam

    from memscore.models.registry import load_model

    loaded = load_model(model_name, weights, device)
    module = loaded.module
    layer_name = MAP_LAYERS.get(loaded.spec.name) or last_conv_layer(module)
    layer = module.get_submodule(layer_name)
    cam = LayerGradCam(module, layer)
    return MapMaker(loaded.spec.name, loaded, layer_name, cam, loaded.weights.digest)


def grad_cam(maker: MapMaker, image: Image.Image) -> tuple[np.ndarray, np.ndarray, float]:
    """(map ``[H, W]`` in [0, 1], the model input as uint8 ``[H, W, 3]``, the model's score) for one image."""
    from captum.attr import LayerAttribution

    from memscore.models.preprocess import to_model_input

    spec = maker.loaded.spec
    crop = spec.preprocess(image)  # uint8 [3, H, W], exactly what scoring feeds the model
    x = to_model_input(crop.unsqueeze(0)).to(maker.loaded.device).requires_grad_(True)
    with torch.enable_grad():
        attribution = maker.cam.attribute(x, relu_attributions=True)
        upsampled = LayerAttribution.interpolate(attribution, tuple(x.shape[-2:]), interpolate_mode="bilinear")
    with torch.no_grad():
        score = float(maker.loaded.module(x.detach()).reshape(-1)[0])
    heat = upsampled[0, 0].detach().cpu().numpy().astype(np.float64)
    top = heat.max()
    heat = heat / top if top > 0 else np.zeros_like(heat)
    return heat, crop.permute(1, 2, 0).cpu().numpy(), score


def overlay(heat: np.ndarray, rgb: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """The map drawn over the image with matplotlib's ``jet`` colour map."""
    from matplotlib import colormaps

    colored = colormaps["jet"](heat)[..., :3] * 255.0
    blended = (1 - alpha) * rgb.astype(np.float64) + alpha * colored
    return Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8))


def make_map(maker: MapMaker, uri: str, out: Path, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``out/images/<key>-map-<model>.jpg`` for ``uri``; returns {"status", "map", "score", "detail"}."""
    try:
        image = open_image(uri, storage_options, reduce=False)
    except FileNotFoundError as error:
        return {"status": "missing", "map": None, "score": None, "detail": str(error) or "not found"}
    except Exception as error:  # noqa: BLE001
        return {"status": "unreadable", "map": None, "score": None, "detail": f"{type(error).__name__}: {error}"}
    heat, rgb, score = grad_cam(maker, image)
    name = f"{IMAGES_DIR}/{image_key(uri)}-map-{maker.model_name}.jpg"
    (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    overlay(heat, rgb).save(out / name, "JPEG", quality=85)
    return {"status": "ok", "map": name, "score": score, "detail": None}
