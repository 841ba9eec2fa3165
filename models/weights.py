"""Where trained weights come from, how they are loaded, and their digest.

What belongs here: every way a model finds its weights (a file shipped inside a
PyPI package, a checkpoint in torch's hub cache, a file the user names, none at
all), reading a weights file safely, and loading a state dict into a module with
one-line errors. Model files describe their own weights with these helpers; this
module imports no model.

Weights are referred to by a :class:`WeightsRef`: a local file and the sha256 of
its bytes. The digest goes into every output row, so a rerun with other weights
is never mistaken for the same results. Hashing a large file costs a second or
two, so digests are cached in ``~/.cache/memscore/digests.json`` (override with
``MEMSCORE_CACHE_DIR``), keyed by path, size and modification time.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from memscore.errors import UserError


class WeightsNotFoundError(UserError, RuntimeError):
    """The weights a model needs are not on this machine."""


class WeightsMismatchError(UserError, ValueError):
    """A weights file does not fit the model it was given to (or is no state dict at all)."""


class ModelUnavailableError(WeightsNotFoundError):
    """An optional package a model needs (timm for vitmem) is not installed."""


@dataclass(frozen=True)
class WeightsRef:
    """A weights file and the digest recorded in output rows (``sha256:<hex>``)."""

    path: Path
    digest: str


def cache_dir() -> Path:
    """memscore's cache folder (digests, downloaded weights)."""
    return Path(os.environ.get("MEMSCORE_CACHE_DIR", Path.home() / ".cache" / "memscore"))


def file_digest(path: Path) -> str:
    """``sha256:<hex>`` of a file's bytes, cached by (path, size, mtime)."""
    path = Path(path).resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    store = cache_dir() / "digests.json"
    try:
        known = json.loads(store.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            sha.update(block)
    digest = f"sha256:{sha.hexdigest()}"
    known[key] = digest
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        temporary = store.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(known))
        os.replace(temporary, store)
    except OSError:
        pass  # a read-only home only costs the hash next time
    return digest


@dataclass(frozen=True)
class PackageWeights:
    """Weights shipped as a file inside an installed PyPI package (``resmem/model.pt``).

    Found without importing the package (importing it may build networks or
    download). Call it for the :class:`WeightsRef`; :meth:`locate` only finds the file.
    """

    package: str
    filename: str
    extra: str  # memscore's pip extra that installs the package

    def locate(self) -> Path:
        """The file's path; :class:`WeightsNotFoundError` saying what to install when absent."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise WeightsNotFoundError(
                f"{self.package} weights not found: the {self.package!r} package is not installed "
                f"(pip install 'memscore[{self.extra}]'), or pass --weights PATH"
            )
        for folder in spec.submodule_search_locations:
            candidate = Path(folder) / self.filename
            if candidate.is_file():
                return candidate
        raise WeightsNotFoundError(f"the {self.package!r} package is installed but has no {self.filename}; reinstall it")

    def __call__(self) -> WeightsRef:
        path = self.locate()
        return WeightsRef(path, file_digest(path))


@dataclass(frozen=True)
class HubCheckpoint:
    """A checkpoint its authors publish for torch hub's cache: ``$TORCH_HOME/hub/checkpoints/<filename>``.

    memscore never downloads it; when the file is absent the error says where to
    put it. ``sha256_prefix`` is the hash prefix torch hub puts in the file name; a
    file with another hash is refused (it is not the published checkpoint).
    """

    model: str
    filename: str
    url: str
    sha256_prefix: str

    def folder(self) -> Path:
        """torch hub's checkpoint folder (``$TORCH_HOME/hub/checkpoints``, default ``~/.cache/torch/...``)."""
        return Path(torch.hub.get_dir()) / "checkpoints"

    def locate(self) -> Path:
        """The checkpoint's path; :class:`WeightsNotFoundError` saying where to put it when absent."""
        candidate = self.folder() / self.filename
        if not candidate.is_file():
            raise WeightsNotFoundError(
                f"{self.model} weights not found: download {self.url} into {self.folder()}/ "
                "(or set TORCH_HOME), or pass --weights PATH"
            )
        return candidate

    def __call__(self) -> WeightsRef:
        path = self.locate()
        ref = WeightsRef(path, file_digest(path))
        if not ref.digest.startswith(f"sha256:{self.sha256_prefix}"):
            raise WeightsMismatchError(
                f"{path} is not the published checkpoint (its sha256 is {ref.digest[7:19]}..., "
                f"the name says {self.sha256_prefix}...): download {self.url} again"
            )
        return ref


