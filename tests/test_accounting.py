"""Every file accounted for, no row ever lost (issue 14).

Rows keyed by the full URI (two SOURCEs into one DEST), compaction that is safe
when two runs interleave, views that show only the newest row per key, links
followed with loop protection and whatever is not followed counted, file names
that are not UTF-8, transient store failures retried and rescored, the pixel
limit in both directions, float TIFFs as the reference converts them, and the
messages for corrupt parts, odd files and refused weights. Expected values are
hand counts, the official ``resmem`` package's transformer, or pyarrow/DuckDB
reading the parts directly.
"""

from __future__ import annotations

import io
import os
import socket
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from memscore.storage.schema import ERRORS_SCHEMA, scores_schema
from memscore.storage.uris import open_location

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
WEIGHTS = "sha256:" + "0" * 64


def score_rows(rows: list[dict]) -> pa.Table:
    """A scores part (no feature columns) from dicts with path, uri, version, run, t, score."""
    schema = scores_schema({})
    data = {
        "image_id": ["x" * 64] * len(rows), "path": [r["path"] for r in rows], "uri": [r["uri"] for r in rows],
        "size_bytes": [1] * len(rows), "width": [1] * len(rows), "height": [1] * len(rows),
        "model": ["resmem"] * len(rows), "weights": [WEIGHTS] * len(rows), "score": [r["score"] for r in rows],
        "source_version": [r.get("version", "v1") for r in rows], "run_id": [r["run"] for r in rows],
        "scored_at": [T0 + timedelta(seconds=r["t"]) for r in rows],
    }
    return pa.Table.from_pydict(data, schema=schema)


def error_rows(rows: list[dict], with_transient: bool = True) -> pa.Table:
    data = {
        "path": [r["path"] for r in rows], "uri": [r["uri"] for r in rows], "stage": ["read"] * len(rows),
        "error": [r.get("error", "OSError") for r in rows], "message": ["m"] * len(rows),
        "run_id": [r["run"] for r in rows], "model": ["resmem"] * len(rows), "weights": [WEIGHTS] * len(rows),
        "size_bytes": [1] * len(rows), "source_version": [r.get("version", "v1") for r in rows],
        "failed_at": [T0 + timedelta(seconds=r["t"]) for r in rows],
        "transient": [r.get("transient", False) for r in rows],
    }
    fields = [f for f in ERRORS_SCHEMA if f.name != "transient"]
    if with_transient:
        fields.append(pa.field("transient", pa.bool_()))
    else:
        del data["transient"]
    return pa.Table.from_pydict(data, schema=pa.schema(fields))


def put(dest: Path, folder: str, name: str, table: pa.Table) -> Path:
    (dest / folder).mkdir(parents=True, exist_ok=True)
    pq.write_table(table, dest / folder / name)
    return dest / folder / name


def all_rows(dest: Path, folder: str = "scores") -> list[tuple]:
    files = sorted((dest / folder).glob("*.parquet"))
    if not files:
        return []
    return sorted(pq.read_table(files, columns=["uri", "score"]).to_pylist(), key=lambda r: (r["uri"], r["score"])) \
        if folder == "scores" else sorted(pq.read_table(files, columns=["uri", "run_id"]).to_pylist(), key=str)


# ---------------------------------------------------------------------------
# 1. two SOURCEs into one DEST


def test_two_sources_with_equal_relative_paths_keep_their_own_rows(tmp_path):
    from memscore.storage.compact import drop_superseded_rows

    dest = tmp_path / "out"
    put(dest, "scores", "part-r1-000000.parquet", score_rows([
        {"path": "photos/a.jpg", "uri": "file:///one/photos/a.jpg", "run": "r1", "t": 0, "score": 0.1},
        {"path": "photos/b.jpg", "uri": "file:///one/photos/b.jpg", "run": "r1", "t": 0, "score": 0.2},
    ]))
    put(dest, "scores", "part-r2-000000.parquet", score_rows([
        {"path": "photos/a.jpg", "uri": "file:///two/photos/a.jpg", "run": "r2", "t": 5, "score": 0.3},
    ]))
    assert drop_superseded_rows(open_location(str(dest))) == 0
    assert len(all_rows(dest)) == 3  # 3 images in, 3 rows out


