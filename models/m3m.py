"""M3M: ResMem plus a semantic-segmentation branch (Needell & Bainbridge's third model).

The image (227x227 in [0, 1], the ResMem preprocessing) goes through three
branches: the AlexNet-style branch (pool5, 9216), the ResNet-152 classifier
(1000 logits), both exactly as in :class:`models.resmem.ResMem` and with the same
parameter names, and a torchvision segmentation network that gives per-pixel
class probabilities (21 PASCAL VOC classes). A few convolution and pooling layers
(``seg_conv1..seg_conv3``) reduce those probability maps to a 1024-vector, so the
first fully connected layer sees 9216 + 1000 + 1024 = 11240 inputs instead of the
seed's 680,093 (whose 4096-wide first layer alone would be 11 GB): fc6..fc12 and a
sigmoid give the score.

Segmenters (``segmenter=``): ``lraspp`` (LR-ASPP MobileNetV3-Large, 3.2M
parameters, the default: portable) and ``deeplabv3`` (DeepLabV3 ResNet-50, 42M
parameters, residual like the seed's). The segmenter wants ImageNet-normalised
input; the module normalises internally, so the pipeline's preprocessing stays
ResMem's. It is frozen (and kept in eval mode) unless trained on purpose.

Initialising for training (:func:`initial_m3m`): ResNet-152, conv1..conv5 and
fc7..fc12 from the published ResMem weights; fc6's columns for the ResMem features
from ResMem's fc6 and its segmentation columns zero, so an untrained M3M predicts
exactly what ResMem predicts and training starts from there; the segmenter from
torchvision's standard pretrained weights (downloaded to the torch hub cache when
the machine can reach download.pytorch.org, or found there), or from a local file.

Exportable layers: ``alexnet`` (9216), ``resnet152`` (1000), ``segmentation``
(1024), ``fc6``..``fc11``.

Registered here: ``m3m`` (LR-ASPP) and ``m3m-deeplabv3``; no published weights:
train them with ``memscore train``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from memscore.models.preprocess import resmem_transform
from memscore.models.registry import ModelSpec, TrainRecipe, register
from memscore.models.resmem import CAM_LAYER, ResMem
from memscore.models.weights import (
    WeightsMismatchError,
    WeightsNotFoundError,
    load_into,
    no_published_weights,
    published_resmem_state,
    read_weights_file,
)

SEG_CLASSES = 21  # PASCAL VOC classes of torchvision's segmentation weights
SEG_DIM = 1024  # 64 channels x 4 x 4 after the reduction
SEGMENTERS = ("lraspp", "deeplabv3")

FEATURE_LAYERS: dict[str, int] = {
    "alexnet": 9216,
    "resnet152": 1000,
    "segmentation": SEG_DIM,
    "fc6": 4096,
    "fc7": 4096,
    "fc8": 2048,
    "fc9": 1024,
    "fc10": 512,
    "fc11": 256,
}
DEFAULT_FEATURES: tuple[str, ...] = ("segmentation", "fc11")

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def build_segmenter(kind: str = "lraspp") -> nn.Module:
    """A torchvision segmentation network with random weights (weights are loaded separately)."""
    from torchvision.models import segmentation

    if kind == "lraspp":
        return segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=SEG_CLASSES)
    if kind == "deeplabv3":
        return segmentation.deeplabv3_resnet50(
            weights=None, weights_backbone=None, num_classes=SEG_CLASSES, aux_loss=False
        )
    raise ValueError(f"unknown segmenter {kind!r}; choose from {', '.join(SEGMENTERS)}")


def torchvision_segmenter_weights(kind: str):
    """torchvision's standard pretrained weights enum for ``kind`` (COCO subset, VOC classes)."""
    from torchvision.models import segmentation

    if kind == "lraspp":
        return segmentation.LRASPP_MobileNet_V3_Large_Weights.DEFAULT
    if kind == "deeplabv3":
        return segmentation.DeepLabV3_ResNet50_Weights.DEFAULT
    raise ValueError(f"unknown segmenter {kind!r}; choose from {', '.join(SEGMENTERS)}")