@dataclass(frozen=True)
class NoPublishedWeights:
    """The ``default_weights`` of a model without published weights: a clear error naming the fix."""

    model: str

    def locate(self) -> Path:
        raise WeightsNotFoundError(
            f"model {self.model!r} has no published weights: train one with "
            f"`memscore train --model {self.model} ...` and pass its checkpoint with --weights PATH "
            "(the exported model.pt, or any checkpoint the training wrote)"
        )

    def __call__(self) -> WeightsRef:
        self.locate()
        raise AssertionError("unreachable")  # pragma: no cover


def no_published_weights(name: str) -> NoPublishedWeights:
    """A ``default_weights`` for models without published weights (see :class:`NoPublishedWeights`)."""
    return NoPublishedWeights(name)


resmem_package_weights = PackageWeights("resmem", "model.pt", "resmem")
"""The published ResMem weights, ``resmem/model.pt`` of the ``resmem`` package (non-commercial licence)."""


def local_weights(path: str | os.PathLike[str]) -> WeightsRef:
    """A weights file given by the user (``--weights PATH``)."""
    candidate = Path(path).expanduser()
    if not candidate.is_file():
        raise WeightsNotFoundError(f"weights file not found: {candidate}")
    return WeightsRef(candidate, file_digest(candidate))


def load_state_dict(ref: WeightsRef, what: str = "weights") -> dict[str, torch.Tensor]:
    """Load a plain state dict (or a memscore checkpoint's ``model`` entry) safely."""
    return read_weights_file(ref.path, what)[0]


_TORCH_ISSUE = ("Please file an issue with the following so that we can make `weights_only=True` compatible "
                "with your use case:")
_TORCH_ADVICE = ("In PyTorch", "Re-running", "weights_only", "Check the documentation", "Do it only", "You can use")


def load_error_message(error: BaseException, what: str) -> str:
    """One line for a file ``torch.load(weights_only=True)`` refused or could not read.

    A file holding pickled code keeps torch's warning and what it found (``Weights only load
    failed: ... unsupported GLOBAL posix.system ...``) but not torch's advice to load it with
    ``weights_only=False``, which would run that code."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        found = [line for line in lines[1:] if not line.startswith(_TORCH_ADVICE)]
        detail = " ".join(found).replace(_TORCH_ISSUE, "").strip()[:300]
        if "global" in detail.lower():  # a pickled function or class: code that would run on load
            return (f"{what} refused: the file holds pickled code, which memscore never loads "
                    f"(Weights only load failed: {detail})")
        return f"{what} are not a PyTorch state dict: {type(error).__name__}: {detail or lines[0][:200]}"
    detail = (lines or [""])[0][:200]
    return f"{what} are not a PyTorch state dict: {type(error).__name__}: {detail}"


def read_weights_file(path: str | os.PathLike[str], what: str = "weights") -> tuple[dict[str, torch.Tensor], str | None]:
    """(state dict, the model a memscore checkpoint says it was trained as, else None).

    ``weights_only=True`` refuses pickled code; ``mmap=True`` avoids a second copy.
    A file that is no PyTorch state dict (a CSV, a truncated download) is a one-line
    :class:`WeightsMismatchError`.
    """
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # not a zip-format file: mmap is unsupported there
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - unpickling, zip and format errors of a wrong file
        raise WeightsMismatchError(load_error_message(error, f"{what} {path}")) from None
    trained_as = None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        meta = state.get("memscore")
        trained_as = meta.get("model") if isinstance(meta, dict) and isinstance(meta.get("model"), str) else None
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsMismatchError(f"{what} {path} are not a PyTorch state dict")
    return state, trained_as


def load_into(module: nn.Module, state: dict[str, torch.Tensor], what: str, strict: bool = True):
    """``module.load_state_dict(state)``; tensors that do not fit are a one-line :class:`WeightsMismatchError`."""
    try:
        return module.load_state_dict(state, strict=strict)
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
        detail = next((line for line in lines if "size mismatch" in line), lines[-1] if lines else "")
        raise WeightsMismatchError(f"{what} do not fit {type(module).__name__}: {detail[:300]}") from None


def published_resmem_state(path: str | None = None) -> dict[str, torch.Tensor]:
    """The published ResMem state dict (or one from ``path``): the starting point of every ResMem-based recipe."""
    ref = local_weights(path) if path else resmem_package_weights()
    return load_state_dict(ref, "ResMem weights")
