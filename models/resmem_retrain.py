"""Trainable models: which models ``memscore train`` can train and how each starts.

``resmem-retrain`` is :class:`models.resmem.ResMem` (same layout, same parameter
names) initialised from the published weights with the ResNet-152 trainable too,
the seed's ResMemRetrain. ``resmem`` itself can also be fine-tuned: the published
weights with the ResNet-152 frozen, as ResMem was trained. ``memnet-baseline`` and
``m3m`` are described in their modules.

Each :class:`TrainableModel` says how to build the starting module (published
ResMem weights, pretrained segmenter) and which parts stay frozen; frozen parts
are also kept in eval mode so their BatchNorm statistics do not drift.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from memscore.models.resmem import ResMem
from memscore.models.weights import WeightsMismatchError, WeightsNotFoundError, load_state_dict, resmem_package_weights


def no_published_weights(name: str) -> Callable[[], Any]:
    """A ``default_weights`` for models without published weights: a clear error."""

    def default_weights():
        raise WeightsNotFoundError(
            f"model {name!r} has no published weights: train one with "
            f"`memscore train --model {name} ...` and pass its checkpoint with --weights PATH "
            "(the exported model.pt, or any checkpoint the training wrote)"
        )

    default_weights.__name__ = f"no_published_weights_{name.replace('-', '_')}"
    return default_weights


def load_into(module: nn.Module, state: dict[str, torch.Tensor], what: str, strict: bool = True):
    """``module.load_state_dict(state)``; tensors that do not fit are a one-line :class:`WeightsMismatchError`."""
    try:
        return module.load_state_dict(state, strict=strict)
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
        detail = next((line for line in lines if "size mismatch" in line), lines[-1] if lines else "")
        raise WeightsMismatchError(f"{what} do not fit {type(module).__name__}: {detail[:300]}") from None


def published_resmem_state(path: str | None = None) -> dict[str, torch.Tensor]:
    """The published ResMem state dict (or one from ``path``)."""
    from memscore.models.weights import local_weights

    ref = local_weights(path) if path else resmem_package_weights()
    return load_state_dict(ref, "ResMem weights")


@dataclass(frozen=True)
class TrainableModel:
    """How ``memscore train`` starts a model and what it trains."""

    name: str
    initial: Callable[..., nn.Module]  # (options: dict) -> module with starting weights
    frozen: tuple[str, ...]  # child modules that are not trained by default
    note: str


def _initial_resmem(options: dict[str, Any]) -> ResMem:
    model = ResMem()
    if options.get("init", "published") == "published":
        path = options.get("resmem_weights")
        load_into(model, published_resmem_state(path), f"ResMem weights {path or '(resmem package)'}")
    return model


def _initial_memnet(options: dict[str, Any]) -> nn.Module:
    from memscore.models.memnet import initial_memnet

    published = options.get("init", "published") == "published"
    return initial_memnet(published_resmem_state(options.get("resmem_weights")) if published else None)


def _initial_m3m(options: dict[str, Any]) -> nn.Module:
    from memscore.models.m3m import initial_m3m, segmenter_state_dict

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


TRAINABLE: dict[str, TrainableModel] = {
    "resmem": TrainableModel("resmem", _initial_resmem, ("features",), "published weights, ResNet-152 frozen"),
    "resmem-retrain": TrainableModel("resmem-retrain", _initial_resmem, (), "published weights, everything trainable"),
    "memnet-baseline": TrainableModel(
        "memnet-baseline", _initial_memnet, (), "ResMem's AlexNet-branch weights, new fc6..fc8 head"
    ),
    "m3m": TrainableModel(
        "m3m", _initial_m3m, ("segmenter", "features"),
        "ResMem weights (ResNet-152 frozen), pretrained LR-ASPP segmenter (frozen), new segmentation convs",
    ),
    "m3m-deeplabv3": TrainableModel(
        "m3m-deeplabv3", lambda o: _initial_m3m({**o, "segmenter": "deeplabv3"}), ("segmenter", "features"),
        "as m3m with a DeepLabV3 ResNet-50 segmenter",
    ),
}


def trainable_model(name: str) -> TrainableModel:
    """The training recipe for a registered model name."""
    from memscore.models.registry import get_model_spec

    spec = get_model_spec(name)
    try:
        return TRAINABLE[spec.name]
    except KeyError:
        raise ValueError(f"model {spec.name!r} cannot be trained; trainable: {', '.join(TRAINABLE)}") from None


def freeze(model: nn.Module, parts: tuple[str, ...]) -> None:
    """Freeze the named child modules (no gradients)."""
    for part in parts:
        getattr(model, part).requires_grad_(False)


def set_train_mode(model: nn.Module) -> None:
    """``model.train()``, but children without trainable parameters stay in eval mode."""
    model.train()
    for child in model.children():
        params = list(child.parameters())
        if params and not any(p.requires_grad for p in params):
            child.eval()


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(all parameters, trainable parameters)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable
