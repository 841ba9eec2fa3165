"""Shared fixtures: real photos (scikit-image), archives made from them, a Prefect API."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

PHOTO_NAMES = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")


def photo(name: str, size: tuple[int, int] | None = (320, 240)) -> Image.Image:
    """A real photo shipped with scikit-image, as RGB, optionally resized."""
    import skimage.data

    image = Image.fromarray(np.asarray(getattr(skimage.data, name)())).convert("RGB")
    return image.resize(size, Image.BILINEAR) if size else image


@pytest.fixture(scope="session")
def photos() -> dict[str, Image.Image]:
    return {name: photo(name) for name in PHOTO_NAMES}


def write_archive(folder: Path, photos: dict[str, Image.Image], count: int | None = None) -> list[Path]:
    """A small archive: nested folders, several formats, spaces and non-ASCII names."""
    layout = [
        ("a/astronaut.jpg", "astronaut", "JPEG"),
        ("a/b/chelsea cat.PNG", "chelsea", "PNG"),
        ("café/coffee.webp", "coffee", "WEBP"),
        ("rocket.jpeg", "rocket", "JPEG"),
        ("deep/hubble.tif", "hubble_deep_field", "TIFF"),
        ("deep/ihc.bmp", "immunohistochemistry", "BMP"),
    ]
    written = []
    for relative, name, fmt in layout[:count]:
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        photos[name].save(target, fmt)
        written.append(target)
    (folder / "notes.txt").write_text("not an image")
    return written


@pytest.fixture(scope="session")
def prefect_api():
    """One temporary Prefect API for the whole session (flows run against it)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield
