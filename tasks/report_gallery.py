"""Gallery images for the report: a thumbnail and a larger view per image shown.

Only the images the page shows are read, from where they were scored (the ``uri``
column: a local file or a bucket object, through fsspec). Each is written as two
JPEGs under ``<out>/images/``: a thumbnail at most :data:`THUMB_PX` on its longer
side and a view at most :data:`VIEW_PX`. An image that is gone (moved or deleted
since scoring) or no longer decodes gets no files and the status ``missing`` or
``unreadable``; the report is still written.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import fsspec
from PIL import Image

IMAGES_DIR = "images"
THUMB_PX = 240
VIEW_PX = 1024


def image_key(uri: str) -> str:
    """A short file-name-safe key for an image URI."""
    return hashlib.sha1(uri.encode("utf-8")).hexdigest()[:16]


def open_image(uri: str, storage_options: dict[str, Any] | None = None, reduce: bool = True) -> Image.Image:
    """The image at ``uri`` decoded as RGB; with ``reduce`` a large JPEG is decoded at a reduced
    scale (PIL ``draft``, still at least :data:`VIEW_PX`), which is enough for a thumbnail."""
    with fsspec.open(uri, "rb", **(storage_options or {})) as handle:
        image = Image.open(handle)
        if reduce:
            image.draft("RGB", (VIEW_PX, VIEW_PX))
        image.load()
    from memscore.models.preprocess import to_rgb

    return to_rgb(image)


def make_thumbnails(uri: str, out: Path, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the thumbnail and view of ``uri`` under ``out/images``.

    Returns ``{"status": "ok" | "missing" | "unreadable", "thumb", "view" (paths relative to
    out, None unless ok), "detail" (the error, when not ok)}``.
    """
    key = image_key(uri)
    folder = out / IMAGES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    try:
        image = open_image(uri, storage_options)
    except FileNotFoundError as error:
        return {"status": "missing", "thumb": None, "view": None, "detail": str(error) or "not found"}
    except Exception as error:  # noqa: BLE001 - a file that no longer decodes, permissions, network
        return {"status": "unreadable", "thumb": None, "view": None, "detail": f"{type(error).__name__}: {error}"}
    view = image.copy()
    view.thumbnail((VIEW_PX, VIEW_PX), Image.BICUBIC)
    view.save(folder / f"{key}-view.jpg", "JPEG", quality=85)
    image.thumbnail((THUMB_PX, THUMB_PX), Image.BICUBIC)
    image.save(folder / f"{key}-thumb.jpg", "JPEG", quality=82)
    return {"status": "ok", "thumb": f"{IMAGES_DIR}/{key}-thumb.jpg", "view": f"{IMAGES_DIR}/{key}-view.jpg",
            "detail": None}
