"""Registry entries for the models memscore ships.

Each entry ties a module class to its weights, preprocessing and layers.
"""

from __future__ import annotations

from memscore.models import resmem
from memscore.models.preprocess import resmem_transform
from memscore.models.registry import ModelSpec, register
from memscore.models.weights import resmem_package_weights

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

# --- models trained with `memscore train` (no published weights: pass --weights CHECKPOINT) ---
from memscore.models import m3m, memnet  # noqa: E402
from memscore.models.resmem_retrain import no_published_weights  # noqa: E402

RESMEM_RETRAIN = register(
    ModelSpec(
        name="resmem-retrain",
        description="ResMemRetrain: ResMem with its ResNet-152 retrained too (train it: memscore train)",
        build=resmem.ResMem,
        default_weights=no_published_weights("resmem-retrain"),
        preprocess=resmem_transform,
        input_size=227,
        feature_layers=resmem.FEATURE_LAYERS,
        default_features=resmem.DEFAULT_FEATURES,
    )
)

MEMNET_BASELINE = register(
    ModelSpec(
        name="memnet-baseline",
        description="MemNet-style baseline: ResMem's AlexNet-style branch and an fc head (train it: memscore train)",
        build=memnet.MemNetBaseline,
        default_weights=no_published_weights("memnet-baseline"),
        preprocess=resmem_transform,
        input_size=227,
        feature_layers=memnet.FEATURE_LAYERS,
        default_features=memnet.DEFAULT_FEATURES,
        aliases=("memnet",),
    )
)

M3M = register(
    ModelSpec(
        name="m3m",
        description="M3M: ResMem plus an LR-ASPP segmentation branch (train it: memscore train)",
        build=m3m.m3m_lraspp,
        default_weights=no_published_weights("m3m"),
        preprocess=resmem_transform,
        input_size=227,
        feature_layers=m3m.FEATURE_LAYERS,
        default_features=m3m.DEFAULT_FEATURES,
    )
)

M3M_DEEPLABV3 = register(
    ModelSpec(
        name="m3m-deeplabv3",
        description="M3M with a DeepLabV3 ResNet-50 segmentation branch (train it: memscore train)",
        build=m3m.m3m_deeplabv3,
        default_weights=no_published_weights("m3m-deeplabv3"),
        preprocess=resmem_transform,
        input_size=227,
        feature_layers=m3m.FEATURE_LAYERS,
        default_features=m3m.DEFAULT_FEATURES,
    )
)

from memscore.models import aim  # noqa: E402,F401  (registers resmem-retrain-aim, aim-resnet18, resnet18-nomem)
