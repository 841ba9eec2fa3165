"""Bad input never stops a run: odd images are scored, broken ones become error rows."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from memscore.storage.uris import open_location
from memscore.tasks.decode import decode_image, DecompressionBombError, EmptyFileError
from memscore.tasks.discover import iter_listing
from memscore.tasks.plan import plan_shards
from memscore.tasks.score import ScoreSettings, get_model, score_images

NO_DONE = pa.table({"path": pa.array([], pa.string()), "source_version": pa.array([], pa.string())})


def make_bad_archive(folder: Path, base: Image.Image) -> tuple[set[str], dict[str, str]]:
    """Write odd-but-valid images (to be scored) and broken files (to be error rows)."""
    folder.mkdir(parents=True, exist_ok=True)
    good: set[str] = set()

    def save(name: str, image: Image.Image, fmt: str, **options) -> None:
        image.save(folder / name, fmt, **options)
        good.add(name)

    save("cmyk.jpg", base.convert("CMYK"), "JPEG")
    save("palette.png", base.convert("P"), "PNG")
    save("onebit.png", base.convert("1"), "PNG")
    gray16 = (np.asarray(base.convert("L"), dtype=np.uint16) * 257)
    save("sixteen.png", Image.fromarray(gray16), "PNG")
    assert Image.open(folder / "sixteen.png").mode.startswith("I")
    rgba = base.convert("RGBA")
    rgba.putalpha(128)
    save("alpha.png", rgba, "PNG")
    save("gray.jpg", base.convert("L"), "JPEG")
    save("tiny.png", base.resize((1, 1)), "PNG")
    save("huge.jpg", base.resize((6000, 4500)), "JPEG", quality=60)
    save("anim.gif", base.convert("P"), "GIF", save_all=True, append_images=[base.rotate(90).convert("P")])
    save("LOUD.JPEG", base, "JPEG")

    broken: dict[str, str] = {}
    (folder / "empty.jpg").write_bytes(b"")
    broken["empty.jpg"] = "EmptyFileError"
    (folder / "text.jpg").write_text("this is a text file saved as .jpg\n")
    broken["text.jpg"] = "UnidentifiedImageError"
    buffer = io.BytesIO()
    base.save(buffer, "JPEG")
    (folder / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    broken["truncated.jpg"] = "OSError"
    # A decompression bomb: 20000 x 10000 one-bit pixels (2e8 > PIL's limit) in a few kB.
    Image.new("1", (20000, 10000)).save(folder / "bomb.png", "PNG")
    broken["bomb.png"] = "DecompressionBombError"
    (folder / "readme.txt").write_text("not an image: ignored")
    (folder / "data.csv").write_text("a,b\n")
    return good, broken


def test_decode_refuses_broken_input():
    with pytest.raises(EmptyFileError):
        decode_image(b"", None)
    with pytest.raises(DecompressionBombError):
        decode_image(_png(Image.new("L", (300, 300))), max_pixels=1000)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("workers", [0, 1])
def test_bad_files_become_error_rows_and_odd_images_are_scored(tmp_path, photos, workers):
    good, broken = make_bad_archive(tmp_path / "src", photos["coffee"])
    source = open_location(str(tmp_path / "src"))
    plan = plan_shards(iter_listing(source), NO_DONE, 100)
    assert plan.to_score == len(good) + len(broken)  # .txt and .csv are not images
    model = get_model("resmem", None, torch.device("cpu"))
    result = score_images(
        plan.shards[0], source, model,
        ScoreSettings(batch_size=4, workers=workers, features=("fc11",), max_pixels=Image.MAX_IMAGE_PIXELS, run_id="t"),
    )
    scores = {row["path"]: row for row in result.scores.to_pylist()}
    errors = {row["path"]: row for row in result.errors.to_pylist()}
    assert set(scores) == good
    assert set(errors) == set(broken)
    for name, error in broken.items():
        assert errors[name]["stage"] == "decode", errors[name]
        assert errors[name]["error"] == error, errors[name]
        assert errors[name]["message"]
    assert "truncated" in errors["truncated.jpg"]["message"]
    assert scores["tiny.png"]["width"] == 1 and scores["huge.jpg"]["width"] == 6000
    assert all(0.0 < row["score"] < 1.0 for row in scores.values())
    assert all(len(row["feat_fc11"]) == 256 for row in scores.values())


def test_sixteen_bit_images_are_scaled_not_clipped(photos):
    from memscore.models.preprocess import to_rgb

    gray = photos["coffee"].convert("L")
    sixteen = Image.fromarray(np.asarray(gray, dtype=np.uint16) * 257)
    assert to_rgb(sixteen).tobytes() == gray.convert("RGB").tobytes()


def test_unreadable_file_is_a_read_error(tmp_path, photos):
    """A file that vanishes between listing and reading is an error row, stage 'read'."""
    folder = tmp_path / "src"
    folder.mkdir()
    photos["rocket"].save(folder / "a.jpg")
    photos["rocket"].save(folder / "b.jpg")
    source = open_location(str(folder))
    plan = plan_shards(iter_listing(source), NO_DONE, 10)
    (folder / "b.jpg").unlink()
    model = get_model("resmem", None, torch.device("cpu"))
    result = score_images(plan.shards[0], source, model, ScoreSettings(2, 0, (), None, "t"))
    assert result.scores["path"].to_pylist() == ["a.jpg"]
    [error] = result.errors.to_pylist()
    assert error["path"] == "b.jpg" and error["stage"] == "read" and error["error"] == "FileNotFoundError"
