"""Module-level helpers ``memscore train`` applies to any model: freezing parts, train mode, counts.

What belongs here: operations on a built ``nn.Module`` that do not depend on which
model it is. How each model *starts* (its weights, its frozen parts) is its
:class:`~memscore.models.registry.TrainRecipe`, registered in the model's own file.
"""

from __future__ import annotations

from torch import nn


def freeze(model: nn.Module, parts: tuple[str, ...]) -> None:
    """Freeze the named child modules (no gradients); AttributeError for a name the model lacks."""
    for part in parts:
        getattr(model, part).requires_grad_(False)


def set_train_mode(model: nn.Module) -> None:
    """``model.train()``, but children without trainable parameters stay in eval mode.

    Frozen parts keep their BatchNorm running statistics and run without dropout.
    """
    model.train()
    for child in model.children():
        params = list(child.parameters())
        if params and not any(p.requires_grad for p in params):
            child.eval()


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(all parameters, trainable parameters), counted in elements."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable
