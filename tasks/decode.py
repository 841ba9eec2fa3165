"""Reading and decoding one image file, with a clear reason when it fails.

Runs inside DataLoader workers. A file that cannot be read, is empty, is not an
image, is truncated, or exceeds the pixel limit (PIL's decompression-bomb guard)
becomes an :class:`ImageFailure` with the stage (``read`` or ``decode``), the
error type and a message; a partly decoded image is never scored.

With ``device_jpeg`` (``decode='device'``, see :mod:`tasks.device_decode`) a plain
JPEG is not decoded here: the worker checks its header and passes its bytes on as
an :class:`EncodedImage`, to be decoded in a batch on the scoring device.

How the workers themselves start (a forkserver, the run's environment, a quiet
SIGTERM) is here too: :func:`worker_options`, used by every DataLoader memscore makes.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import signal
import warnings
from dataclasses import dataclass, field
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
class EncodedImage:
    """A JPEG read and checked (header, pixel limit) but not decoded: its bytes go to the device."""

    index: int
    data: torch.Tensor  # uint8 [size_bytes]
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
    device_jpeg: bool = False,
) -> DecodedImage | EncodedImage | ImageFailure:
    """Read, hash, decode and preprocess one file; never raises for bad input.

    With ``device_jpeg``, a JPEG fit for the device decoder (:func:`device_jpeg_header`)
    comes back undecoded, as an :class:`EncodedImage`.
    """
    try:
        data = fs.cat_file(fs_path)
    except Exception as error:  # noqa: BLE001 - any read failure becomes an error row
        return ImageFailure(index, "read", type(error).__name__, _message(error))
    image_id = hashlib.sha256(data).hexdigest()
    if device_jpeg:
        size = device_jpeg_header(data, max_pixels)
        if size is not None:
            return EncodedImage(index, torch.frombuffer(bytearray(data), dtype=torch.uint8), image_id, len(data), *size)
    return preprocess_bytes(index, data, image_id, preprocess, max_pixels)


def preprocess_bytes(
    index: int, data: bytes, image_id: str, preprocess: Callable[[Image.Image], torch.Tensor], max_pixels: int | None,
) -> DecodedImage | ImageFailure:
    """Decode (PIL) and preprocess the bytes of one file; a failure carries PIL's reason."""
    try:
        image = decode_image(data, max_pixels)
        width, height = image.size
        tensor = preprocess(image)
    except (UnidentifiedImageError, EmptyFileError, DecompressionBombError, OSError, ValueError,
            SyntaxError, EOFError, MemoryError, IndexError, TypeError, KeyError) as error:
        return ImageFailure(index, "decode", type(error).__name__, _message(error), len(data))
    return DecodedImage(index, tensor, image_id, len(data), width, height)


_JPEG_EOI = b"\xff\xd9"


def device_jpeg_header(data: bytes, max_pixels: int | None) -> tuple[int, int] | None:
    """(width, height) if ``data`` is a JPEG the device decoder may take, else ``None``.

    That is: PIL reads its header as a JPEG in RGB or greyscale (not CMYK), it ends
    with the end-of-image marker (so a truncated file goes to PIL, which reports it),
    and it is within the pixel limit. Anything else is left to PIL, which decodes it
    or gives the reason it cannot.
    """
    if not data.rstrip(b"\0 \r\n").endswith(_JPEG_EOI):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if image.format != "JPEG" or image.mode not in ("RGB", "L"):
                    return None
                width, height = image.size
    except Exception:  # noqa: BLE001 - anything odd is PIL's to report
        return None
    if max_pixels is not None and width * height > max_pixels:
        return None
    return width, height


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
        device_jpeg: bool = False,
    ) -> None:
        self.fs = fs
        self.fs_paths = fs_paths
        self.preprocess = preprocess
        self.max_pixels = max_pixels
        self.device_jpeg = device_jpeg

    def __len__(self) -> int:
        return len(self.fs_paths)

    def __getitem__(self, index: int) -> DecodedImage | EncodedImage | ImageFailure:
        return load_one(index, self.fs, self.fs_paths[index], self.preprocess, self.max_pixels, self.device_jpeg)


@dataclass
class Batch:
    """A collated batch: the decoded images stacked, the undecoded JPEGs and the failures beside them.

    ``pixels`` holds one row per entry of ``images``, in that order; ``encoded``
    JPEGs still await :func:`tasks.device_decode.decode_on_device`.
    """

    images: list[DecodedImage]
    pixels: torch.Tensor | None
    failures: list[ImageFailure]
    encoded: list[EncodedImage] = field(default_factory=list)

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


def worker_context() -> multiprocessing.context.BaseContext:
    """Start method for DataLoader workers: forkserver with torch preloaded, else spawn.

    A plain fork from inside a Prefect flow inherits Prefect's SIGTERM handler and
    its threads; spawn is safe but re-imports torch in every worker of every shard
    (seconds each). The forkserver is started once per process (fresh interpreter,
    torch and the decoder imported once) and forks each worker from there.
    ``MEMSCORE_WORKER_START=spawn`` (or ``forkserver``) overrides the choice.
    """
    method = os.environ.get("MEMSCORE_WORKER_START", "").strip().lower()
    if method == "spawn" or (not method and "forkserver" not in multiprocessing.get_all_start_methods()):
        return multiprocessing.get_context("spawn")
    if method not in ("", "forkserver"):
        raise ValueError(f"MEMSCORE_WORKER_START={method!r}: use forkserver or spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "PIL.Image", "fsspec", "memscore.tasks.decode", "memscore.models.preprocess"])
    return context


def worker_options(workers: int) -> dict[str, Any]:
    """DataLoader arguments for ``workers`` worker processes started the way memscore starts them.

    Workers come from :func:`worker_context` and run :class:`WorkerSetup` first;
    the scoring and the training loaders both use this.
    """
    if workers <= 0:
        return {"num_workers": 0}
    return {"num_workers": workers, "multiprocessing_context": worker_context(), "worker_init_fn": worker_setup()}


def start_worker_server(workers: int) -> None:
    """Start the forkserver now, without waiting for it, if ``workers`` will need it.

    The forkserver imports torch and the decoder (seconds on a small machine); started
    before the model loads, that import runs beside the load instead of after it, and
    the first batch comes sooner. Idempotent: a running forkserver is left as it is.
    """
    if workers <= 0:
        return
    context = worker_context()
    if context.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


def worker_setup() -> WorkerSetup:
    """A worker_init_fn carrying this process's current environment."""
    return WorkerSetup(dict(os.environ))


def _exit_quietly(_signum: int, _frame: object) -> None:
    os._exit(0)


def collate(items: list[Any]) -> Batch:
    """Stack decoded images into one uint8 tensor; keep encoded JPEGs and failures aside."""
    images = [item for item in items if isinstance(item, DecodedImage)]
    failures = [item for item in items if isinstance(item, ImageFailure)]
    encoded = [item for item in items if isinstance(item, EncodedImage)]
    pixels = torch.stack([image.tensor for image in images]) if images else None
    for image in images:
        image.tensor = torch.empty(0, dtype=torch.uint8)  # the stacked copy is the one we keep
    if len(encoded) > 1:
        # One buffer for the batch's JPEG bytes, each image a view of it: the batch
        # then crosses to the scoring process as one shared-memory block, not hundreds.
        flat = torch.cat([item.data for item in encoded])
        start = 0
        for item in encoded:
            item.data = flat[start:start + item.size_bytes]
            start += item.size_bytes
    return Batch(images, pixels, failures, encoded)