def test_a_second_source_is_not_skipped_because_the_first_has_the_same_paths(tmp_path, photos):
    from memscore.tasks.discover import iter_listing
    from memscore.tasks.plan import done_keys, plan_shards

    one, two, dest = tmp_path / "one", tmp_path / "two", tmp_path / "out"
    for folder in (one, two):
        (folder / "photos").mkdir(parents=True)
        photos["coffee"].save(folder / "photos" / "a.jpg", "JPEG")
        os.utime(folder / "photos" / "a.jpg", (1_700_000_000, 1_700_000_000))  # same size and mtime
    src_one, src_two = open_location(str(one)), open_location(str(two))
    listing = pa.Table.from_batches(list(iter_listing(src_one)))
    row = listing.to_pylist()[0]
    put(dest, "scores", "part-r1-000000.parquet", score_rows([
        {"path": row["path"], "uri": row["uri"], "version": row["source_version"], "run": "r1", "t": 0, "score": 0.5}]))
    done = done_keys(open_location(str(dest)), "resmem", WEIGHTS)
    assert plan_shards(iter_listing(src_one), done, 10).to_score == 0
    plan = plan_shards(iter_listing(src_two), done, 10)
    assert (plan.to_score, plan.already_done) == (1, 0)


# ---------------------------------------------------------------------------
# 2. compaction under concurrency; views resolve to the newest row


class _Interleaving:
    """Run compaction B in full the moment compaction A opens part ``target`` for the 2nd time
    (after A has read the keys of every part, before A rewrites ``target``)."""

    def __init__(self, target: str, other) -> None:
        self.target, self.other, self.opened, self.fired = target, other, 0, False


def _interleaving_location(dest: Path, hook: _Interleaving):
    from fsspec.implementations.local import LocalFileSystem

    from memscore.storage.uris import Location

    class HookedFS(LocalFileSystem):
        cachable = False

        def open(self, path, mode="rb", **kwargs):
            if "r" in mode and str(path).endswith(hook.target):
                hook.opened += 1
                if hook.opened == 2 and not hook.fired:
                    hook.fired = True
                    hook.other()
            return super().open(path, mode, **kwargs)

    location = open_location(str(dest))
    return Location(fs=HookedFS(), root=location.root, uri=location.uri)


def test_two_compactions_interleaved_never_drop_a_current_row(tmp_path):
    from memscore.storage.compact import drop_superseded_rows

    dest = tmp_path / "out"
    uri = {k: f"file:///src/{k}.jpg" for k in "abc"}
    put(dest, "scores", "part-r1-000000.parquet", score_rows([
        {"path": "a.jpg", "uri": uri["a"], "run": "r1", "t": 0, "score": 0.1},
        {"path": "b.jpg", "uri": uri["b"], "run": "r1", "t": 0, "score": 0.2},
        {"path": "c.jpg", "uri": uri["c"], "run": "r1", "t": 0, "score": 0.3},  # current, must stay
    ]))
    put(dest, "scores", "part-r2-000000.parquet", score_rows([
        {"path": "a.jpg", "uri": uri["a"], "run": "r2", "t": 10, "score": 0.11}]))

    def run_b() -> None:
        # Another run writes a newer b and compacts DEST completely while A is between reading and rewriting.
        put(dest, "scores", "part-r3-000000.parquet", score_rows([
            {"path": "b.jpg", "uri": uri["b"], "run": "r3", "t": 20, "score": 0.22}]))
        drop_superseded_rows(open_location(str(dest)))

    hook = _Interleaving("part-r1-000000.parquet", run_b)
    drop_superseded_rows(_interleaving_location(dest, hook))
    assert hook.fired
    rows = {r["uri"]: r["score"] for r in all_rows(dest)}
    assert rows == pytest.approx({uri["a"]: 0.11, uri["b"]: 0.22, uri["c"]: 0.3})
    assert len(all_rows(dest)) == 3


