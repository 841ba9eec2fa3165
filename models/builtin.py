"""Registry entries for the models memscore ships.

Each entry ties a module class to its weights, preprocessing and layers.
"""

from __future__ import annotations

from models import resmem
from models.preprocess import resmem_transform
from models.registry import ModelSpec, register
from models.weights import resmem_package_weights

RESMEM = register(
    ModelSpec(
        name="resmem",
        description="ResMem (Needell & Bainbridge 2021), published weights from the resmem package",
        build=resmem.ResMem,
        default_weights=resmem_package_weights,
        preprocess=resmem_transform,
        input_size=227,
        feature_layers=resmem.FEATURE_LAYERS,
        default_features=resmem.DEFAULT_FEATURES,
    )
)
