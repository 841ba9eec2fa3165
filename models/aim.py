"""AiM ("Memory for Artificial Intelligence"): a learned memory for a whole ResNet, ported to PyTorch.

Source: Joy Lunkad's post "Breakthrough: Can Giving Memory to Entire Neural Nets be
Revolutionary?" (3 March 2021, github.com/joy-lunkad/aim), a Keras proof of concept on
keras-applications' ResNet50. What belongs here: the wrapper (:class:`AiMResNet`), its
memory layout and update blocks, the two memorability models built on it
(:class:`ResMemAiM`, :class:`MemorabilityResNet`) and their registry entries (at the end).

The design, as in the post:

- **Memory**: a tensor ``[C, h, w]`` (post: 7x7x1024 = 50,176 floats) that is the output
  of a 1x1 convolution (with bias) of a constant input, so it is learned through that
  convolution's weights.
- **Read**: before every residual block the memory is laid out to the block's spatial
  size (:func:`layout_memory`, the post's ``memory_reshape_block``) and concatenated to
  the block's input as extra channels; only the block's first convolution sees them (the
  shortcut, identity or projection, sees the input alone, as in the post's code).
- **Write**: after the first block of every stage a memory update block
  (:class:`MemoryUpdate`): the block's output concatenated with the laid-out memory, three
  3x3 convolutions (16, 16, 32 filters, "same" padding, each with batch norm and a
  sigmoid), average pooling back to the memory's ``h x w``, and a 1x1 convolution to
  ``C`` channels. Its output is the memory from then on. After the first update the
  memory is per image (``[B, C, h, w]``), since it is computed from each image's features.

Choices where the post is unclear or its code disagrees with its text (what and why):

1. *Which memory the blocks read.* The post's code gives ``conv_block`` the current
   (updated) memory but ``identity_block`` reads the module-level ``Memory``, a second
   1x1 convolution of the constant input that is never updated (it ignores its
   ``memory`` argument). The text says the updated memory is what the network passes on,
   so here every block reads the current memory and there is one initial convolution.
2. *The constant input.* The post feeds a ``memory_input`` of shape 7x7x1024 but does not
   say with what. A constant that is the same at every position would make the memory the
   same at every position (a 1x1 convolution cannot create spatial variation), leaving
   1,024 free values instead of 50,176; so the constant is a fixed standard-normal tensor
   (seed 0) kept as a buffer, saved with the weights. Its 49 columns are linearly
   independent, so the memory can take any value.
3. *Layout for any size.* The post reshapes the flat memory (NHWC order) to
   ``(H, W, M / (H*W))`` when the map has fewer pixels than the memory has floats
   (which needs exact division: 50,176 = 2**10 * 49 and its maps are 112, 56, 28, 14, 7),
   and otherwise pads the flat memory to a square of side ``ceil(sqrt(M))`` and zero-pads
   that to ``H x W`` around the centre. Here the division rounds up (the flat memory is
   zero-padded at the end to ``ceil(M/(H*W)) * H * W``), which is the post's reshape when
   it divides; the centred square is used when it fits, else the flat memory fills the map
   row by row. The number of memory channels each block's convolution takes is fixed when
   the module is built, from ``input_size`` (the registry's input size); at another input
   size the memory is laid out for ``input_size`` and resized to the block's actual size
   with nearest-neighbour interpolation (each position still reads a value the convolution
   was trained on), so any input size the backbone accepts works.
4. *Pooling back to the memory's size.* The post uses ``AveragePooling2D`` with a factor
   ``H // h``, which only gives ``h x w`` when ``H`` is a multiple of ``h``; here adaptive
   average pooling to ``(h, w)`` (the same operation when it divides; with 227-pixel input
   the maps are 57, 29, 15, 8).
5. *Backbone.* torchvision's ResNets as they are (stride-2 stem; the post's Keras ResNet50
   used a stride-1 first convolution, four times the compute). The memory channels of a
   widened first convolution start at **zero** (``memory_weight_init="zeros"``, default), so
   a wrapped pretrained network computes exactly what it computed before and training
   starts from there (ResMem's published weights for ``resmem-retrain-aim``); ``"kaiming"``
   draws them like torchvision draws its convolutions (the post: he_normal for all).
   The update blocks' 3x3 convolutions use He-normal initialisation and the 1x1 convolutions
   Glorot-uniform with zero bias, as Keras's defaults in the post; their convolutions keep
   their bias before batch norm, as in the post.
6. *Across batches.* The post's goal "the updated memory should be passed on to next
   batches" is, in its code, only what training does to the weights: nothing is carried
   from one batch to the next (so scores do not depend on batch order). Same here.

Parameter overhead (see docs/aim.md for the check against the post's ResNet-50 figures):
``C*C + C`` for the initial convolution, ``out * k * kh * kw`` per widened first
convolution (``k`` memory channels at that block), and per update block
``(in + k) * 9 * 16 + 16 + 9 * 16 * 16 + 16 + 9 * 16 * 32 + 32 + 2 * (16 + 16 + 32) + 32 * C + C``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

POST_MEMORY_SHAPE = (1024, 7, 7)  # (C, h, w); the post's 7x7x1024
UPDATE_FILTERS = (16, 16, 32)  # the post's memory update block filters
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def memory_channels(memory_numel: int, height: int, width: int) -> int:
    """Channels the memory takes at an ``height x width`` map: ``ceil(M / (H*W))`` (at least 1)."""
    return max(1, math.ceil(memory_numel / (height * width)))


def layout_memory(memory: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The post's ``memory_reshape_block``: memory ``[B, C, h, w]`` -> ``[B, k, height, width]``.

    The memory is flattened in the post's (Keras, NHWC) order. When the map has fewer
    pixels than the memory has floats, it is zero-padded at the end to ``k*height*width``
    with ``k = ceil(M / (height*width))`` and reshaped to ``(height, width, k)``; otherwise
    (``k = 1``) it is placed as a centred ``s x s`` square (``s = ceil(sqrt(M))``, the flat
    memory centred in it) zero-padded to the map, or fills the map row by row when that
    square does not fit.
    """
    batch = memory.shape[0]
    flat = memory.permute(0, 2, 3, 1).reshape(batch, -1)
    numel = flat.shape[1]
    k = memory_channels(numel, height, width)
    if k > 1 or height * width == numel:
        flat = F.pad(flat, (0, k * height * width - numel))
        return flat.reshape(batch, height, width, k).permute(0, 3, 1, 2)
    side = math.isqrt(numel - 1) + 1 if numel > 1 else 1
    if side <= height and side <= width:
        extra = side * side - numel
        square = F.pad(flat, (extra // 2, extra - extra // 2)).reshape(batch, 1, side, side)
        top, left = (height - side) // 2, (width - side) // 2
        return F.pad(square, (left, width - side - left, top, height - side - top))
    return F.pad(flat, (0, height * width - numel)).reshape(batch, 1, height, width)


class MemoryUpdate(nn.Module):
    """The post's memory update block: ``[B, in, H, W]`` features + laid-out memory -> new memory ``[B, C, h, w]``.

    conv 3x3 -> BN -> sigmoid, three times (``filters``), adaptive average pooling to
    ``(h, w)``, conv 1x1 to ``C`` channels (linear).
    """

    def __init__(self, in_channels: int, memory_shape: Sequence[int], filters: Sequence[int] = UPDATE_FILTERS,
                 kernel_size: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for width in filters:
            conv = nn.Conv2d(channels, width, kernel_size, padding=kernel_size // 2)
            nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")  # Keras he_normal
            nn.init.zeros_(conv.bias)
            layers += [conv, nn.BatchNorm2d(width), nn.Sigmoid()]
            channels = width
        self.body = nn.Sequential(*layers)
        self.memory_hw = (int(memory_shape[1]), int(memory_shape[2]))
        self.write = nn.Conv2d(channels, int(memory_shape[0]), 1)
        nn.init.xavier_uniform_(self.write.weight)  # Keras glorot_uniform
        nn.init.zeros_(self.write.bias)

    def forward(self, features: torch.Tensor, memory_map: torch.Tensor) -> torch.Tensor:
        h = self.body(torch.cat((features, memory_map.expand(features.shape[0], -1, -1, -1)), 1))
        return self.write(F.adaptive_avg_pool2d(h, self.memory_hw))


def _out_size(size: tuple[int, int], module: nn.Module) -> tuple[int, int]:
    """Spatial size after a Conv2d or MaxPool2d (PyTorch's formula)."""
    def pair(value: Any) -> tuple[int, int]:
        return (value, value) if isinstance(value, int) else tuple(value)  # type: ignore[return-value]

    k, s, p, d = (pair(getattr(module, name)) for name in ("kernel_size", "stride", "padding", "dilation"))
    return tuple((size[i] + 2 * p[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i in range(2))  # type: ignore[return-value]


def _block_out_size(block: nn.Module, size: tuple[int, int]) -> tuple[int, int]:
    for name in ("conv1", "conv2", "conv3"):
        if hasattr(block, name):
            size = _out_size(size, getattr(block, name))
    return size


def _widen(conv: nn.Conv2d, extra: int, init: str) -> nn.Conv2d:
    """``conv`` with ``extra`` more input channels; the old weights kept, the new ones zero or Kaiming."""
    if conv.groups != 1:
        raise ValueError("AiM widens a block's first convolution, which must not be grouped")
    wide = nn.Conv2d(conv.in_channels + extra, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                     conv.dilation, 1, conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        if init == "zeros":
            wide.weight.zero_()
        else:
            nn.init.kaiming_normal_(wide.weight, mode="fan_out", nonlinearity="relu")  # as torchvision's ResNet
        wide.weight[:, : conv.in_channels].copy_(conv.weight)
        if conv.bias is not None:
            wide.bias.copy_(conv.bias)
    return wide


class AiMResNet(nn.Module):
    """A torchvision ResNet (any depth, any block) with the AiM memory; ``memory_shape=None``: no memory.

    Takes over the ResNet's children under their own names (``conv1``, ``bn1``,
    ``layer1``..``layer4``, ``fc``; a block's widened ``conv1`` keeps its name), so a
    ResNet state dict loads after :func:`widen_state_dict`. Memory parts: ``memory_init``
    (the 1x1 convolution), buffer ``memory_input`` (the constant) and ``memory_update``
    (one :class:`MemoryUpdate` per stage). ``forward(x)`` gives the ResNet's output
    (``fc`` of the pooled features); :meth:`forward_with_memory` also the pooled features
    ``[B, D]`` and the final memory ``[B, C, h, w]`` (None without memory).
    """

    def __init__(self, resnet: ResNet, memory_shape: Sequence[int] | None = POST_MEMORY_SHAPE,
                 input_size: int = 224, update_filters: Sequence[int] = UPDATE_FILTERS,
                 memory_weight_init: str = "zeros") -> None:
        super().__init__()
        if memory_weight_init not in ("zeros", "kaiming"):
            raise ValueError(f"memory_weight_init must be zeros or kaiming, not {memory_weight_init!r}")
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc"):
            setattr(self, name, getattr(resnet, name))
        self.stages = ("layer1", "layer2", "layer3", "layer4")
        self.memory_shape = tuple(int(v) for v in memory_shape) if memory_shape is not None else None
        self.input_size = input_size
        self.block_layouts: list[tuple[int, int, int]] = []  # per block: design (H, W) and memory channels k
        self.update_layouts: list[tuple[int, int, int]] = []  # per stage: the update block's (H, W, k)
        if self.memory_shape is None:
            return
        channels, mh, mw = self.memory_shape
        numel = channels * mh * mw
        size = _out_size(_out_size((input_size, input_size), self.conv1), self.maxpool)
        updates = []
        for stage in self.stages:
            for index, block in enumerate(getattr(self, stage)):
                k = memory_channels(numel, *size)
                self.block_layouts.append((size[0], size[1], k))
                block.conv1 = _widen(block.conv1, k, memory_weight_init)
                size = _block_out_size(block, size)
                if index == 0:
                    k_out = memory_channels(numel, *size)
                    self.update_layouts.append((size[0], size[1], k_out))
                    out_channels = block.bn3.num_features if isinstance(block, Bottleneck) else block.bn2.num_features
                    updates.append(MemoryUpdate(out_channels + k_out, self.memory_shape, update_filters))
        self.memory_init = nn.Conv2d(channels, channels, 1)
        nn.init.xavier_uniform_(self.memory_init.weight)
        nn.init.zeros_(self.memory_init.bias)
        constant = torch.randn(1, channels, mh, mw, generator=torch.Generator().manual_seed(0), device="cpu")
        self.register_buffer("memory_input", constant.to(self.memory_init.weight.device))
        self.memory_update = nn.ModuleList(updates)

    def initial_memory(self) -> torch.Tensor:
        """The memory before any update, ``[1, C, h, w]``: the 1x1 convolution of the constant."""
        return self.memory_init(self.memory_input)

    def _memory_map(self, memory: torch.Tensor, layout: tuple[int, int, int], size: Sequence[int]) -> torch.Tensor:
        mapped = layout_memory(memory, layout[0], layout[1])
        if (layout[0], layout[1]) != (size[0], size[1]):
            mapped = F.interpolate(mapped, size=(int(size[0]), int(size[1])), mode="nearest")
        return mapped

    def forward_with_memory(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(output ``[B, ...]`` of ``fc``, pooled features ``[B, D]``, final memory ``[B, C, h, w]`` or None)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        memory = self.initial_memory() if self.memory_shape is not None else None
        position = 0
        for stage_index, stage in enumerate(self.stages):
            for index, block in enumerate(getattr(self, stage)):
                extra = None
                if memory is not None:
                    extra = self._memory_map(memory, self.block_layouts[position], x.shape[-2:])
                    extra = extra.expand(x.shape[0], -1, -1, -1)
                x = _block_forward(block, x, extra)
                position += 1
                if memory is not None and index == 0:
                    mapped = self._memory_map(memory, self.update_layouts[stage_index], x.shape[-2:])
                    memory = self.memory_update[stage_index](x, mapped)
        pooled = torch.flatten(self.avgpool(x), 1)
        if memory is not None and memory.shape[0] != x.shape[0]:  # a ResNet without blocks: never updated
            memory = memory.expand(x.shape[0], -1, -1, -1)
        return self.fc(pooled), pooled, memory

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_memory(x)[0]


def _block_forward(block: nn.Module, x: torch.Tensor, memory_map: torch.Tensor | None) -> torch.Tensor:
    """torchvision's BasicBlock/Bottleneck forward with the memory concatenated to the first convolution's input."""
    identity = x if block.downsample is None else block.downsample(x)
    out = block.relu(block.bn1(block.conv1(x if memory_map is None else torch.cat((x, memory_map), 1))))
    out = block.bn2(block.conv2(out))
    if isinstance(block, Bottleneck):
        out = block.bn3(block.conv3(block.relu(out)))
    return block.relu(out + identity)


def widen_state_dict(module: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` (a plain ResNet's, or ResMem's) made to fit ``module`` with AiM: each block's ``conv1.weight``
    that has fewer input channels than the module's is padded with the module's current memory-channel
    weights (zeros by default), so the wrapped network starts as the original. Other tensors are unchanged."""
    own = module.state_dict()
    result = dict(state)
    for key, value in state.items():
        target = own.get(key)
        if (target is not None and key.endswith("conv1.weight") and value.dim() == 4 and target.dim() == 4
                and value.shape[0] == target.shape[0] and value.shape[2:] == target.shape[2:]
                and value.shape[1] < target.shape[1]):
            wide = target.detach().clone().to(value.dtype)
            wide[:, : value.shape[1]] = value
            result[key] = wide
    return result


def memory_keys(module: nn.Module) -> list[str]:
    """State-dict keys of the memory parts (not in a plain ResNet's or ResMem's weights)."""
    return [key for key in module.state_dict() if ".memory_" in f".{key}"]


# ----------------------------------------------------------------------------- memorability models

from memscore.models.resmem import DEFAULT_FEATURES as RESMEM_DEFAULT_FEATURES  # noqa: E402
from memscore.models.resmem import FEATURE_LAYERS as RESMEM_FEATURE_LAYERS  # noqa: E402
from memscore.models.resmem import ResMem  # noqa: E402


class ResMemAiM(ResMem):
    """ResMem whose ResNet-152 (``features``) has the post's 7x7x1024 memory, laid out for 227x227 input."""

    def __init__(self, memory_shape: Sequence[int] = POST_MEMORY_SHAPE) -> None:
        super().__init__()
        self.features = AiMResNet(self.features, memory_shape, input_size=227)


class MemorabilityResNet(nn.Module):
    """A torchvision ResNet trunk (with AiM memory, or without: ``memory_shape=None``) and a linear head with a sigmoid.

    Input: ``[B, 3, H, W]`` in [0, 1] (ResMem's preprocessing); ImageNet mean/std
    normalisation happens inside, so ImageNet-pretrained trunks fit. ``forward(x)``:
    scores ``[B]``; feature layers ``pool`` (the trunk's pooled features) and, with
    memory, ``memory`` (the final memory, flattened in (C, h, w) order).
    """

    def __init__(self, arch: str = "resnet18", memory_shape: Sequence[int] | None = (64, 7, 7),
                 input_size: int = 227, num_outputs: int = 1, memory_weight_init: str = "zeros") -> None:
        super().__init__()
        import torchvision.models as tvm

        resnet = getattr(tvm, arch)(weights=None)
        resnet.fc = nn.Linear(resnet.fc.in_features, num_outputs)
        self.features = AiMResNet(resnet, memory_shape, input_size, memory_weight_init=memory_weight_init)

    def forward_features(self, x: torch.Tensor, layers: Sequence[str] = ()) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(scores ``[B]``, {layer: ``[B, D]``})."""
        known = {"pool", "memory"} if self.features.memory_shape is not None else {"pool"}
        unknown = set(layers) - known
        if unknown:
            raise ValueError(f"unknown layer(s): {', '.join(sorted(unknown))}; choose from {', '.join(sorted(known))}")
        mean = torch.tensor(_IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(_IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        out, pooled, memory = self.features.forward_with_memory((x - mean) / std)
        values = {"pool": pooled}
        if memory is not None:
            values["memory"] = torch.flatten(memory, 1)
        return torch.sigmoid(out).squeeze(1), {name: values[name] for name in layers}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]


# ----------------------------------------------------------------------------- training starts

def initial_resmem_aim(resmem_state: dict[str, torch.Tensor] | None = None) -> ResMemAiM:
    """ResMemAiM ready to train: every ResMem tensor from ``resmem_state`` (widened first convolutions
    padded with zeros, so it starts as ResMem), the memory parts fresh; None: random (for tests)."""
    from memscore.models.weights import WeightsMismatchError, load_into

    torch.manual_seed(0)
    model = ResMemAiM()
    if resmem_state is not None:
        missing, _ = load_into(model, widen_state_dict(model, resmem_state), "the ResMem weights", strict=False)
        wanted = sorted(set(missing) - set(memory_keys(model)))
        if wanted:
            raise WeightsMismatchError(f"the ResMem weights lack {', '.join(wanted[:5])}")
    return model


def initial_resnet(memory: bool, published: bool) -> MemorabilityResNet:
    """aim-resnet18 / resnet18-nomem ready to train: the trunk from torchvision's ImageNet ResNet-18
    (``published``; torch hub cache, downloaded if reachable) or random (seed 0), a new head."""
    from memscore.models.weights import WeightsMismatchError, WeightsNotFoundError, load_into

    torch.manual_seed(0)
    model = MemorabilityResNet(memory_shape=AIM_RESNET18_MEMORY if memory else None)
    if published:
        from torchvision.models import ResNet18_Weights

        try:
            state = ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=False, check_hash=True)
        except Exception as error:  # noqa: BLE001 - offline machines, proxies, partial downloads
            raise WeightsNotFoundError(
                f"could not load torchvision's ImageNet ResNet-18 weights ({ResNet18_Weights.IMAGENET1K_V1.url}): "
                f"{type(error).__name__}: {error}. Put that file in the torch hub cache or train with --init random"
            ) from None
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        missing, _ = load_into(model.features, widen_state_dict(model.features, state), "ImageNet ResNet-18", strict=False)
        wanted = sorted(set(missing) - set(memory_keys(model.features)) - {"fc.weight", "fc.bias"})
        if wanted:
            raise WeightsMismatchError(f"the ResNet-18 weights lack {', '.join(wanted[:5])}")
    return model


# ----------------------------------------------------------------------------- registry entries

AIM_RESNET18_MEMORY = (64, 7, 7)  # 3,136 floats: the post's 7x7 grid with 64 channels, CPU-sized


def _register() -> None:
    from memscore.models.preprocess import resmem_transform
    from memscore.models.registry import ModelSpec, TrainRecipe, register
    from memscore.models.weights import no_published_weights, published_resmem_state

    post = "AiM, J. Lunkad 2021 (github.com/joy-lunkad/aim), ported in memscore.models.aim; you train it (memscore train)"

    def published(options: dict[str, Any]) -> bool:
        return options.get("init", "published") == "published"

    def spec(name: str, description: str, build: Any, layers: dict[str, int], default: tuple[str, ...],
             licence: str, recipe: TrainRecipe, cam_layer: str) -> None:
        register(ModelSpec(name=name, description=description, build=build, default_weights=no_published_weights(name),
                           preprocess=resmem_transform, input_size=227, feature_layers=layers, default_features=default,
                           source=post, licence=licence, recipe=recipe, cam_layer=cam_layer))

    # Grad-CAM layers: the last convolution of the last block (the blocks run through _block_forward,
    # which calls each block's convolutions, not the block or the stage as a module).

    spec("resmem-retrain-aim", "ResMemRetrain with AiM memory (7x7x1024) in its ResNet-152; +4,921,024 parameters "
         "(+3.7%) over resmem (train it: memscore train)", ResMemAiM, RESMEM_FEATURE_LAYERS, RESMEM_DEFAULT_FEATURES,
         "yours; it starts from ResMem's non-commercial weights",
         TrainRecipe(lambda o: initial_resmem_aim(published_resmem_state(o.get("resmem_weights")) if published(o) else None),
                     (), "published ResMem weights (memory channels zero), new memory, everything trainable"),
         "features.layer4.2.conv3")
    spec("aim-resnet18", "ResNet-18 with AiM memory (7x7x64) and a sigmoid head, CPU-sized; +527,744 parameters (+4.7%) "
         "over resnet18-nomem (train it: memscore train)", lambda: MemorabilityResNet(memory_shape=AIM_RESNET18_MEMORY),
         {"pool": 512, "memory": 3136}, ("pool",), "yours (--init published starts from torchvision's ImageNet ResNet-18)",
         TrainRecipe(lambda o: initial_resnet(True, published(o)), (), "ImageNet ResNet-18 (--init published) or random"),
         "features.layer4.1.conv2")
    spec("resnet18-nomem", "aim-resnet18's twin without memory: ResNet-18 and a sigmoid head (train it: memscore train)",
         lambda: MemorabilityResNet(memory_shape=None), {"pool": 512}, ("pool",),
         "yours (--init published starts from torchvision's ImageNet ResNet-18)",
         TrainRecipe(lambda o: initial_resnet(False, published(o)), (), "ImageNet ResNet-18 (--init published) or random"),
         "features.layer4.1.conv2")


_register()
