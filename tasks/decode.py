"""Reading and decoding one image file, with a clear reason when it fails.

Runs inside DataLoader workers. A file that cannot be read, is empty, is not an
image, is truncated, or exceeds the pixel limit (PIL's decompression-bomb guard)
becomes an :class:`ImageFailure` with the stage (``read`` or ``decode``), the
error type and a message; a partly decoded image is never scored.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import fsspec
import torch
from PIL import Image, UnidentifiedImageError

Image.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never a partial image


class EmptyFileError(ValueError):
    """The file has zero bytes."""


class DecompressionBombError(ValueError):
    """The image has more pixels than the limit allows."""


@dataclass
class DecodedImage:
    """A decoded, preprocessed image and what we learned reading it."""

    index: int
    tensor: torch.Tensor
    image_id: str
    size_bytes: int
    width: int
    height: int


@dataclass
class ImageFailure:
    """Why one image could not be scored."""

    index: int
    stage: str
    error: str
    message: str
    size_bytes: int | None = None


def decode_image(data: bytes, max_pixels: int | None) -> Image.Image:
    """Decode ``data`` completely; raise on empty, corrupt, truncated or oversized input."""
    if not data:
        raise EmptyFileError("file is empty (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise DecompressionBombError(str(error)) from None
        if max_pixels is not None and image.width * image.height > max_pixels:
            raise DecompressionBombError(
                f"image has {image.width * image.height} pixels ({image.width}x{image.height}), "
                f"over the limit of {max_pixels}"
            )
        image.load()
    return image


def load_one(
    index: int,
    fs: fsspec.AbstractFileSystem,
    fs_path: str,
    preprocess: Callable[[Image.Image], torch.Tensor],
    max_pixels: int | None,
) -> DecodedImage | ImageFailure:
    """Read, hash, decode and preprocess one file; never raises for bad input."""
    try:
        data = fs.cat_file(fs_path)
    except Exception as error:  # noqa: BLE001 - any read failure becomes an error row
        return ImageFailure(index, "read", type(error).__name__, _message(error))
    image_id = hashlib.sha256(data).hexdigest()
    try:
        image = decode_image(data, max_pixels)
        width, height = image.size
        tensor = preprocess(image)
    except (UnidentifiedImageError, EmptyFileError, DecompressionBombError, OSError, ValueError,
            SyntaxError, EOFError, MemoryError, IndexError, TypeError, KeyError) as error:
        return ImageFailure(index, "decode", type(error).__name__, _message(error), len(data))
    return DecodedImage(index, tensor, image_id, len(data), width, height)


def _message(error: BaseException) -> str:
    text = str(error).strip() or repr(error)
    return text.splitlines()[0][:500]


class ShardDataset(torch.utils.data.Dataset):
    """The images of one shard, read through fsspec, for a torch DataLoader."""

    def __init__(
        self,
        fs: fsspec.AbstractFileSystem,
        fs_paths: list[str],
        preprocess: Callable[[Image.Image], torch.Tensor],
        max_pixels: int | None,
    ) -> None:
        self.fs = fs
        self.fs_paths = fs_paths
        self.preprocess = preprocess
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.fs_paths)

    def __getitem__(self, index: int) -> DecodedImage | ImageFailure:
        return load_one(index, self.fs, self.fs_paths[index], self.preprocess, self.max_pixels)


@dataclass
class Batch:
    """A collated batch: the decoded images stacked, and the failures beside them."""

    images: list[DecodedImage]
    pixels: torch.Tensor | None
    failures: list[ImageFailure]

    def pin_memory(self) -> "Batch":
        if self.pixels is not None:
            self.pixels = self.pixels.pin_memory()
        return self


@dataclass(frozen=True)
class WorkerSetup:
    """What a DataLoader worker does first: take the parent's environment, quiet SIGTERM.

    Workers are forked from a forkserver started once per process, so they would
    otherwise see the environment of the moment that server started, not of this
    run (credentials such as AWS_* set later would be missing). And a worker must
    end quietly on SIGTERM: the DataLoader sends it to a worker slow to leave at
    shutdown, and an inherited handler (Prefect's exits with status 1) would turn
    that into a failed run.
    """

    environ: dict[str, str]

    def __call__(self, _worker_id: int) -> None:
        os.environ.clear()
        os.environ.update(self.environ)
        signal.signal(signal.SIGTERM, _exit_quietly)


def worker_setup() -> WorkerSetup:
    """A worker_init_fn carrying this process's current environment."""
    return WorkerSetup(dict(os.environ))


def _exit_quietly(_signum: int, _frame: object) -> None:
    os._exit(0)


def collate(items: list[Any]) -> Batch:
    """Stack decoded images into one uint8 tensor; keep failures aside."""
    images = [item for item in items if isinstance(item, DecodedImage)]
    failures = [item for item in items if isinstance(item, ImageFailure)]
    pixels = torch.stack([image.tensor for image in images]) if images else None
    for image in images:
        image.tensor = torch.empty(0, dtype=torch.uint8)  # the stacked copy is the one we keep
    return Batch(images, pixels, failures)