def segmenter_state_dict(kind: str, path: str | os.PathLike[str] | None = None) -> dict[str, torch.Tensor]:
    """Pretrained segmenter weights: a local file, else torchvision's (torch hub cache, downloaded if needed).

    Raises :class:`models.weights.WeightsNotFoundError` with what to do when neither works.
    """
    if path is not None:
        file = Path(path).expanduser()
        if not file.is_file():
            raise WeightsNotFoundError(f"segmenter weights file not found: {file}")
        return read_weights_file(file, "segmenter weights")[0]
    weights = torchvision_segmenter_weights(kind)
    try:
        # Downloads to $TORCH_HOME/hub/checkpoints (~/.cache/torch/...) once; reused afterwards.
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as error:  # noqa: BLE001 - offline machines, proxies, partial downloads
        cache = os.path.join(torch.hub.get_dir(), "checkpoints")  # $TORCH_HOME/hub/checkpoints, ~/.cache/torch/...
        raise WeightsNotFoundError(
            f"could not load torchvision's pretrained {kind} weights ({weights.url}): {type(error).__name__}: "
            f"{error}. Download that file into the torch hub cache ({cache}/) or pass "
            "a local file (--segmenter-weights PATH)"
        ) from None


class M3M(ResMem):
    """ResMem's two branches plus a segmentation branch, concatenated before fc6.

    ``forward_features(x, layers)`` returns (scores [B], {layer: [B, D]}) like ResMem.
    """

    def __init__(self, segmenter: str = "lraspp") -> None:
        super().__init__()
        self.segmenter_kind = segmenter
        self.segmenter = build_segmenter(segmenter)
        self.segmenter.requires_grad_(False)
        # 21 x 227 x 227 probabilities -> 64 x 4 x 4 = 1024
        self.seg_conv1 = nn.Conv2d(SEG_CLASSES, 32, kernel_size=5, stride=2, padding=2)  # 114
        self.seg_pool1 = nn.MaxPool2d(3, 2)  # 56
        self.seg_conv2 = nn.Conv2d(32, 64, kernel_size=3, stride=2, padding=1)  # 28
        self.seg_pool2 = nn.MaxPool2d(3, 2)  # 13
        self.seg_conv3 = nn.Conv2d(64, 64, kernel_size=3, padding=1)  # 13
        self.seg_pool3 = nn.AdaptiveAvgPool2d(4)  # 4
        self.fc6 = nn.Linear(9216 + 1000 + SEG_DIM, 4096)

    def train(self, mode: bool = True) -> "M3M":
        super().train(mode)
        for child in (self.segmenter, self.features):  # frozen parts keep their BatchNorm statistics
            if not any(p.requires_grad for p in child.parameters()):
                child.eval()
        return self

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel class probabilities ``[B, 21, H, W]`` from the segmenter."""
        # constants made here, not buffers: a module built on the meta device gets no state for them
        mean = torch.tensor(_IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(_IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        normalised = (x - mean) / std
        return torch.softmax(self.segmenter(normalised)["out"], dim=1)

    def segmentation_branch(self, x: torch.Tensor) -> torch.Tensor:
        """Segmentation probabilities reduced by convolution and pooling to ``[B, 1024]``."""
        h = self.seg_pool1(F.relu(self.seg_conv1(self.segment(x))))
        h = self.seg_pool2(F.relu(self.seg_conv2(h)))
        h = self.seg_pool3(F.relu(self.seg_conv3(h)))
        return torch.flatten(h, 1)

    def forward_features(
        self, x: torch.Tensor, layers: Sequence[str] = ()
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Score a batch ``[B, 3, 227, 227]`` in [0, 1]; return (scores [B], {layer: [B, D]})."""
        unknown = set(layers) - FEATURE_LAYERS.keys()
        if unknown:
            raise ValueError(f"unknown M3M layer(s): {', '.join(sorted(unknown))}")
        alex = self.alexnet_branch(x)
        logits = self.features(x)
        seg = self.segmentation_branch(x)
        score, kept = self.head(torch.cat((alex, logits, seg), 1), layers)
        for name, value in (("alexnet", alex), ("resnet152", logits), ("segmentation", seg)):
            if name in layers:
                kept[name] = value
        return score, {name: kept[name] for name in layers}


