"""The model registry: a model name maps to everything needed to run it.

A :class:`ModelSpec` says how to build the module (on the meta device, without
random initialisation), where its default weights come from, its preprocessing
and the layers it can export. Adding a model is one :func:`register` call beside
its definition; the pipeline only ever asks :func:`get_model_spec` and
:func:`load_model`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image
from torch import nn

from memscore.errors import UserError
from memscore.models.weights import WeightsMismatchError, WeightsRef, local_weights, read_weights_file


class UnknownModelError(UserError, ValueError):
    """No model is registered under that name."""


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
    _load_builtin_models()
    return sorted({spec.name for spec in _REGISTRY.values()})


def get_model_spec(name: str) -> ModelSpec:
    """The spec registered under ``name`` (case-insensitive)."""
    _load_builtin_models()
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


_builtins_loaded = False


def _load_builtin_models() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    from memscore.models import builtin  # noqa: F401  (registers the built-in models)
