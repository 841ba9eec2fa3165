"""The model registry: a model name maps to everything needed to run and train it.

A :class:`ModelSpec` says how to build the module (on the meta device, without
random initialisation), where its default weights come from (and their source
and licence), its preprocessing, the layers it can export and, for models
``memscore train`` can train, its :class:`TrainRecipe` (how the module starts,
which parts stay frozen).

As in timm, each model's own file registers its spec(s) with :func:`register`
and ``models/__init__.py`` imports the model files; this module imports no model.
Adding a model is one file plus one import line in ``models/__init__.py``. The
pipeline only ever asks :func:`get_model_spec`, :func:`load_model` and
:func:`trainable_model`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from torch import nn

from memscore.errors import UserError
from memscore.models.weights import (
    NoPublishedWeights,
    WeightsMismatchError,
    WeightsNotFoundError,
    WeightsRef,
    local_weights,
    read_weights_file,
)

__all__ = [
    "LoadedModel", "ModelSpec", "TrainRecipe", "UnknownModelError", "WeightsMismatchError", "available_models",
    "build_with_weights", "get_model_spec", "load_model", "register", "resolve_weights", "trainable_model",
]


class UnknownModelError(UserError, ValueError):
    """No model is registered under that name."""


@dataclass(frozen=True)
class TrainRecipe:
    """How ``memscore train`` starts a model and what it trains.

    ``initial(options)`` returns the starting module (``options`` is
    ``TrainConfig.model_options()``: ``init`` = ``published`` | ``random``,
    ``resmem_weights``, ``segmenter``, ``segmenter_weights``); ``frozen`` names the
    child modules not trained by default (they are also kept in eval mode).
    """

    initial: Callable[[dict[str, Any]], nn.Module]
    frozen: tuple[str, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class ModelSpec:
    """How to build, load, feed and read one memorability model."""

    name: str
    description: str
    build: Callable[[], nn.Module]
    default_weights: Callable[[], WeightsRef]
    preprocess: Callable[[Image.Image], torch.Tensor]
    input_size: int
    feature_layers: dict[str, int]
    default_features: tuple[str, ...]
    aliases: tuple[str, ...] = field(default=())
    source: str = ""  # where the architecture and weights come from (paper, package, URL)
    licence: str = ""  # the weights' licence terms, in a few words
    recipe: TrainRecipe | None = None  # None: `memscore train` cannot train it
    # The convolutional layer whose output Grad-CAM reads for memorability maps (`memscore
    # report --maps`): a submodule name for ``nn.Module.get_submodule`` whose forward runs in
    # ``forward`` (its output ``[B, C, h, w]``); None: no such layer (a ViT), maps by occlusion.
    cam_layer: str | None = None

    def weights_status(self) -> str:
        """``present: PATH``, ``absent: <what to do>`` or ``none published`` for the default weights.

        The weights kinds of :mod:`memscore.models.weights` are only located (nothing is
        read or hashed); any other ``default_weights`` callable is called.
        """
        if isinstance(self.default_weights, NoPublishedWeights):
            return f"none published (train it: memscore train --model {self.name} ..., then --weights PATH)"
        locate = getattr(self.default_weights, "locate", None)
        try:
            path = locate() if locate is not None else self.default_weights().path
        except (WeightsNotFoundError, WeightsMismatchError) as error:
            return f"absent: {error}"
        return f"present: {path}"

    def check_features(self, layers: Sequence[str]) -> tuple[str, ...]:
        """Validate requested feature layers; raise ValueError naming the valid ones."""
        unknown = [name for name in layers if name not in self.feature_layers]
        if unknown:
            raise ValueError(
                f"model {self.name!r} has no layer(s) {', '.join(unknown)}; "
                f"choose from {', '.join(self.feature_layers)}"
            )
        return tuple(dict.fromkeys(layers))

    def size(self) -> tuple[int, int]:
        """(parameters, bytes of its parameters and buffers in float32): built on the meta
        device, so nothing is allocated or downloaded."""
        with torch.device("meta"):
            module = self.build()
        parameters = sum(p.numel() for p in module.parameters())
        buffers = sum(b.numel() for b in module.buffers() if b.is_floating_point())
        return parameters, 4 * (parameters + buffers)


@dataclass
class LoadedModel:
    """A model ready to score: module in eval mode on its device, and its weights."""

    spec: ModelSpec
    module: nn.Module
    weights: WeightsRef
    device: torch.device


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add a model to the registry (by its name and aliases)."""
    for key in (spec.name, *spec.aliases):
        _REGISTRY[key.lower()] = spec
    return spec


def available_models() -> list[str]:
    """Names of the registered models."""
    return sorted({spec.name for spec in _REGISTRY.values()})


def get_model_spec(name: str) -> ModelSpec:
    """The spec registered under ``name`` (case-insensitive)."""
    try:
        return _REGISTRY[name.lower()]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}; available: {', '.join(available_models())}"
        ) from None


def resolve_weights(spec: ModelSpec, weights: str | None = None) -> WeightsRef:
    """The weights a run will use: a given file, or the model's default."""
    return local_weights(weights) if weights else spec.default_weights()


def build_with_weights(spec: ModelSpec, ref: WeightsRef) -> nn.Module:
    """Build ``spec``'s module on the meta device and assign the weights to it.

    No random initialisation runs and no second copy of the weights is made.
    """
    state, trained_as = read_weights_file(ref.path)
    if trained_as is not None and _canonical_name(trained_as) != spec.name:
        trained_as = _canonical_name(trained_as)
        raise WeightsMismatchError(
            f"{ref.path} holds {trained_as!r} weights (memscore train --model {trained_as}), "
            f"not {spec.name!r}: load it as {trained_as}"
        )
    with torch.device("meta"):
        module = spec.build()
    try:
        missing, unexpected = module.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as error:  # tensor shapes differ
        first = str(error).strip().splitlines()
        detail = next((line.strip() for line in first if "size mismatch" in line), first[0] if first else "")
        raise WeightsMismatchError(f"weights {ref.path} do not fit model {spec.name!r}: {detail}") from None
    if missing or unexpected:
        raise WeightsMismatchError(
            f"weights {ref.path} do not fit model {spec.name!r}: "
            f"missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}"
        )
    return module


def _canonical_name(name: str) -> str:
    """The registered name for ``name`` (aliases and case resolved); ``name`` itself if unknown."""
    try:
        return get_model_spec(name).name
    except UnknownModelError:
        return name


def load_model(name: str, weights: str | None = None, device: str | torch.device = "cpu") -> LoadedModel:
    """Build a registered model with its weights, in eval mode, on ``device``."""
    spec = get_model_spec(name)
    ref = resolve_weights(spec, weights)
    module = build_with_weights(spec, ref).eval().requires_grad_(False)
    target = torch.device(device)
    module = module.to(target)
    return LoadedModel(spec=spec, module=module, weights=ref, device=target)


def trainable_model(name: str) -> TrainRecipe:
    """The training recipe of a registered model; ValueError naming the trainable ones if it has none."""
    spec = get_model_spec(name)
    if spec.recipe is None:
        trainable = dict.fromkeys(s.name for s in _REGISTRY.values() if s.recipe is not None)
        raise ValueError(f"model {spec.name!r} cannot be trained; trainable: {', '.join(trainable)}")
    return spec.recipe