def test_a_part_removed_by_another_compaction_is_no_error(tmp_path):
    from memscore.storage.compact import drop_superseded_rows

    dest = tmp_path / "out"
    old = put(dest, "scores", "part-r1-000000.parquet", score_rows([
        {"path": "a.jpg", "uri": "file:///s/a.jpg", "run": "r1", "t": 0, "score": 0.1}]))
    put(dest, "scores", "part-r2-000000.parquet", score_rows([
        {"path": "a.jpg", "uri": "file:///s/a.jpg", "run": "r2", "t": 1, "score": 0.2}]))
    hook = _Interleaving("part-r1-000000.parquet", lambda: old.unlink())
    drop_superseded_rows(_interleaving_location(dest, hook))
    assert hook.fired and [r["score"] for r in all_rows(dest)] == pytest.approx([0.2])


def _stale_dest(tmp_path: Path) -> Path:
    """DEST as a run killed during compaction leaves it: stale rows beside current ones."""
    dest = tmp_path / "out"
    put(dest, "scores", "part-r1-000000.parquet", score_rows([
        {"path": "a.jpg", "uri": "file:///s/a.jpg", "run": "r1", "t": 0, "score": 0.1},
        {"path": "b.jpg", "uri": "file:///s/b.jpg", "run": "r1", "t": 0, "score": 0.2},
        {"path": "c.jpg", "uri": "file:///s/c.jpg", "run": "r1", "t": 0, "score": 0.3},
    ]))
    put(dest, "scores", "part-r2-000000.parquet", score_rows([
        {"path": "a.jpg", "uri": "file:///s/a.jpg", "run": "r2", "t": 10, "score": 0.9}]))
    # c changed and now fails: its newer error row supersedes the old score.
    put(dest, "errors", "part-r2-000000.parquet", error_rows([
        {"path": "c.jpg", "uri": "file:///s/c.jpg", "run": "r2", "t": 10, "error": "UnidentifiedImageError"}]))
    return dest


