"""The run folder OUT of a training run, owned by one object: :class:`RunFolder`.

It knows every file a run writes (``checkpoints/last.pt``, the staged best weights
``checkpoints/best.pt``, ``model.pt``, ``model_card.json``, ``metrics.parquet``,
``splits.parquet``, ``test_predictions.parquet``) and writes each whole or not at
all (:mod:`memscore.storage.atomic`: a temporary renamed into place locally, one PUT
on object stores). It also does the two repairs a killed run may need when OUT is
used again: deleting half-written temporaries, and settling staged weights
(:meth:`RunFolder.settle_weights`). The order of the writes of an epoch is the
training loop's (:mod:`memscore.tasks.train`); this module gives each step one name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import platform
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from memscore.storage import atomic
from memscore.storage.uris import Location, open_location
from memscore.tasks.train_config import CHECKPOINT_FORMAT, STAGED_WEIGHTS, EpochMetrics, TrainingError

LAST_CHECKPOINT = "checkpoints/last.pt"
WEIGHTS = "model.pt"
CARD = "model_card.json"


class RunFolder:
    """OUT (a folder or any fsspec URI) of one training run.

    Raises :class:`TrainingError` when OUT is a file."""

    def __init__(self, uri: str, storage_options: dict[str, Any] | None = None) -> None:
        self.location: Location = open_location(uri, storage_options)
        try:
            is_file = self.location.fs.isfile(self.location.root)
        except OSError:
            is_file = False
        if is_file:
            raise TrainingError(f"--out {uri} is a file; OUT is a folder (or bucket prefix) for the run's files")

    @property
    def uri(self) -> str:
        return self.location.uri

    def path(self, name: str) -> str:
        """Where ``name`` lives under OUT (as the filesystem spells it)."""
        return self.location.join(name)

    def exists(self, name: str) -> bool:
        try:
            return self.location.fs.exists(self.path(name))
        except OSError:
            return False

    # ------------------------------------------------------------------ writing

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write ``OUT/name`` whole or not at all."""
        atomic.write_bytes(self.location, name, data)

    def write_parquet(self, name: str, table: pa.Table) -> None:
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        self.write_bytes(name, buffer.getvalue())

    def save_torch(self, name: str, obj: Any) -> str:
        """torch.save ``obj`` to ``OUT/name`` atomically; return the sha256 digest of the bytes
        (``sha256:<hex>``). Locally the bytes go straight to the file: no second in-memory
        copy of a large model."""
        if self.location.is_local:
            with atomic.local_temporary(self.location, name) as temporary:
                torch.save(obj, temporary)
                sha = hashlib.sha256()
                with open(temporary, "rb") as handle:
                    for block in iter(lambda: handle.read(1 << 22), b""):
                        sha.update(block)
            return "sha256:" + sha.hexdigest()
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        data = buffer.getvalue()
        self.write_bytes(name, data)
        return "sha256:" + hashlib.sha256(data).hexdigest()

    def digest(self, name: str) -> str:
        """sha256 of ``OUT/name``'s bytes, as :meth:`save_torch` returns it."""
        sha = hashlib.sha256()
        with self.location.fs.open(self.path(name), "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                sha.update(block)
        return "sha256:" + sha.hexdigest()

    # ------------------------------------------------------------------ the checkpoint and the weights

    def load_checkpoint(self) -> dict[str, Any] | None:
        """``OUT/checkpoints/last.pt`` if there is one (a dict with ``model``, ``optimizer`` and
        ``memscore``: epoch, metrics, best digest, ...). Raises :class:`TrainingError` for a file
        that is not a memscore checkpoint, or one torch refuses to load safely."""
        if not self.exists(LAST_CHECKPOINT):
            return None
        with self.location.fs.open(self.path(LAST_CHECKPOINT), "rb") as handle:
            data = handle.read()
        try:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001  # refused (unsafe or corrupt): one line, no traceback
            raise TrainingError(f"{self.path(LAST_CHECKPOINT)} is not a checkpoint memscore can load safely "
                                f"({refusal_reason(error)}); it was not loaded: delete it, or use another --out "
                                "or --no-resume") from None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise TrainingError(f"{self.path(LAST_CHECKPOINT)} is not a memscore training checkpoint")
        return state

    def save_checkpoint(self, state: dict[str, Any]) -> str:
        """Write ``checkpoints/last.pt`` (``state`` gets the checkpoint format tag)."""
        return self.save_torch(LAST_CHECKPOINT, {"format": CHECKPOINT_FORMAT, **state})

    def stage_weights(self, state: dict[str, Any]) -> str:
        """Write a new best's weights to ``checkpoints/best.pt``; ``model.pt`` once the next
        checkpoint commits them (:meth:`publish_weights`). Returns their digest."""
        return self.save_torch(STAGED_WEIGHTS, state)

    def publish_weights(self) -> None:
        """Rename the staged best weights to ``OUT/model.pt`` (atomic locally; a server-side copy,
        then the staged object's removal, on object stores: a kill between the two leaves both,
        and publishing again is harmless)."""
        if self.location.is_local:
            atomic.rename(self.path(STAGED_WEIGHTS), self.path(WEIGHTS))
        else:
            self.location.fs.mv(self.path(STAGED_WEIGHTS), self.path(WEIGHTS))

    def load_weights(self) -> dict[str, Any]:
        """``OUT/model.pt`` (the best weights so far)."""
        with self.location.fs.open(self.path(WEIGHTS), "rb") as handle:
            return torch.load(io.BytesIO(handle.read()), map_location="cpu", weights_only=True)

    # ------------------------------------------------------------------ repairs after a kill

    def remove_stale_temporaries(self) -> int:
        """Delete the half-written ``.*.inprogress`` files a killed run left in a local OUT; return how many."""
        return atomic.remove_temporaries(self.location, ("", "checkpoints"))

    def settle_weights(self, committed: str | None) -> str | None:
        """Finish or undo the export of weights that a killed run left staged in ``checkpoints/best.pt``.

        ``committed`` is the best-weights digest of the checkpoint resumed from (None: no checkpoint,
        or not resuming). Staged weights with that digest were committed: they become ``model.pt``
        ("published"). Other staged weights were never committed (the run died before its
        checkpoint landed): they are deleted ("discarded"), and model.pt stays the checkpoint's.
        None when nothing was staged."""
        if not self.exists(STAGED_WEIGHTS):
            return None
        if committed and self.digest(STAGED_WEIGHTS) == committed:
            self.publish_weights()
            return "published"
        self.location.fs.rm_file(self.path(STAGED_WEIGHTS))
        return "discarded"

    # ------------------------------------------------------------------ metrics and the card

    def write_metrics(self, rows: list[EpochMetrics]) -> None:
        """``metrics.parquet``: one row per epoch."""
        self.write_parquet("metrics.parquet", metrics_table(rows))

    def card_digest(self) -> str | None:
        """The weights digest ``OUT/model_card.json`` names (None: no card, or not readable)."""
        try:
            with self.location.fs.open(self.path(CARD), "rb") as handle:
                return (json.load(handle).get("weights") or {}).get("digest")
        except (OSError, ValueError, AttributeError):
            return None

    def write_card(self, base: dict[str, Any], history: list[EpochMetrics], best_epoch: int | None,
                   digest: str | None, train_seconds: float, test: dict[str, Any] | None,
                   finished: bool) -> dict[str, Any]:
        """Write ``model_card.json`` (data, splits, config, metrics, the weights' digest) and return it."""
        best_row = next((r for r in history if r.epoch == best_epoch), None)
        card = {
            "format": "memscore-model-card/1",
            **base,
            "weights": {"file": self.path(WEIGHTS), "digest": digest, "best_epoch": best_epoch},
            "metrics": {
                "best": dataclasses.asdict(best_row) if best_row else None,
                "epochs": [dataclasses.asdict(r) for r in history],
                "test": test,
            },
            "train_seconds": train_seconds,
            "finished": finished,
            "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "software": {"torch": torch.__version__, "python": platform.python_version()},
            "score_with": f"memscore score SOURCE --out DEST --model {base['model']} --weights {self.path(WEIGHTS)}",
        }
        self.write_bytes(CARD, json.dumps(finite(card), indent=2).encode())
        return card


def refusal_reason(error: BaseException) -> str:
    """Why torch's weights-only loader refused a file, in a few words: the blocked global it
    names (a pickle that would run code), else the error's first line. torch's advice to retry
    with ``weights_only=False`` is left out on purpose: that runs whatever the file holds."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if "GLOBAL" in line or "Unsupported" in line:
            return line.rstrip(".")
    first = lines[0] if lines else type(error).__name__
    return "unreadable" if "weights_only" in first else first.rstrip(".")


def metrics_table(rows: list[EpochMetrics]) -> pa.Table:
    """The epochs' numbers as the ``metrics.parquet`` table."""
    schema = pa.schema([
        ("epoch", pa.int32()), ("train_loss", pa.float64()), ("val_loss", pa.float64()),
        ("val_spearman", pa.float64()), ("val_pearson", pa.float64()), ("lr", pa.float64()),
        ("train_images", pa.int64()), ("seconds", pa.float64()), ("train_images_per_second", pa.float64()),
        ("best", pa.bool_()),
    ])
    return pa.Table.from_pylist([dataclasses.asdict(r) for r in rows], schema=schema)


def finite(value: Any) -> Any:
    """JSON has no NaN: ``value`` with every non-finite float replaced by None (nested)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value
