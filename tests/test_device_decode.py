"""Decoding JPEGs a batch at a time on the scoring device (``--decode device``).

On CUDA this is nvJPEG; here the same code runs on the CPU (torchvision's
libjpeg-turbo), which checks everything but the GPU itself: which files go to the
device decoder, that refused and broken files still end as PIL's error rows, and
that the scores stay within the documented tolerance of PIL decoding in workers.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from memscore.models.preprocess import resmem_transform
from memscore.tasks.decode import device_jpeg_header

CPU = torch.device("cpu")


def jpeg_bytes(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **options)
    return buffer.getvalue()


def test_which_files_the_device_decoder_takes(photos):
    rgb = photos["astronaut"]
    assert device_jpeg_header(jpeg_bytes(rgb), None) == rgb.size
    assert device_jpeg_header(jpeg_bytes(rgb.convert("L")), None) == rgb.size
    assert device_jpeg_header(jpeg_bytes(rgb, progressive=True), None) == rgb.size
    good = jpeg_bytes(rgb)
    assert device_jpeg_header(good[: len(good) // 2], None) is None  # truncated: PIL reports it
    assert device_jpeg_header(jpeg_bytes(rgb.convert("CMYK")), None) is None  # CMYK: PIL converts it
    png = io.BytesIO()
    rgb.save(png, "PNG")
    assert device_jpeg_header(png.getvalue(), None) is None
    assert device_jpeg_header(b"", None) is None
    assert device_jpeg_header(good, rgb.width * rgb.height - 1) is None  # over the pixel limit: PIL refuses it


def test_resize_on_tensor_matches_pil_closely(photos):
    """The float resize differs from PIL's two rounded passes by about a grey level at most."""
    for name in ("astronaut", "coffee", "hubble_deep_field"):
        image = photos[name]
        reference = resmem_transform(image).float()
        pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)[None]
        on_tensor = resmem_transform.on_tensor(pixels)[0].float()
        assert on_tensor.shape == reference.shape == (3, 227, 227)
        difference = (on_tensor - reference).abs()
        assert difference.mean() < 0.2 and difference.max() <= 2


@pytest.fixture(scope="module")
def mixed_archive(tmp_path_factory, photos):
    """JPEGs of several kinds beside files the device decoder must leave to PIL."""
    folder = tmp_path_factory.mktemp("mixed")
    photos["astronaut"].save(folder / "astronaut.jpg", "JPEG", quality=90)
    photos["chelsea"].resize((400, 300)).save(folder / "chelsea.jpg", "JPEG", quality=90)
    photos["coffee"].save(folder / "coffee_progressive.jpg", "JPEG", progressive=True)
    photos["rocket"].convert("L").save(folder / "rocket_grey.jpg", "JPEG")
    photos["hubble_deep_field"].convert("CMYK").save(folder / "hubble_cmyk.jpg", "JPEG")
    photos["immunohistochemistry"].save(folder / "ihc.png", "PNG")
    whole = jpeg_bytes(photos["chelsea"])
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (folder / "text.jpg").write_text("not a JPEG at all")
    return folder


def score_folder(folder, decode: str, workers: int):
    from memscore.storage.uris import open_location
    from memscore.tasks.discover import iter_listing
    from memscore.tasks.plan import plan_shards
    from memscore.tasks.score import ScoreSettings, get_model, score_images

    source = open_location(str(folder))
    empty = pa.table({"path": pa.array([], pa.string()), "source_version": pa.array([], pa.string())})
    shard = plan_shards(iter_listing(source), empty, 64).shards[0]
    model = get_model("resmem", None, CPU)
    settings = ScoreSettings(3, workers, ("fc11",), None, "t", decode=decode)
    return score_images(shard, source, model, settings)


