"""memscore models: list the registered models, their size and their feature layers."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser


def run(args: argparse.Namespace) -> int:
    from memscore.models.registry import available_models, get_model_spec

    for name in available_models():
        spec = get_model_spec(name)
        layers = ", ".join(f"{layer} ({dim})" for layer, dim in spec.feature_layers.items())
        parameters, size = spec.size()
        print(f"{name}: {spec.description}\n  parameters: {parameters:,} ({size / 2**20:,.0f} MiB in float32)"
              f"\n  layers: {layers}\n  default features: {', '.join(spec.default_features)}")
    return 0
