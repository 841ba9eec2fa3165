"""ResMem (Needell & Bainbridge): our own module with the published layout.

An AlexNet-style branch (conv1..conv5, pooled to 256x6x6 = 9216 values) and a
torchvision ResNet-152 classifier (1000 logits) see the same 227x227 image in
[0, 1] (no mean/std normalisation); their outputs are concatenated (10216) and
run through fc6..fc12 with a sigmoid. Parameter names match the state dict in the
``resmem`` package's ``model.pt`` (``features.*`` for the ResNet, ``conv1..conv5``,
``fc6..fc12``), so those weights load straight into this module.

Exportable layers (see :data:`FEATURE_LAYERS`): ``alexnet`` (pool5, 9216),
``resnet152`` (ResNet-152 logits, 1000) and the hidden layers ``fc6``..``fc11``
(after their ReLU; ``fc11`` is the last hidden layer, 256).

Registered here: ``resmem`` (the published weights; fine-tuning keeps the
ResNet-152 frozen, as ResMem was trained) and ``resmem-retrain`` (the same module
started from the published weights with everything trainable, the seed's
ResMemRetrain; no published weights of its own).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet152

from memscore.models.preprocess import resmem_transform
from memscore.models.registry import ModelSpec, TrainRecipe, register
from memscore.models.weights import load_into, no_published_weights, published_resmem_state, resmem_package_weights

FEATURE_LAYERS: dict[str, int] = {
    "alexnet": 9216,
    "resnet152": 1000,
    "fc6": 4096,
    "fc7": 4096,
    "fc8": 2048,
    "fc9": 1024,
    "fc10": 512,
    "fc11": 256,
}
DEFAULT_FEATURES: tuple[str, ...] = ("resnet152", "fc11")
_HIDDEN = ("fc6", "fc7", "fc8", "fc9", "fc10", "fc11")
# Grad-CAM's layer (memory maps): the last stage of the ResNet-152 branch, 2048 x 8 x 8 at 227 px
# (the AlexNet branch's conv5 is 13 x 13 but feeds the head only through pool5's 9216 values).
CAM_LAYER = "features.layer4"


class AlexNetBranchMixin:
    """ResMem's AlexNet-style branch, with its published parameter names.

    The layers are plain attributes (``conv1`` .. ``conv5``), not a submodule, so
    the state-dict keys stay those of the published weights; models that reuse the
    branch (memnet-baseline) load ResMem's tensors unchanged.
    """

    def add_alexnet_branch(self, cruise_altitude: int = 384) -> None:
        """Create conv1..conv5 with their pooling and local response normalisation."""
        self.conv1 = nn.Conv2d(3, 48, kernel_size=11, stride=4)
        self.pool1 = nn.MaxPool2d(3, 2)
        self.lrn1 = nn.LocalResponseNorm(5)
        self.conv2 = nn.Conv2d(48, 256, kernel_size=5, stride=1, padding=2, groups=2)
        self.pool2 = nn.MaxPool2d(3, 2)
        self.lrn2 = nn.LocalResponseNorm(5)
        self.conv3 = nn.Conv2d(256, cruise_altitude, kernel_size=3, padding=1, groups=2)
        self.conv4 = nn.Conv2d(cruise_altitude, cruise_altitude, kernel_size=3, padding=1, groups=2)
        self.conv5 = nn.Conv2d(cruise_altitude, 256, kernel_size=3, padding=1, groups=2)
        self.pool5 = nn.MaxPool2d(kernel_size=3, stride=2)

    def alexnet_branch(self, x: torch.Tensor) -> torch.Tensor:
        """The AlexNet-style branch: conv1..conv5 and pool5, flattened to 9216."""
        h = self.lrn1(self.pool1(F.relu(self.conv1(x))))
        h = self.lrn2(self.pool2(F.relu(self.conv2(h))))
        h = F.relu(self.conv3(h))
        h = F.relu(self.conv4(h))
        h = self.pool5(F.relu(self.conv5(h)))
        return torch.flatten(h, 1)


class ResMem(AlexNetBranchMixin, nn.Module):
    """ResMem with the layer names of the published weights.

    ``forward(x)`` returns the memorability score, shape ``[B]``.
    ``forward_features(x, layers)`` also returns the requested feature layers.
    """

    def __init__(self, cruise_altitude: int = 384) -> None:
        super().__init__()
        self.features = resnet152(weights=None)
        self.add_alexnet_branch(cruise_altitude)
        self.fc6 = nn.Linear(9216 + 1000, 4096)
        self.drp6 = nn.Dropout(p=0.5)
        self.fc7 = nn.Linear(4096, 4096)
        self.drp7 = nn.Dropout(p=0.5)
        self.fc8 = nn.Linear(4096, 2048)
        self.fc9 = nn.Linear(2048, 1024)
        self.fc10 = nn.Linear(1024, 512)
        self.fc11 = nn.Linear(512, 256)
        self.fc12 = nn.Linear(256, 1)

    def head(self, concatenated: torch.Tensor, keep: Sequence[str] = ()) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """fc6..fc12 and the sigmoid over the 10216 concatenated features."""
        kept: dict[str, torch.Tensor] = {}
        h = concatenated
        for name in _HIDDEN:
            h = F.relu(getattr(self, name)(h))
            if name == "fc6":
                h = self.drp6(h)
            elif name == "fc7":
                h = self.drp7(h)
            if name in keep:
                kept[name] = h
        return torch.sigmoid(self.fc12(h)).squeeze(1), kept

    def forward_features(
        self, x: torch.Tensor, layers: Sequence[str] = ()
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Score a batch ``[B, 3, 227, 227]`` in [0, 1]; return (scores [B], {layer: [B, D]})."""
        unknown = set(layers) - FEATURE_LAYERS.keys()
        if unknown:
            raise ValueError(f"unknown ResMem layer(s): {', '.join(sorted(unknown))}")
        alex = self.alexnet_branch(x)
        logits = self.features(x)
        score, kept = self.head(torch.cat((alex, logits), 1), layers)
        if "alexnet" in layers:
            kept["alexnet"] = alex
        if "resnet152" in layers:
            kept["resnet152"] = logits
        return score, {name: kept[name] for name in layers}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]


