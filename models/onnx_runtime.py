"""Scoring on the CPU with ONNX Runtime instead of PyTorch (``--backend onnxruntime``).

What belongs here: exporting a loaded model to ONNX, the on-disk cache of the
exported file, and the forward function that runs a batch through an ONNX Runtime
session. :func:`models.speed.prepare` picks it when ``SpeedSettings.backend`` is
``onnxruntime``; everything around the forward (uint8 to [0, 1], the results as
NumPy arrays) stays the same as with PyTorch.

How: the prepared module (BatchNorm folded) is exported once with ``torch.onnx``'s
``torch.export``-based exporter, with a dynamic batch dimension and the score plus
*every* feature layer of the model as outputs (they are all on the way to the
score, so computing them costs nothing extra; a batch fetches only the layers it
was asked for). The file is cached under ``MEMSCORE_CACHE_DIR`` (default
``~/.cache/memscore``) in ``onnx/``, keyed by the model, its weights digest, the
folding and the torch version, so only the first run on a machine pays for the
export (about 12 s for ResMem on 2 cores; the file is the size of the weights). If the
cache cannot be written, the export goes to a temporary folder for that run (with a
warning) and is deleted once the session has loaded it.

Why: on the 2-core development machine ONNX Runtime's CPU kernels ran ResMem's
float32 forward faster than PyTorch's (docs/performance.md), with scores
within about 4e-7 of PyTorch's (the same float32 arithmetic, in another order).

Optional: it needs ``pip install 'memscore[onnx]'`` (onnxruntime, onnx, onnxscript).
CPU and float32 only.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from memscore.errors import UserError
from memscore.models.registry import LoadedModel
from memscore.models.weights import cache_dir

EXPORT_FORMAT = 1  # bump when the exported graph changes for the same inputs
OPSET = 18

Forward = Callable[[torch.Tensor, Sequence[str]], tuple[torch.Tensor, dict[str, torch.Tensor]]]


class BackendUnavailableError(UserError, RuntimeError):
    """The backend's optional packages are not installed."""


def require_onnxruntime() -> None:
    """Raise :class:`BackendUnavailableError` (saying what to install) unless the packages import."""
    import importlib.util

    missing = [name for name in ("onnxruntime", "onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise BackendUnavailableError(
            f"--backend onnxruntime needs {', '.join(missing)}: pip install 'memscore[onnx]'"
        )


class _AllOutputs(nn.Module):
    """The model with a flat output tuple: (score, feature layer 1, feature layer 2, ...)."""

    def __init__(self, module: nn.Module, layers: Sequence[str]) -> None:
        super().__init__()
        self.module = module
        self.layers = tuple(layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        score, feats = self.module.forward_features(x, self.layers)
        return (score, *(feats[name] for name in self.layers))


def exported_path(loaded: LoadedModel, folded: bool) -> Path:
    """Where the exported ONNX file of ``loaded`` lives in the cache."""
    key = "|".join((
        f"format={EXPORT_FORMAT}", f"opset={OPSET}", loaded.spec.name, loaded.weights.digest,
        f"folded={folded}", f"input={loaded.spec.input_size}", f"torch={torch.__version__}",
        ",".join(loaded.spec.feature_layers),
    ))
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir() / "onnx" / f"{loaded.spec.name}-{digest}.onnx"


def export_onnx(loaded: LoadedModel, destination: Path) -> Path:
    """Export ``loaded.module`` (as it is now: folded or not) to ``destination``, atomically.

    Written to a temporary name and renamed, so a crash or a concurrent process
    never leaves a half-written file under the final name.
    """
    require_onnxruntime()
    layers = tuple(loaded.spec.feature_layers)
    wrapper = _AllOutputs(loaded.module, layers).eval()
    size = loaded.spec.input_size
    sample = torch.rand(2, 3, size, size)
    batch = torch.export.Dim("batch", min=1, max=65536)
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = destination.with_name(f".{destination.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with torch.no_grad():
            program = torch.onnx.export(
                wrapper, (sample,), dynamo=True, input_names=["pixels"],
                output_names=["score", *layers], dynamic_shapes={"x": {0: batch}},
                opset_version=OPSET, optimize=True, verbose=False,
            )
        program.save(str(temporary))
        os.replace(temporary, destination)
    finally:
        temporary.unlink(missing_ok=True)
    return destination


def onnxruntime_forward(loaded: LoadedModel, folded: bool, threads: int | None = None) -> Forward:
    """A forward function ``(x [B, 3, S, S] float32 in [0, 1], layers) -> (scores, {layer: features})``.

    Exports the model on first use (cached on disk), then opens one ONNX Runtime
    session with ``threads`` intra-op threads (default: torch's thread count).
    :func:`models.speed.prepare` calls it after :func:`models.speed.check_backend` has
    checked the device, precision and packages.
    """
    import onnxruntime

    path = exported_path(loaded, folded)
    scratch: Path | None = None
    if not path.exists():
        try:
            export_onnx(loaded, path)
        except OSError as error:  # a read-only or full cache folder: export for this process only
            import tempfile
            import warnings

            scratch = Path(tempfile.mkdtemp(prefix="memscore-onnx-"))
            warnings.warn(f"cannot write the ONNX cache ({error}); exporting to {scratch} for this run only",
                          RuntimeWarning, stacklevel=2)
            path = export_onnx(loaded, scratch / path.name)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(1, threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    if scratch is not None:  # the session holds the model now; the file would only fill the disk
        import shutil

        shutil.rmtree(scratch, ignore_errors=True)

    def forward(x: torch.Tensor, layers: Sequence[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        layers = loaded.spec.check_features(layers)
        pixels = np.ascontiguousarray(x.detach().to(torch.float32).numpy())
        outputs = session.run(["score", *layers], {"pixels": pixels})
        score = torch.from_numpy(outputs[0])
        return score, {name: torch.from_numpy(value) for name, value in zip(layers, outputs[1:])}

    return forward
