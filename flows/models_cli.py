"""memscore models: list the registered models, their size, layers, source, licence and weights.

For each model: its description, parameter count and float32 size (built on the
meta device: nothing is allocated or downloaded), its feature layers, where it
comes from, the licence of its weights, and whether those weights are on this
machine (``present: PATH``, or ``absent:`` and what to do). Nothing is read or
hashed, so the listing is quick.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser


def run(args: argparse.Namespace) -> int:
    from memscore.models.registry import available_models, get_model_spec
    from memscore.models.weights import WeightsNotFoundError

    for name in available_models():
        spec = get_model_spec(name)
        layers = ", ".join(f"{layer} ({dim})" for layer, dim in spec.feature_layers.items())
        try:
            parameters, size = spec.size()
            counted = f"{parameters:,} ({size / 2**20:,.0f} MiB in float32)"
        except WeightsNotFoundError as error:  # ModelUnavailableError: an optional package is missing
            counted = f"unknown ({error})"
        print(f"{name}: {spec.description}\n  parameters: {counted}"
              f"\n  layers: {layers}\n  default features: {', '.join(spec.default_features)}")
        if spec.source:
            print(f"  source: {spec.source}")
        if spec.licence:
            print(f"  licence: {spec.licence}")
        print(f"  weights: {spec.weights_status()}")
        if spec.recipe is not None:
            print(f"  trainable: {spec.recipe.note}")
    return 0