def initial_resmem(options: dict) -> ResMem:
    """ResMem ready to train: the published weights (or ``options['resmem_weights']``), or random with ``init=random``."""
    model = ResMem()
    if options.get("init", "published") == "published":
        path = options.get("resmem_weights")
        load_into(model, published_resmem_state(path), f"ResMem weights {path or '(resmem package)'}")
    return model


SOURCE = "Needell & Bainbridge 2021 (ResMem); weights: PyPI package resmem 1.1.6, resmem/model.pt"
LICENCE = "non-commercial (ResMem Non-commercial License, University of Chicago)"

RESMEM = register(
    ModelSpec(
        name="resmem",
        description="ResMem (Needell & Bainbridge 2021), published weights from the resmem package",
        build=ResMem,
        default_weights=resmem_package_weights,
        preprocess=resmem_transform,
        input_size=227,
        feature_layers=FEATURE_LAYERS,
        default_features=DEFAULT_FEATURES,
        source=SOURCE,
        licence=LICENCE,
        recipe=TrainRecipe(initial_resmem, ("features",), "published weights, ResNet-152 frozen"),
        cam_layer=CAM_LAYER,
    )
)

RESMEM_RETRAIN = register(
    ModelSpec(
        name="resmem-retrain",
        description="ResMemRetrain: ResMem with its ResNet-152 retrained too (train it: memscore train)",
        build=ResMem,
        default_weights=no_published_weights("resmem-retrain"),
        preprocess=resmem_transform,
        input_size=227,
        feature_layers=FEATURE_LAYERS,
        default_features=DEFAULT_FEATURES,
        source="ResMem's architecture; you train it (memscore train), starting from ResMem's weights",
        licence="yours; it starts from ResMem's non-commercial weights",
        recipe=TrainRecipe(initial_resmem, (), "published weights, everything trainable"),
        cam_layer=CAM_LAYER,
    )
)
