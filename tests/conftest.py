"""Shared fixtures: real photos (scikit-image), archives made from them, a Prefect API."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from contextlib import closing
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


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process_group(process: subprocess.Popen | None) -> None:
    """Stop a process group started with start_new_session=True: SIGTERM, then SIGKILL."""
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    except ProcessLookupError:
        pass


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


@pytest.fixture()
def onnx_cache(tmp_path_factory, monkeypatch) -> Path:
    """memscore's cache folder for ``--backend onnxruntime`` tests: one for the session
    (ResMem is exported once, not into the user's ~/.cache), set for this test."""
    folder = tmp_path_factory.getbasetemp() / "memscore-onnx-cache"
    monkeypatch.setenv("MEMSCORE_CACHE_DIR", str(folder))
    return folder