def test_the_sql_views_show_only_the_newest_row_per_key(tmp_path):
    from memscore.flows.sql_cli import connect

    dest = _stale_dest(tmp_path)
    con = connect(str(dest))
    assert sorted(con.sql("SELECT path, score FROM scores").fetchall()) == [("a.jpg", pytest.approx(0.9)),
                                                                            ("b.jpg", pytest.approx(0.2))]
    assert con.sql("SELECT path FROM errors").fetchall() == [("c.jpg",)]
    # Compaction then leaves exactly what the views showed.
    from memscore.storage.compact import drop_superseded_rows

    assert drop_superseded_rows(open_location(str(dest))) == 2
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{dest}/scores/*.parquet')").fetchall()[0][0] == 2


def test_analyze_reads_a_folder_with_stale_rows_without_refusing_it(tmp_path):
    from memscore.flows.analyze import AnalysisOptions, load_scores

    dest = _stale_dest(tmp_path)
    con = duckdb.connect()
    warnings: list[str] = []
    info = load_scores(con, str(dest), AnalysisOptions(), warnings)
    assert info["images"] == 2
    assert sorted(con.sql("SELECT image, score FROM model_scores").fetchall()) == [
        ("a.jpg", pytest.approx(0.9)), ("b.jpg", pytest.approx(0.2))]


def test_the_report_reads_only_current_rows(tmp_path):
    from memscore.tasks.report_data import connect, open_dest

    dest = _stale_dest(tmp_path)
    con = connect()
    tables = open_dest(con, str(dest))
    assert sorted(con.sql(f"SELECT path FROM {tables.scores_sql}").fetchall()) == [("a.jpg",), ("b.jpg",)]
    assert con.sql(f"SELECT path FROM {tables.errors_sql}").fetchall() == [("c.jpg",)]


# ---------------------------------------------------------------------------
# 3 and 4. names that are not UTF-8; links, loops, special files, unreadable folders


def _hostile_listing(tmp_path, photos, monkeypatch, latin1_name: bool):
    """List a folder with links (file and folder, inside and outside SOURCE), a loop, a dangling
    link, a FIFO, a sub-folder that cannot be read and, optionally, a Latin-1 file name."""
    from memscore.tasks.discover import DiscoveryCounts, iter_listing
    from memscore.tasks.plan import plan_shards

    source, outside = tmp_path / "src", tmp_path / "elsewhere"
    (source / "sub").mkdir(parents=True)
    (source / "locked").mkdir()
    outside.mkdir()
    photos["coffee"].save(source / "sub" / "real.jpg", "JPEG")
    photos["rocket"].save(outside / "outside.png", "PNG")
    photos["astronaut"].save(source / "locked" / "hidden.jpg", "JPEG")
    (source / "inside-link.jpg").symlink_to(source / "sub" / "real.jpg")  # link to a file inside SOURCE
    (source / "outside-link.png").symlink_to(outside / "outside.png")  # link to a file outside
    (source / "outside-folder").symlink_to(outside, target_is_directory=True)  # link to a folder outside
    (source / "sub" / "loop").symlink_to(source, target_is_directory=True)  # a loop back to SOURCE
    (source / "dangling.jpg").symlink_to(tmp_path / "missing.jpg")
    os.mkfifo(source / "pipe.jpg")
    if latin1_name:
        photos["chelsea"].save(os.path.join(str(source), os.fsdecode(b"caf\xe9.jpg")), "JPEG")

    real_scandir = os.scandir

    def scandir(path=".", *args):
        if str(path).rstrip("/").endswith("/locked"):  # as if chmod 000 (root reads everything)
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path, *args)

    counts = DiscoveryCounts()
    src = open_location(str(source))
    monkeypatch.setattr(os, "scandir", scandir)
    try:
        nothing_done = pa.table({name: pa.array([], pa.string()) for name in ("uri", "path", "source_version")})
        plan = plan_shards(iter_listing(src, counts=counts), nothing_done, 100)
    finally:
        monkeypatch.setattr(os, "scandir", real_scandir)
    return src, counts, pa.concat_tables(plan.shards)


# Hand count: real, inside-link, outside-link, outside-folder/outside.png.
_FOLLOWED = ["sub/real.jpg", "inside-link.jpg", "outside-link.png", "outside-folder/outside.png"]


def test_links_are_followed_and_what_is_not_followed_is_counted(tmp_path, photos, monkeypatch):
    _, counts, listing = _hostile_listing(tmp_path, photos, monkeypatch, latin1_name=False)
    assert sorted(listing.column("path").to_pylist()) == sorted(_FOLLOWED)
    assert counts.not_followed == {"dangling link": 1, "link loop": 1, "fifo": 1}
    assert counts.unreadable_folders == 1 and counts.examples["unreadable folder"] == ["locked"]


def test_every_entry_of_a_hostile_folder_is_accounted_for(tmp_path, photos, monkeypatch):
    source = tmp_path / "src"
    latin1 = os.fsdecode(b"caf\xe9.jpg")  # Latin-1 'café.jpg', not valid UTF-8
    src, counts, listing = _hostile_listing(tmp_path, photos, monkeypatch, latin1_name=True)
    assert sorted(listing.column("path").to_pylist()) == sorted([*_FOLLOWED, "caf\\xe9.jpg"])
    assert counts.not_followed == {"dangling link": 1, "link loop": 1, "fifo": 1}
    assert counts.unreadable_folders == 1 and counts.escaped_names == 1
    from memscore.storage.uris import unescape_path

    assert unescape_path("caf\\xe9.jpg") == b"caf\xe9.jpg"

    # The escaped one is read through its real name.
    from memscore.models.preprocess import ResizeCrop
    from memscore.tasks.decode import DecodedImage, ShardDataset

    row = next(r for r in listing.to_pylist() if r["path"] == "caf\\xe9.jpg")
    assert row["uri"].endswith("/caf\\xe9.jpg") and row["fs_path"] == os.path.join(str(source), latin1).encode(
        "utf-8", "surrogateescape")
    dataset = ShardDataset(src.fs, [row["fs_path"].decode("utf-8", "surrogateescape")], ResizeCrop(256, 227), None)
    assert isinstance(dataset[0], DecodedImage)


@pytest.mark.slow
def test_a_hostile_folder_is_scored_with_every_image_in_dest(tmp_path, photos):
    """The whole shard path (score_images) with the real model: links and a Latin-1 name scored."""
    from memscore.models.devices import resolve_device
    from memscore.storage.parts import write_part_atomic
    from memscore.tasks.discover import iter_listing
    from memscore.tasks.plan import done_keys, plan_shards
    from memscore.tasks.score import ScoreSettings, get_model, score_images

    source, dest = tmp_path / "src", tmp_path / "out"
    source.mkdir()
    photos["coffee"].save(source / "real.jpg", "JPEG")
    (source / "link.jpg").symlink_to(source / "real.jpg")
    photos["chelsea"].save(os.path.join(str(source), os.fsdecode(b"na\xefve.jpg")), "JPEG")
    (source / "broken.jpg").write_bytes(os.fsencode("x"))
    src, out = open_location(str(source)), open_location(str(dest))
    plan = plan_shards(iter_listing(src), done_keys(out, "resmem", WEIGHTS), 100)
    model = get_model("resmem", None, resolve_device("cpu"))
    settings = ScoreSettings(batch_size=4, workers=0, features=(), max_pixels=None, run_id="r1")
    result = score_images(plan.shards[0], src, model, settings)
    write_part_atomic(out, "scores", "part-r1-000000.parquet", result.scores)
    write_part_atomic(out, "errors", "part-r1-000000.parquet", result.errors)
    scores = {r["path"]: r["score"] for r in pq.read_table(dest / "scores").select(["path", "score"]).to_pylist()}
    assert sorted(scores) == ["link.jpg", "na\\xefve.jpg", "real.jpg"]
    assert scores["link.jpg"] == pytest.approx(scores["real.jpg"], abs=1e-6)
    assert pq.read_table(dest / "errors").column("path").to_pylist() == ["broken.jpg"]


# ---------------------------------------------------------------------------
# 5. transient storage failures


class _FlakyFS:
    """A filesystem whose reads fail ``fails`` times with ``error`` before they succeed."""

    def __init__(self, data: bytes, fails: int, error: Exception) -> None:
        self.data, self.fails, self.error, self.calls = data, fails, error, 0

    def cat_file(self, path):
        self.calls += 1
        if self.calls <= self.fails:
            raise self.error
        return self.data


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG")
    return buffer.getvalue()


def test_transient_read_failures_are_retried_within_the_run(photos, monkeypatch):
    from memscore.models.preprocess import ResizeCrop
    from memscore.tasks.decode import DecodedImage, ImageFailure, load_one

    monkeypatch.setenv("MEMSCORE_READ_RETRY_DELAYS", "0.01,0.01,0.01")
    data = _jpeg(photos["coffee"])
    refused = ConnectionRefusedError(111, "Connection refused")
    flaky = _FlakyFS(data, 2, refused)
    assert isinstance(load_one(0, flaky, "x.jpg", ResizeCrop(256, 227), None), DecodedImage)
    assert flaky.calls == 3

    down = _FlakyFS(data, 99, OSError(5, "An error occurred (503) when calling the GetObject operation: Service Unavailable"))
    failure = load_one(0, down, "x.jpg", ResizeCrop(256, 227), None)
    assert isinstance(failure, ImageFailure) and failure.transient and down.calls == 4

    from botocore.exceptions import EndpointConnectionError, HTTPClientError

    from memscore.tasks.decode import is_transient

    assert is_transient(HTTPClientError(error="garbled response")) and is_transient(
        EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))
    assert not is_transient(PermissionError(13, "Access Denied")) and not is_transient(ValueError("bad request"))

    missing = _FlakyFS(data, 99, FileNotFoundError(2, "No such file"))
    failure = load_one(0, missing, "x.jpg", ResizeCrop(256, 227), None)
    assert isinstance(failure, ImageFailure) and not failure.transient and missing.calls == 1


def test_a_transient_listing_failure_is_left_to_the_storage_retries():
    from memscore.errors import find_user_error
    from memscore.flows.score import _retry_storage_errors
    from prefect.states import Failed

    from memscore.storage.uris import Location
    from memscore.tasks.discover import SourceUnreadableError, iter_listing

    class Down:
        protocol = "memory"

        def exists(self, path):
            raise ConnectionRefusedError(111, "Connection refused")

    with pytest.raises(ConnectionRefusedError) as caught:
        list(iter_listing(Location(fs=Down(), root="/src", uri="memory://src")))
    assert find_user_error(caught.value) is None
    assert _retry_storage_errors(None, None, Failed(data=caught.value)) is True

    class Denied(Down):
        def exists(self, path):
            raise PermissionError(13, "Access Denied")

    with pytest.raises(SourceUnreadableError):
        list(iter_listing(Location(fs=Denied(), root="/src", uri="memory://src")))


def test_an_image_whose_last_failure_was_transient_is_planned_again(tmp_path, photos):
    from memscore.tasks.discover import iter_listing
    from memscore.tasks.plan import done_keys, plan_shards

    source, dest = tmp_path / "src", tmp_path / "out"
    source.mkdir()
    for name in ("a", "b", "c", "d"):
        photos["coffee"].save(source / f"{name}.jpg", "JPEG")
    src = open_location(str(source))
    rows = {r["path"]: r for r in pa.Table.from_batches(list(iter_listing(src))).to_pylist()}

    def err(path, **extra):
        return {"path": path, "uri": rows[path]["uri"], "version": rows[path]["source_version"], "run": "r1", "t": 0, **extra}

    put(dest, "errors", "part-r1-000000.parquet", error_rows([
        err("a.jpg", error="OSError", transient=True),  # 503 after every retry: try again
        err("b.jpg", error="UnidentifiedImageError"),  # a broken file: done
    ]))
    # A part from before the transient column: judged by the error type.
    put(dest, "errors", "part-r0-000000.parquet", error_rows([err("c.jpg", error="ConnectionRefusedError")],
                                                             with_transient=False))
    # d failed transiently, then a later run scored it: done.
    put(dest, "errors", "part-r0-000001.parquet", error_rows([err("d.jpg", error="TimeoutError", transient=True)]))
    put(dest, "scores", "part-r2-000000.parquet", score_rows([{**err("d.jpg"), "run": "r2", "t": 5, "score": 0.5}]))
    plan = plan_shards(iter_listing(src), done_keys(open_location(str(dest)), "resmem", WEIGHTS), 10)
    assert sorted(pa.concat_tables(plan.shards).column("path").to_pylist()) == ["a.jpg", "c.jpg"]
    assert (plan.already_done, plan.after_transient) == (2, 2)


# ---------------------------------------------------------------------------
# 6. the pixel limit; float images


def test_max_pixels_sets_pils_limit_in_both_directions(monkeypatch):
    from memscore.tasks.decode import DecompressionBombError, decode_image, device_jpeg_header

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # PIL's limit, scaled down: 15,000 px is "a bomb"
    data = _jpeg(Image.new("RGB", (150, 100), (90, 120, 30)))
    assert decode_image(data, 20_000).size == (150, 100)  # raised above PIL's limit
    assert device_jpeg_header(data, 20_000) == (150, 100)
    with pytest.raises(DecompressionBombError):
        decode_image(data, 12_000)  # lowered below the image
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)
    with pytest.raises(DecompressionBombError):
        decode_image(data, 12_000)  # lowered below PIL's limit
    assert Image.MAX_IMAGE_PIXELS == 100_000  # restored after each call


def test_float_tiffs_are_converted_as_the_official_package_does(tmp_path):
    resmem = pytest.importorskip("resmem")
    from memscore.models.preprocess import ResizeCrop
    from memscore.tasks.decode import decode_image

    rng = np.random.default_rng(0)
    for values in (rng.random((64, 80)), rng.random((64, 80)) * 400 - 50):  # [0, 1], and beyond 0..255
        buffer = io.BytesIO()
        Image.fromarray(values.astype(np.float32), mode="F").save(buffer, "TIFF")
        image = decode_image(buffer.getvalue(), None)
        assert image.mode == "F"
        ours = ResizeCrop(256, 227)(image).float() / 255  # uint8 [3, 227, 227] -> ToTensor's [0, 1]
        reference = resmem.transformer(image.convert("RGB"))  # the package's documented use
        assert torch.allclose(ours, reference, atol=1e-6)


# ---------------------------------------------------------------------------
# 7. leftovers and messages


def test_a_corrupt_part_is_one_line_naming_it(tmp_path, capsys):
    from memscore.flows.cli import find_user_error, main
    from memscore.storage.parts import CorruptPartError
    from memscore.tasks.plan import done_keys

    dest = _stale_dest(tmp_path)
    bad = dest / "scores" / "part-copied.parquet"
    bad.write_bytes(b"PAR1 this is not really parquet")
    with pytest.raises(CorruptPartError) as caught:
        done_keys(open_location(str(dest)), "resmem", WEIGHTS)
    assert str(bad) in str(caught.value) and "\n" not in str(caught.value)
    assert find_user_error(RuntimeError("wrapped")) is None
    wrapped = RuntimeError("flow failed")
    wrapped.__cause__ = caught.value
    assert find_user_error(wrapped) is caught.value
    assert main(["sql", str(dest), "SELECT count(*) FROM scores"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("memscore: error: ") and str(bad) in err[0] and "_" in err[0]


def test_stale_temporaries_of_killed_runs_are_removed(tmp_path):
    from memscore.storage.parts import remove_stale_temporaries

    dest = tmp_path / "out"
    (dest / "scores").mkdir(parents=True)
    old = dest / "scores" / ".part-r1-000000.parquet.abc.inprogress"
    fresh = dest / "scores" / ".part-r2-000000.parquet.def.inprogress"
    part = dest / "scores" / "part-r1-000000.parquet"
    for file in (old, fresh, part):
        file.write_bytes(b"x")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert remove_stale_temporaries(open_location(str(dest))) == 1
    assert not old.exists() and fresh.exists() and part.exists()


def test_an_unreadable_file_names_its_detected_type_not_a_memory_address():
    from memscore.tasks.decode import preprocess_bytes
    from memscore.models.preprocess import ResizeCrop

    cases = {
        b"%PDF-1.7\n1 0 obj": "PDF",
        b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic": "HEIC",
        b"<svg xmlns='http://www.w3.org/2000/svg'></svg>": "SVG",
        b"hello, this is text saved as .jpg": "text",
    }
    for data, kind in cases.items():
        failure = preprocess_bytes(0, data, "id", ResizeCrop(256, 227), None)
        assert failure.error == "UnidentifiedImageError"
        assert kind in failure.message and "BytesIO" not in failure.message and "0x" not in failure.message


def _malicious_pickle(path: Path, payload: dict) -> None:
    class Exploit:
        def __reduce__(self):
            return (os.system, ("true",))

    torch.save({**payload, "x": Exploit()}, path)


def test_malicious_weights_keep_the_warning_but_not_the_advice(tmp_path):
    from memscore.models.weights import WeightsMismatchError, read_weights_file

    path = tmp_path / "evil.pt"
    _malicious_pickle(path, {"model": {"w": torch.zeros(1)}})
    with pytest.raises(WeightsMismatchError) as caught:
        read_weights_file(path)
    message = str(caught.value)
    assert "\n" not in message and "Weights only load failed" in message and "system" in message
    assert "weights_only` set to `False" not in message and "Re-running" not in message


def test_prune_removes_rows_of_deleted_files_of_that_source_only(tmp_path, photos, capsys):
    from memscore.flows.cli import main
    from memscore.tasks.discover import iter_listing

    one, two, dest = tmp_path / "one", tmp_path / "two", tmp_path / "out"
    rows = []
    for folder in (one, two):
        folder.mkdir()
        for name in ("a", "b"):
            photos["coffee"].save(folder / f"{name}.jpg", "JPEG")
        rows += pa.Table.from_batches(list(iter_listing(open_location(str(folder))))).to_pylist()
    put(dest, "scores", "part-r1-000000.parquet", score_rows(
        [{"path": r["path"], "uri": r["uri"], "run": "r1", "t": 0, "score": 0.5} for r in rows if r["path"] == "a.jpg"]))
    put(dest, "errors", "part-r1-000000.parquet", error_rows(
        [{"path": r["path"], "uri": r["uri"], "run": "r1", "t": 0} for r in rows if r["path"] == "b.jpg"]))
    (one / "a.jpg").unlink()
    (one / "b.jpg").rename(one / "renamed.jpg")
    assert main(["prune", str(one), "--out", str(dest), "--dry-run"]) == 0
    assert "would remove 1 score row(s) and 1 error row(s) of 2 file(s)" in capsys.readouterr().out
    assert len(all_rows(dest)) == 2 and len(all_rows(dest, "errors")) == 2  # a dry run changes nothing
    assert main(["prune", str(one), "--out", str(dest)]) == 0
    left = {r["uri"] for r in all_rows(dest)} | {r["uri"] for r in all_rows(dest, "errors")}
    assert left == {(two / "a.jpg").as_uri(), (two / "b.jpg").as_uri()}  # the other SOURCE keeps its rows


# ---------------------------------------------------------------------------
# 5, against a real S3 API: moto on loopback, answering 500 for a while

from test_s3 import s3, s3_server  # noqa: E402,F401 - the loopback S3 fixtures


@pytest.mark.slow
def test_an_s3_outage_is_bridged_within_the_run_and_finished_by_the_next(s3, photos, monkeypatch, tmp_path):
    from memscore.models.devices import resolve_device
    from memscore.storage.parts import write_part_atomic
    from memscore.tasks.discover import iter_listing
    from memscore.tasks.plan import done_keys, plan_shards
    from memscore.tasks.score import ScoreSettings, get_model, score_images

    fs, flaky = s3
    fs.mkdir("memscore-outage")
    names = ["astronaut", "chelsea", "coffee"]
    for name in names:
        fs.pipe_file(f"memscore-outage/src/{name}.jpg", _jpeg(photos[name]))
    options = {"config_kwargs": {"retries": {"max_attempts": 1, "mode": "standard"}}}  # no botocore retries
    src = open_location("s3://memscore-outage/src", options)
    out = open_location(str(tmp_path / "out"))
    model = get_model("resmem", None, resolve_device("cpu"))

    def run(run_id: str):
        plan = plan_shards(iter_listing(src), done_keys(out, "resmem", model.weights.digest), 100)
        if not plan.shards:
            return plan, None
        settings = ScoreSettings(batch_size=4, workers=0, features=(), max_pixels=None, run_id=run_id)
        result = score_images(plan.shards[0], src, model, settings)
        for folder, table in (("scores", result.scores), ("errors", result.errors)):
            if table.num_rows:
                write_part_atomic(out, folder, f"part-{run_id}-000000.parquet", table)
        return plan, result

    def object_get(method, path):
        return method == "GET" and path.strip("/").count("/") >= 1

    # A 2.5 s outage: bridged by the retries inside the run (0.5 + 1 + 2 s).
    monkeypatch.setenv("MEMSCORE_READ_RETRY_DELAYS", "0.5,1,2")
    flaky.arm("memscore-outage", object_get, 2.5)
    plan, result = run("r1")
    assert flaky.failed_requests > 0
    assert (result.scores.num_rows, result.errors.num_rows) == (3, 0)

    # A new file, and an outage longer than the retries: a transient error row ...
    fs.pipe_file("memscore-outage/src/rocket.jpg", _jpeg(photos["rocket"]))
    monkeypatch.setenv("MEMSCORE_READ_RETRY_DELAYS", "0.2,0.2")
    flaky.arm("memscore-outage", object_get, 600.0)
    plan, result = run("r2")
    assert (plan.to_score, plan.already_done) == (1, 3)
    assert flaky.failed_requests >= 3, flaky.failed_requests  # the read and its retries (s3fs adds its own)
    assert result.errors.to_pylist()[0]["transient"] is True and result.scores.num_rows == 0
    flaky.arm(None, None, 0.0)  # the store is back
    # ... and the next plain run scores it.
    plan, result = run("r3")
    assert (plan.to_score, plan.already_done, plan.after_transient) == (1, 3, 1)
    assert (result.scores.num_rows, result.errors.num_rows) == (1, 0)
    from memscore.flows.sql_cli import connect

    con = connect(str(tmp_path / "out"))
    assert con.sql("SELECT count(*), count(DISTINCT uri) FROM scores").fetchall() == [(4, 4)]
    assert con.sql("SELECT count(*) FROM errors").fetchall() == [(0,)]


def test_analyze_of_a_dest_with_two_sources_says_why_paths_repeat(tmp_path):
    from memscore.flows.analyze import AnalysisError, AnalysisOptions, load_scores

    dest = tmp_path / "out"
    put(dest, "scores", "part-r1-000000.parquet", score_rows([
        {"path": "a.jpg", "uri": "file:///one/a.jpg", "run": "r1", "t": 0, "score": 0.1},
        {"path": "a.jpg", "uri": "file:///two/a.jpg", "run": "r1", "t": 0, "score": 0.2}]))
    with pytest.raises(AnalysisError, match="several SOURCEs"):
        load_scores(duckdb.connect(), str(dest), AnalysisOptions(), [])
    info = load_scores(duckdb.connect(), str(dest), AnalysisOptions(id_column="uri"), [])
    assert info["images"] == 2
