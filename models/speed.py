"""Inference settings that make scoring faster without changing what it computes.

A :class:`SpeedSettings` says how a loaded model runs: the backend (PyTorch, or
ONNX Runtime on the CPU: :mod:`models.onnx_runtime`), numeric precision
(``fp32``, or ``bf16``/``fp16`` autocast), memory format (channels_last), folding
BatchNorm into the preceding convolutions, intra-op threads and, optionally,
``torch.compile``. :func:`prepare` applies them to a :class:`~models.registry.LoadedModel`
and returns an :class:`InferenceRunner` that takes uint8 batches and gives scores
and feature vectors back as NumPy arrays.

What each option does to the scores (measured by ``benchmarks/bench_score.py``;
figures in docs/performance.md):

- ``channels_last`` and ``fold_batchnorm``: the same float32 arithmetic in another
  order; scores move by about 1e-7, far inside the 1e-5 parity with the official
  package. Both are on by default on every device.
- ``fp16``/``bf16``: autocast. Measured on an H100 (README, 512 photos against the
  CPU float32 reference): fp16 moved scores by at most 1.2e-3 with Spearman
  0.99997 and ran faster (4,312 images/s) than bf16 (4,177 images/s, 9.0e-3,
  Spearman 0.99911), so fp16 is the CUDA default. On CPU float32 stays the
  default: it is the reference, and CPUs without native fp16/bf16 run them slower.
- ``compile``: off by default; compiling ResNet-152 takes minutes on a small CPU.
- ``backend="onnxruntime"``: the folded model exported to ONNX and run by ONNX
  Runtime (CPU, float32 only; optional dependency). Scores within about 4e-7 of
  PyTorch's.

Float32 on the CPU with the defaults stays the reference: parity with the official
``resmem`` package within 1e-5 (tests/test_score_parity.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from memscore.models.preprocess import to_model_input
from memscore.models.registry import LoadedModel

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BACKENDS = ("torch", "onnxruntime")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class SpeedSettings:
    """How a model runs. ``None`` fields take the device's default (:func:`default_speed`)."""

    precision: str = "auto"
    channels_last: bool | None = None
    fold_batchnorm: bool | None = None
    threads: int | None = None
    compile: bool = False
    backend: str = "torch"


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> fp32 on CPU and MPS, fp16 autocast on CUDA (measured closer to fp32 than bf16, and faster)."""
    precision = (precision or "auto").lower()
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "fp16"
    return "fp32"


def check_backend(backend: str, device: torch.device, precision: str = "auto", compile: bool = False) -> str:
    """Validate a backend for ``device`` and ``precision``; return its canonical name.

    ``onnxruntime`` runs on the CPU in float32 and cannot be combined with
    ``torch.compile``; each mismatch raises ValueError saying what to change, and
    missing packages raise :class:`models.onnx_runtime.BackendUnavailableError`.
    """
    backend = (backend or "torch").lower()
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; use {', '.join(BACKENDS)}")
    if backend == "onnxruntime":
        if device.type != "cpu":
            raise ValueError(f"--backend onnxruntime runs on the CPU (the device is {device}); use --device cpu")
        if resolve_precision(precision, device) != "fp32":
            raise ValueError("--backend onnxruntime runs in float32; use --precision fp32 or auto")
        if compile:
            raise ValueError("--compile is for the torch backend; leave it out with --backend onnxruntime")
        from memscore.models.onnx_runtime import require_onnxruntime

        require_onnxruntime()  # BackendUnavailableError: what to pip install
    return backend


def default_speed(device: torch.device, requested: SpeedSettings | None = None) -> SpeedSettings:
    """Fill the unset fields of ``requested`` with the defaults for ``device``."""
    requested = requested or SpeedSettings()
    backend = check_backend(requested.backend, device, requested.precision, requested.compile)
    exported = backend != "torch"  # ONNX Runtime chooses its own memory layout
    return replace(
        requested,
        backend=backend,
        precision=resolve_precision(requested.precision, device),
        channels_last=False if exported else (
            (device.type in ("cpu", "cuda")) if requested.channels_last is None else requested.channels_last),
        fold_batchnorm=True if requested.fold_batchnorm is None else requested.fold_batchnorm,
    )


def fold_batchnorm(module: nn.Module) -> int:
    """Fold eval-mode BatchNorm into the convolution before it, in place; return how many.

    Handles torchvision's ResNet layout (``conv1``/``bn1`` .. ``conv3``/``bn3`` in a
    block or the stem, ``downsample = Sequential(conv, bn)``); other modules are
    left as they are. Idempotent: a folded BatchNorm becomes ``Identity``.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = 0
    for parent in list(module.modules()):
        for i in (1, 2, 3):
            conv, bn = getattr(parent, f"conv{i}", None), getattr(parent, f"bn{i}", None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and not bn.training:
                setattr(parent, f"conv{i}", fuse_conv_bn_eval(conv, bn))
                setattr(parent, f"bn{i}", nn.Identity())
                folded += 1
        down = getattr(parent, "downsample", None)
        if (isinstance(down, nn.Sequential) and len(down) == 2 and isinstance(down[0], nn.Conv2d)
                and isinstance(down[1], nn.BatchNorm2d) and not down[1].training):
            parent.downsample = nn.Sequential(fuse_conv_bn_eval(down[0], down[1]), nn.Identity())
            folded += 1
    return folded


def configure_backends(device: torch.device) -> None:
    """Process-wide switches that only pay off (cudnn autotuning for fixed input shapes)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def autocast(device: torch.device, precision: str):
    """The autocast context for ``precision`` (nothing for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


class Pending:
    """Model outputs of one batch on their way back to the host."""

    def __init__(self, score: torch.Tensor, feats: dict[str, torch.Tensor], event=None) -> None:
        self._score, self._feats, self._event = score, feats, event

    def result(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Wait for the copies (CUDA) and return (scores [B], {layer: [B, D]}) as float32 arrays."""
        if self._event is not None:
            self._event.synchronize()
        return self._score.numpy(), {name: value.numpy() for name, value in self._feats.items()}


class InferenceRunner:
    """Runs a prepared model on uint8 batches ``[B, 3, H, W]``.

    :meth:`submit` starts a batch and returns a :class:`Pending`; on CUDA the
    kernels and the copies back to pinned host memory are queued without waiting,
    so the caller can start the next batch before reading this one's results.
    """

    def __init__(self, loaded: LoadedModel, speed: SpeedSettings, forward) -> None:
        self.loaded = loaded
        self.speed = speed
        self.device = loaded.device
        self._forward = forward

    def submit(self, pixels: torch.Tensor, layers: Sequence[str]) -> Pending:
        device = self.device
        x = to_model_input(pixels.to(device, non_blocking=True))  # uint8 over the bus, floats on the device
        if self.speed.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast(device, self.speed.precision):
            score, feats = self._forward(x, layers)
        if device.type != "cuda":
            return Pending(score.float().cpu(), {k: v.float().cpu() for k, v in feats.items()})
        host_score = _to_host(score)
        host_feats = {k: _to_host(v) for k, v in feats.items()}
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(device))
        return Pending(host_score, host_feats, event)

    def __call__(self, pixels: torch.Tensor, layers: Sequence[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return self.submit(pixels, layers).result()


def _to_host(value: torch.Tensor) -> torch.Tensor:
    host = torch.empty(value.shape, dtype=torch.float32, pin_memory=True)
    host.copy_(value.float(), non_blocking=True)
    return host


def prepare(loaded: LoadedModel, speed: SpeedSettings | None = None) -> InferenceRunner:
    """Apply ``speed`` (defaults for the model's device) to ``loaded`` and return a runner.

    Memory format and BatchNorm folding change the module in place (both keep
    float32 results within about 1e-7), so a process keeps one copy of the weights.
    """
    device = loaded.device
    speed = default_speed(device, speed)
    configure_backends(device)
    if speed.threads is not None and device.type == "cpu":
        torch.set_num_threads(max(1, speed.threads))
    module = loaded.module
    if speed.fold_batchnorm:
        fold_batchnorm(module)
    if speed.backend == "onnxruntime":
        from memscore.models.onnx_runtime import onnxruntime_forward

        return InferenceRunner(loaded, speed, onnxruntime_forward(loaded, bool(speed.fold_batchnorm), speed.threads))
    module.to(memory_format=torch.channels_last if speed.channels_last else torch.contiguous_format)
    forward = module.forward_features
    if speed.compile:
        forward = torch.compile(forward, dynamic=False)
    return InferenceRunner(loaded, speed, forward)
