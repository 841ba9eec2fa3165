"""ViTMem (Hagen & Espeseth 2023, Brain Priority Lab): a vision transformer regressing memorability.

Architecture (checked against the ``vitmem`` 1.0.1 package): timm's
``vit_base_patch16_224_miil`` (ViT-B/16, 12 blocks, 768 wide, no qkv bias) with a
one-output head and a sigmoid; the module keeps the package's attribute name
``vit``, so its checkpoint's keys (``vit.*``) load unchanged. Input: Resize((256,
256)) bilinear (PIL), CenterCrop(224), ToTensor; the package's Normalize has mean
0 and std 1, i.e. none.

Weights: the authors publish ``vitmem_base_patch16_224_miil_v1-f580d24a.pth``
(https://huggingface.co/brainpriority/vitmem) and their package downloads it into
torch's hub cache (``$TORCH_HOME/hub/checkpoints/``) at first use. memscore never
downloads: it reads the file from that folder (or ``--weights PATH``) and says in
one line where to put it when it is absent. timm is needed to build the network
(pip install 'memscore[vitmem]'); nothing is downloaded (``pretrained=False``).

Licence: the vitmem package is MIT-licensed (Brain Priority Lab); the checkpoint is
the authors' download, under their terms (see the Hugging Face page).

Exportable layers: ``pre_logits`` (768, the normalised class token the head
reads) and ``patch_mean`` (768, the mean of the normalised patch tokens).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from memscore.models.preprocess import ResizeCrop
from memscore.models.registry import ModelSpec, register
from memscore.models.weights import HubCheckpoint, ModelUnavailableError

ARCH = "vit_base_patch16_224_miil"
FEATURE_LAYERS: dict[str, int] = {"pre_logits": 768, "patch_mean": 768}
DEFAULT_FEATURES: tuple[str, ...] = ("pre_logits",)
CHECKPOINT = HubCheckpoint(
    model="vitmem",
    filename="vitmem_base_patch16_224_miil_v1-f580d24a.pth",
    url="https://huggingface.co/brainpriority/vitmem/resolve/main/vitmem_base_patch16_224_miil_v1-f580d24a.pth",
    sha256_prefix="f580d24a",
)
vitmem_transform = ResizeCrop(256, 224)


def create_vit() -> nn.Module:
    """timm's ViT-B/16 (MIIL) with one output, random weights; ModelUnavailableError when timm is missing."""
    try:
        import timm
    except ImportError:
        raise ModelUnavailableError("model 'vitmem' needs timm: pip install 'memscore[vitmem]'") from None
    return timm.create_model(ARCH, pretrained=False, num_classes=1)


class ViTMem(nn.Module):
    """ViTMem: ``forward(x)`` gives scores ``[B]`` for ``x`` ``[B, 3, 224, 224]`` in [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.vit = create_vit()

    def forward_features(
        self, x: torch.Tensor, layers: Sequence[str] = ()
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Score a batch ``[B, 3, 224, 224]`` in [0, 1]; return (scores [B], {layer: [B, 768]})."""
        unknown = set(layers) - FEATURE_LAYERS.keys()
        if unknown:
            raise ValueError(f"unknown ViTMem layer(s): {', '.join(sorted(unknown))}")
        tokens = self.vit.forward_features(x)  # [B, 1 + 196, 768], after the final norm
        pre_logits = self.vit.forward_head(tokens, pre_logits=True)
        score = torch.sigmoid(self.vit.head(pre_logits)).squeeze(1)
        values = {"pre_logits": pre_logits}
        if "patch_mean" in layers:
            values["patch_mean"] = tokens[:, self.vit.num_prefix_tokens:].mean(dim=1)
        return score, {name: values[name] for name in layers}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]


VITMEM = register(
    ModelSpec(
        name="vitmem",
        description="ViTMem (Hagen & Espeseth 2023): ViT-B/16 memorability regressor, checkpoint from the torch hub cache",
        build=ViTMem,
        default_weights=CHECKPOINT,
        preprocess=vitmem_transform,
        input_size=224,
        feature_layers=FEATURE_LAYERS,
        default_features=DEFAULT_FEATURES,
        source="Hagen & Espeseth 2023 (Brain Priority Lab); PyPI package vitmem 1.0.1; checkpoint "
               f"{CHECKPOINT.url}",
        licence="vitmem package: MIT; checkpoint: the authors' terms (Hugging Face brainpriority/vitmem)",
        cam_layer=None,  # a ViT has no convolutional feature map for Grad-CAM: maps by occlusion
    )
)