def m3m_lraspp() -> M3M:
    return M3M("lraspp")


def m3m_deeplabv3() -> M3M:
    return M3M("deeplabv3")


def initial_m3m(
    segmenter: str = "lraspp",
    resmem_state: dict[str, torch.Tensor] | None = None,
    segmenter_state: dict[str, torch.Tensor] | None = None,
) -> M3M:
    """An M3M ready to train: ResMem parts from ``resmem_state``, segmenter from ``segmenter_state``.

    Either may be None (random initialisation, for tests). fc6's segmentation
    columns start at zero so the untrained model reproduces ResMem.
    """
    model = M3M(segmenter)
    if resmem_state is not None:
        state = {k: v for k, v in resmem_state.items() if not k.startswith("fc6.")}
        missing, _ = load_into(model, state, "the ResMem weights", strict=False)
        wanted = [k for k in missing if not k.startswith(("segmenter.", "seg_conv", "fc6."))]
        weight, bias = resmem_state.get("fc6.weight"), resmem_state.get("fc6.bias")
        if wanted or weight is None or bias is None or tuple(weight.shape) != (4096, 9216 + 1000):
            raise WeightsMismatchError(
                "the ResMem weights do not fit M3M's ResMem part: "
                + (f"missing {', '.join(wanted[:5])}" if wanted else "fc6 is not ResMem's 10216 -> 4096 layer")
            )
        with torch.no_grad():
            model.fc6.weight.zero_()
            model.fc6.weight[:, : weight.shape[1]].copy_(weight)
            model.fc6.bias.copy_(bias)
    if segmenter_state is not None:
        state = {k: v for k, v in segmenter_state.items() if not k.startswith("aux_classifier.")}
        load_into(model.segmenter, state, f"the segmenter weights (for {segmenter})")
    model.segmenter.requires_grad_(False)
    return model


def _initial(options: dict) -> M3M:
    """The recipe's start: ResMem weights and the pretrained segmenter (``init=published``), or random."""
    published = options.get("init", "published") == "published"
    kind = options.get("segmenter", "lraspp")
    segmenter_state = None
    if options.get("segmenter_weights") or published:
        segmenter_state = segmenter_state_dict(kind, options.get("segmenter_weights"))
    return initial_m3m(
        kind,
        resmem_state=published_resmem_state(options.get("resmem_weights")) if published else None,
        segmenter_state=segmenter_state,
    )


def _spec(name: str, segmenter: str, build, note: str, description: str) -> ModelSpec:
    return ModelSpec(
        name=name,
        description=description,
        build=build,
        default_weights=no_published_weights(name),
        preprocess=resmem_transform,
        input_size=227,
        feature_layers=FEATURE_LAYERS,
        default_features=DEFAULT_FEATURES,
        source="after M3M (Needell & Bainbridge); you train it (memscore train), starting from ResMem's weights "
               f"and torchvision's pretrained {segmenter} segmenter",
        licence="yours; it starts from ResMem's non-commercial weights and torchvision's segmenter weights",
        recipe=TrainRecipe(lambda options: _initial({**options, "segmenter": segmenter}), ("segmenter", "features"), note),
        cam_layer=CAM_LAYER,  # ResMem's: the ResNet-152's last stage
    )


M3M_LRASPP = register(_spec(
    "m3m", "lraspp", m3m_lraspp,
    "ResMem weights (ResNet-152 frozen), pretrained LR-ASPP segmenter (frozen), new segmentation convs",
    "M3M: ResMem plus an LR-ASPP segmentation branch (train it: memscore train)",
))
M3M_DEEPLABV3 = register(_spec(
    "m3m-deeplabv3", "deeplabv3", m3m_deeplabv3,
    "as m3m with a DeepLabV3 ResNet-50 segmenter",
    "M3M with a DeepLabV3 ResNet-50 segmentation branch (train it: memscore train)",
))