@pytest.mark.parametrize("workers", [0, 1])
def test_device_decoding_scores_like_pil_and_keeps_error_rows(mixed_archive, workers):
    reference = score_folder(mixed_archive, "workers", 0)
    device = score_folder(mixed_archive, "device", workers)
    # the same images scored, the same error rows with PIL's reasons
    assert device.scores["path"].to_pylist() == reference.scores["path"].to_pylist()
    assert len(reference.scores) == 6
    for column in ("image_id", "width", "height", "size_bytes"):
        assert device.scores[column].to_pylist() == reference.scores[column].to_pylist()
    errors = {row["path"]: (row["stage"], row["error"]) for row in device.errors.to_pylist()}
    assert errors == {row["path"]: (row["stage"], row["error"]) for row in reference.errors.to_pylist()}
    assert set(errors) == {"truncated.jpg", "text.jpg"}
    # scores: within the tolerance the README documents for device decoding
    difference = np.abs(device.scores["score"].to_numpy() - reference.scores["score"].to_numpy())
    assert difference.max() <= 2e-3  # measured here: 6.2e-4
    features = np.stack(device.scores["feat_fc11"].to_numpy(zero_copy_only=False))
    assert features.shape == (6, 256) and np.isfinite(features).all()


def test_device_decoder_refusal_falls_back_to_pil(photos, monkeypatch):
    """A JPEG the device decoder rejects (here: all of them) is decoded by PIL instead."""
    import memscore.tasks.device_decode as device_decode
    from memscore.tasks.decode import EncodedImage, collate, load_one
    from memscore.storage.uris import open_location

    def refuse(data, mode, device):
        raise RuntimeError("decoder says no")

    monkeypatch.setattr(device_decode, "decode_jpeg", refuse)
    buffer = io.BytesIO()
    photos["astronaut"].save(buffer, "JPEG")
    fs = open_location("memory://fallback").fs
    fs.pipe_file("memory://fallback/a.jpg", buffer.getvalue())
    whole = buffer.getvalue()
    headers_only = whole[: whole.index(b"\xff\xda")] + b"\xff\xd9"  # a JPEG's headers and end, no image data
    fs.pipe_file("memory://fallback/b.jpg", headers_only)
    items = [load_one(i, fs, f"/fallback/{name}", resmem_transform, None, device_jpeg=True)
             for i, name in enumerate(("a.jpg", "b.jpg"))]
    batch = device_decode.decode_on_device(collate(items), resmem_transform, CPU, None)
    assert [image.index for image in batch.images] == [0]
    reference = resmem_transform(Image.open(io.BytesIO(buffer.getvalue())))
    assert torch.equal(batch.pixels[0], reference)  # PIL decoded it: bit-identical to the reference
    assert [(f.index, f.stage) for f in batch.failures] == [(1, "decode")]
    assert all(isinstance(item, EncodedImage) for item in items)  # both went the device's way first


def test_decode_mode_resolution():
    from memscore.tasks.device_decode import resolve_decode

    assert resolve_decode("auto", CPU, resmem_transform) == "workers"
    assert resolve_decode("auto", torch.device("cuda"), resmem_transform) == "device"
    assert resolve_decode("device", CPU, resmem_transform) == "device"
    with pytest.raises(ValueError):
        resolve_decode("gpu-please", CPU, resmem_transform)
    with pytest.raises(ValueError):
        resolve_decode("device", CPU, lambda image: image)


def test_cuda_default_workers_depend_on_where_jpegs_are_decoded(monkeypatch):
    """With GPU decoding the workers only read (a quarter of the cores); with PIL they decode (all but one)."""
    import memscore.models.devices as devices

    cuda = torch.device("cuda")
    monkeypatch.setattr(devices, "cpu_cores", lambda: 16)
    assert devices.defaults_for(cuda, "device").workers == 4
    assert devices.defaults_for(cuda, "workers").workers == 15
    assert devices.defaults_for(cuda).workers == 15
    monkeypatch.setattr(devices, "cpu_cores", lambda: 64)
    assert devices.defaults_for(cuda, "device").workers == 8
    monkeypatch.setattr(devices, "cpu_cores", lambda: 2)
    assert devices.defaults_for(cuda, "device").workers == 2
    assert devices.defaults_for(CPU, "device").workers == 1  # the CPU defaults do not change
