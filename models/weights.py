"""Where trained weights come from, how they are loaded, and their digest.

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

from memscore.errors import UserError


class WeightsNotFoundError(UserError, RuntimeError):
    """The weights a model needs are not on this machine."""


class WeightsMismatchError(UserError, ValueError):
    """A weights file does not fit the model it was given to (or is no state dict at all)."""


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


def resmem_package_weights() -> WeightsRef:
    """The published ResMem weights shipped as ``resmem/model.pt`` by the ``resmem`` package.

    Found without importing the package (its import builds nothing we need).
    """
    spec = importlib.util.find_spec("resmem")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsNotFoundError(
            "ResMem weights not found: the 'resmem' package is not installed "
            "(pip install 'memscore[resmem]'), or pass --weights PATH"
        )
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / "model.pt"
        if candidate.is_file():
            return WeightsRef(candidate, file_digest(candidate))
    raise WeightsNotFoundError("the 'resmem' package is installed but has no model.pt; reinstall it")


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
