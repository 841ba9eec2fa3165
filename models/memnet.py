"""memnet-baseline: the AlexNet-style branch alone with a fully connected head.

The seeds compare ResMem with MemNet (Khosla et al.), an AlexNet-style network
that regresses memorability directly. This baseline is ResMem's own AlexNet-style
branch (conv1..conv5 and pool5, 9216 values, the same parameter names, so it is
initialised from the published ResMem weights) followed by MemNet's head: fc6
(9216 -> 4096), fc7 (4096 -> 4096), each with ReLU and dropout, and fc8 (-> 1)
with a sigmoid. Input and preprocessing are ResMem's (227x227 in [0, 1]).

Exportable layers: ``alexnet`` (9216), ``fc6`` (4096), ``fc7`` (4096).

Registered here as ``memnet-baseline`` (alias ``memnet``); no published weights:
train it with ``memscore train``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from memscore.models.preprocess import resmem_transform
from memscore.models.registry import ModelSpec, TrainRecipe, register
from memscore.models.resmem import AlexNetBranchMixin
from memscore.models.weights import WeightsMismatchError, load_into, no_published_weights, published_resmem_state

FEATURE_LAYERS: dict[str, int] = {"alexnet": 9216, "fc6": 4096, "fc7": 4096}
DEFAULT_FEATURES: tuple[str, ...] = ("fc7",)
BRANCH_PREFIXES = ("conv1.", "conv2.", "conv3.", "conv4.", "conv5.")


class MemNetBaseline(AlexNetBranchMixin, nn.Module):
    """AlexNet-style branch (ResMem's conv1..conv5) plus fc6..fc8 and a sigmoid."""

    def __init__(self, cruise_altitude: int = 384, dropout: float = 0.5) -> None:
        super().__init__()
        self.add_alexnet_branch(cruise_altitude)
        self.fc6 = nn.Linear(9216, 4096)
        self.drp6 = nn.Dropout(dropout)
        self.fc7 = nn.Linear(4096, 4096)
        self.drp7 = nn.Dropout(dropout)
        self.fc8 = nn.Linear(4096, 1)

    def head(self, alex: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """fc6, fc7 (after ReLU and dropout) and the sigmoid score."""
        h6 = self.drp6(F.relu(self.fc6(alex)))
        h7 = self.drp7(F.relu(self.fc7(h6)))
        return torch.sigmoid(self.fc8(h7)).squeeze(1), h6, h7

    def forward_features(
        self, x: torch.Tensor, layers: Sequence[str] = ()
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Score a batch ``[B, 3, 227, 227]`` in [0, 1]; return (scores [B], {layer: [B, D]})."""
        unknown = set(layers) - FEATURE_LAYERS.keys()
        if unknown:
            raise ValueError(f"unknown memnet-baseline layer(s): {', '.join(sorted(unknown))}")
        alex = self.alexnet_branch(x)
        score, h6, h7 = self.head(alex)
        values = {"alexnet": alex, "fc6": h6, "fc7": h7}
        return score, {name: values[name] for name in layers}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]


def initial_memnet(resmem_state: dict[str, torch.Tensor] | None = None) -> MemNetBaseline:
    """A baseline ready to train: conv1..conv5 from ResMem's published weights (if given), head random."""
    model = MemNetBaseline()
    if resmem_state is not None:
        branch = {k: v for k, v in resmem_state.items() if k.startswith(BRANCH_PREFIXES)}
        missing, _ = load_into(model, branch, "ResMem's AlexNet-branch weights", strict=False)
        missing = [k for k in missing if k.startswith(BRANCH_PREFIXES)]
        if missing:
            raise WeightsMismatchError(f"the ResMem weights lack AlexNet-branch tensors: {', '.join(missing[:5])}")
    return model


def _initial(options: dict) -> MemNetBaseline:
    published = options.get("init", "published") == "published"
    return initial_memnet(published_resmem_state(options.get("resmem_weights")) if published else None)


MEMNET_BASELINE = register(
    ModelSpec(
        name="memnet-baseline",
        description="MemNet-style baseline: ResMem's AlexNet-style branch and an fc head (train it: memscore train)",
        build=MemNetBaseline,
        default_weights=no_published_weights("memnet-baseline"),
        preprocess=resmem_transform,
        input_size=227,
        feature_layers=FEATURE_LAYERS,
        default_features=DEFAULT_FEATURES,
        aliases=("memnet",),
        source="after MemNet (Khosla et al. 2015); you train it (memscore train), starting from ResMem's conv1..conv5",
        licence="yours; it starts from ResMem's non-commercial weights",
        recipe=TrainRecipe(_initial, (), "ResMem's AlexNet-branch weights, new fc6..fc8 head"),
        cam_layer="conv5",  # its last convolution, 256 x 13 x 13 at 227 px
    )
)
