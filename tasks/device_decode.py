"""Decoding a batch's JPEGs on the scoring device (nvJPEG on CUDA) instead of in workers.

With ``decode='device'`` the DataLoader workers only read, hash and parse the
header of a plain JPEG (baseline or progressive, RGB or greyscale, ending in its
EOI marker, within the pixel limit) and pass its bytes on as an
:class:`~tasks.decode.EncodedImage`; every other file is decoded by PIL in the
worker as before. :func:`decode_on_device` then decodes the batch's JPEGs in one
``torchvision.io.decode_jpeg`` call on the model's device (nvJPEG on CUDA,
libjpeg-turbo on the CPU), resizes and crops them there
(:meth:`models.preprocess.ResizeCrop.on_tensor`), and merges them with the
worker-decoded images into one uint8 batch on the device.

A JPEG the device decoder rejects is decoded again by PIL in this process, so it
is either scored like any other image or becomes an error row with PIL's reason:
a file is never lost because of the decoder that was tried first.

The pixels differ slightly from PIL's (another IDCT, and a float resize where PIL
rounds between its two passes); ``benchmarks/bench_score.py`` measures what that
does to the scores, and the README gives the figures.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from memscore.models.preprocess import ResizeCrop
from memscore.tasks.decode import Batch, DecodedImage, EncodedImage, ImageFailure, preprocess_bytes

DECODE_MODES = ("auto", "workers", "device")


def resolve_decode(decode: str, device: torch.device, preprocess: Callable[[Image.Image], torch.Tensor]) -> str:
    """``auto`` -> ``device`` on CUDA (when the model's preprocessing can run there), else ``workers``."""
    decode = (decode or "auto").lower()
    if decode not in DECODE_MODES:
        raise ValueError(f"unknown decode mode {decode!r}; use {', '.join(DECODE_MODES)}")
    if decode == "device" and not isinstance(preprocess, ResizeCrop):
        raise ValueError("decode='device' needs a resize-and-crop preprocessing; this model has another")
    if decode == "auto":
        return "device" if device.type == "cuda" and isinstance(preprocess, ResizeCrop) else "workers"
    return decode


def decode_on_device(
    batch: Batch, transform: ResizeCrop, device: torch.device, max_pixels: int | None,
) -> Batch:
    """``batch`` with its encoded JPEGs decoded and preprocessed on ``device``.

    The result's ``pixels`` lie on ``device``, in the order of its ``images``;
    JPEGs that no decoder can read are added to its ``failures``.
    """
    if not batch.encoded:
        return batch
    images: list[DecodedImage] = list(batch.images)
    parts: list[torch.Tensor] = [] if batch.pixels is None else [batch.pixels.to(device, non_blocking=True)]
    failures: list[ImageFailure] = list(batch.failures)
    try:
        decoded = _decode_jpegs([item.data for item in batch.encoded], device)
    except Exception:  # noqa: BLE001 - e.g. out of device memory: PIL decodes them all instead
        decoded = [None] * len(batch.encoded)
    on_device: list[tuple[EncodedImage, torch.Tensor]] = []
    on_host: list[DecodedImage] = []
    for item, image in zip(batch.encoded, decoded):
        if image is not None:
            on_device.append((item, image))
            continue
        # The device decoder refused it: PIL decides (image, or an error row with its reason).
        result = preprocess_bytes(item.index, bytes(item.data.numpy()), item.image_id, transform, max_pixels)
        if isinstance(result, ImageFailure):
            failures.append(result)
        else:
            on_host.append(result)
    if on_host:
        images.extend(on_host)
        parts.append(torch.stack([image.tensor for image in on_host]).to(device, non_blocking=True))
        for image in on_host:
            image.tensor = torch.empty(0, dtype=torch.uint8)
    if on_device:
        images.extend(_as_decoded(item) for item, _ in on_device)
        parts.append(_resize_all([image for _, image in on_device], transform))
    pixels = torch.cat(parts) if parts else None
    return Batch(images, pixels, failures)


_decode_streams: dict[torch.device, torch.cuda.Stream] = {}


def _decode_jpegs(datas: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """Decode all in one call; if that fails, one by one (``None`` for each that fails).

    On CUDA the call runs with a stream of our own made current. torchvision
    allocates the output images on the current stream but writes them from
    nvJPEG's stream without waiting for it; on the default stream, it could be
    handed memory that the model's queued kernels are still reading (seen on an
    H100: NaN scores). Memory of our decode stream is never freed by other
    work; the default stream then waits for the decode, and the images are
    marked as used there so their memory is not reused before it is done.
    """
    if device.type != "cuda":
        return _decode_all(datas, device)
    stream = _decode_streams.get(device)
    if stream is None:
        stream = _decode_streams[device] = torch.cuda.Stream(device)
    current = torch.cuda.current_stream(device)
    with torch.cuda.stream(stream):
        images = _decode_all(datas, device)
    current.wait_stream(stream)
    for image in images:
        if image is not None:
            image.record_stream(current)
    return images


def _decode_all(datas: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    try:
        return list(decode_jpeg(datas, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        pass
    images: list[torch.Tensor | None] = []
    for data in datas:
        try:
            images.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            images.append(None)
    return images


def _resize_all(images: list[torch.Tensor], transform: ResizeCrop) -> torch.Tensor:
    """Resize and crop every image; images of one size go through in one call.

    Only basic indexing and stacking: an index tensor built on the host would make
    each copy wait for the model's queued work on the GPU.
    """
    by_size: dict[tuple[int, int], list[int]] = {}
    for position, image in enumerate(images):
        by_size.setdefault(tuple(image.shape[-2:]), []).append(position)
    resized: list[torch.Tensor] = [images[0]] * len(images)
    for positions in by_size.values():
        stacked = images[positions[0]][None] if len(positions) == 1 else torch.stack([images[p] for p in positions])
        group = transform.on_tensor(stacked)
        for position, image in zip(positions, group.unbind(0)):
            resized[position] = image
    return torch.stack(resized)


def _as_decoded(item: EncodedImage) -> DecodedImage:
    return DecodedImage(item.index, torch.empty(0, dtype=torch.uint8), item.image_id, item.size_bytes,
                        item.width, item.height)
