"""Buckets: the score flow against a real S3 API on loopback (moto's server).

Scores a prefix of one bucket into another bucket, reruns incrementally (ETags),
and survives a window in which the destination bucket answers every request with
a server error, without losing or duplicating rows. A fast test checks that a
100,000-key listing streams page by page.
"""

from __future__ import annotations

import io
import threading
import time
import tracemalloc

import pyarrow.parquet as pq
import pytest

from conftest import free_port

from memscore.storage.uris import Location, open_location
from memscore.tasks.discover import LISTING_SCHEMA, SourceNotFoundError, iter_listing, iter_s3_objects


class FlakyS3:
    """WSGI middleware in front of moto: once armed and triggered, fail requests for a while."""

    def __init__(self, app) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.trigger = None  # callable(method, path) -> bool; arms the window on first match
        self.bucket = None  # only requests to this bucket fail
        self.window_s = 0.0
        self.fail_until = 0.0
        self.failed_requests = 0

    def arm(self, bucket: str, trigger, window_s: float) -> None:
        with self.lock:
            self.bucket, self.trigger, self.window_s, self.failed_requests = bucket, trigger, window_s, 0

    def __call__(self, environ, start_response):
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        with self.lock:
            now = time.monotonic()
            if self.trigger is not None and self.trigger(method, path):
                self.trigger, self.fail_until = None, now + self.window_s
            failing = now < self.fail_until and path.lstrip("/").split("/", 1)[0] == self.bucket
            if failing:
                self.failed_requests += 1
        if failing:
            body = b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code><Message>injected failure</Message></Error>'
            start_response("500 Internal Server Error", [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
            return [body]
        return self.app(environ, start_response)


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 on 127.0.0.1 behind :class:`FlakyS3`; yields (endpoint, flaky)."""
    pytest.importorskip("s3fs")
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    flaky = FlakyS3(DomainDispatcherApplication(create_backend_app))
    port = free_port()
    server = make_server("127.0.0.1", port, flaky, threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}", flaky
    finally:
        server.shutdown()
        thread.join(timeout=10)


@pytest.fixture
def s3(s3_server, monkeypatch):
    """Environment pointing boto/s3fs at the loopback server (standard places, no options)."""
    import s3fs

    endpoint, flaky = s3_server
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    yield fs, flaky
    flaky.arm(None, None, 0.0)
    s3fs.S3FileSystem.clear_instance_cache()


def _jpeg(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _read_parts(fs, prefix: str):
    fs.invalidate_cache()
    tables = []
    for key in sorted(fs.find(prefix)):
        assert key.endswith(".parquet"), f"unexpected object {key} under {prefix}"
        with fs.open(key, "rb") as handle:
            tables.append(pq.read_table(handle))  # every object is a whole, readable part
    return tables


@pytest.mark.slow
def test_score_bucket_prefix_into_other_bucket_incremental_and_flaky(s3, photos, prefect_api):
    from memscore.flows.score import score_archive
    from memscore.tasks.pipeline import ScoreRequest

    fs, flaky = s3
    fs.mkdir("memscore-src")
    fs.mkdir("memscore-out")
    names = ["astronaut", "chelsea", "coffee", "rocket"]
    for i, name in enumerate(names):
        fs.pipe_file(f"memscore-src/archive/{'sub/' if i % 2 else ''}{name}.jpg", _jpeg(photos[name]))
    fs.pipe_file("memscore-src/archive/readme.txt", b"not an image")
    fs.pipe_file("memscore-src/elsewhere/ihc.jpg", _jpeg(photos["immunohistochemistry"]))  # outside the prefix

    # Short botocore retries, so the injected outage reaches memscore's own task retries.
    options = {"config_kwargs": {"retries": {"max_attempts": 2, "mode": "standard"}}}
    flaky.arm(
        "memscore-out",
        trigger=lambda method, path: method == "PUT" and "/scores/" in path,
        window_s=4.0,
    )
    first = score_archive(ScoreRequest(
        source="s3://memscore-src/archive", destination="s3://memscore-out/run", device="cpu", workers=0,
        shard_size=2, features=[], storage_options=options,
    ))
    assert flaky.failed_requests > 0, "the injected outage never hit a request"
    assert (first["scored"], first["failed"], first["skipped"], first["shards"]) == (4, 0, 0, 2)
    assert first["ignored_files"] == 1

    tables = _read_parts(fs, "memscore-out/run/scores")
    rows = [row for table in tables for row in table.select(["path", "uri", "source_version"]).to_pylist()]
    paths = sorted(r["path"] for r in rows)
    assert paths == sorted(f"{'sub/' if i % 2 else ''}{n}.jpg" for i, n in enumerate(names))  # none lost, none twice
    assert all(r["uri"].startswith("s3://memscore-src/archive/") for r in rows)
    assert all(r["source_version"].startswith("etag:") for r in rows)
    assert not fs.exists("memscore-out/run/errors")
    before = {r["path"]: r for table in tables for r in table.to_pylist()}

    # Rerun: nothing new, nothing scored (ETags unchanged).
    second = score_archive(ScoreRequest(
        source="s3://memscore-src/archive", destination="s3://memscore-out/run", device="cpu", workers=0,
        shard_size=2, features=[],
    ))
    assert (second["scored"], second["skipped"], second["failed"]) == (0, 4, 0)

    # Change one object, add one: exactly those two are scored; still one row per image.
    fs.pipe_file("memscore-src/archive/coffee.jpg", _jpeg(photos["coffee"].rotate(90)))
    fs.pipe_file("memscore-src/archive/new/hubble.jpg", _jpeg(photos["hubble_deep_field"]))
    third = score_archive(ScoreRequest(  # decode workers in spawned processes read the bucket too
        source="s3://memscore-src/archive", destination="s3://memscore-out/run", device="cpu", workers=1,
        shard_size=2, features=[],
    ))
    assert (third["scored"], third["skipped"], third["failed"]) == (2, 3, 0)
    assert third["superseded_rows_removed"] == 1
    after = {}
    for table in _read_parts(fs, "memscore-out/run/scores"):
        for row in table.to_pylist():
            assert row["path"] not in after, f"duplicate row for {row['path']}"
            after[row["path"]] = row
    assert sorted(after) == sorted([*before, "new/hubble.jpg"])
    assert after["coffee.jpg"]["image_id"] != before["coffee.jpg"]["image_id"]
    assert after["coffee.jpg"]["source_version"] != before["coffee.jpg"]["source_version"]
    for path in ("sub/chelsea.jpg", "sub/rocket.jpg", "astronaut.jpg"):
        assert after[path]["image_id"] == before[path]["image_id"]
        assert after[path]["run_id"] == before[path]["run_id"]


@pytest.mark.slow
def test_s3_listing_pages_and_missing_source(s3):
    fs, _ = s3
    fs.mkdir("memscore-pages")
    for i in range(7):
        fs.pipe_file(f"memscore-pages/p/{i:02d}.png", b"x" * (i + 1))
    fs.pipe_file("memscore-pages/p2/zz.png", b"y")  # shares the string prefix "p", not the folder
    calls = []
    real = fs.call_s3

    def counting(method, *args, **kwargs):
        calls.append((method, kwargs.get("ContinuationToken")))
        return real(method, *args, **kwargs)

    fs.call_s3 = counting
    location = Location(fs=fs, root="memscore-pages/p", uri="s3://memscore-pages/p")
    objects = list(iter_s3_objects(location, page_size=3))
    assert [o["name"].rsplit("/", 1)[-1] for o in objects] == [f"{i:02d}.png" for i in range(7)]
    assert [m for m, _ in calls] == ["list_objects_v2"] * 3
    assert not fs.dircache, "the listing must not fill s3fs's cache"

    batches = list(iter_listing(open_location("s3://memscore-pages/p"), batch_rows=4))
    assert [b.num_rows for b in batches] == [4, 3]

    with pytest.raises(SourceNotFoundError):
        list(iter_listing(open_location("s3://memscore-pages/nope")))
    with pytest.raises(SourceNotFoundError):
        list(iter_listing(open_location("s3://memscore-no-such-bucket/x")))
    with pytest.raises(SourceNotFoundError, match="not a folder"):
        list(iter_listing(open_location("s3://memscore-pages/p/00.png")))

    # The CLI's early check costs one ListObjectsV2 call of one key, whatever the prefix holds.
    from memscore.flows.score_cli import check_source

    fs.call_s3 = real
    check_source("s3://memscore-pages/p", None)
    with pytest.raises(SourceNotFoundError):
        check_source("s3://memscore-pages/nope", None)


class _FakeS3:
    """Just enough of s3fs for the listing: 100,000 keys served in pages of 1,000."""

    protocol = ("s3", "s3a")

    def __init__(self, keys: int) -> None:
        self.keys = keys
        self.pages = 0

    def call_s3(self, method, **request):
        assert method == "list_objects_v2"
        start = int(request.get("ContinuationToken", 0))
        end = min(self.keys, start + request["MaxKeys"])
        self.pages += 1
        contents = [
            {"Key": f"archive/{i // 1000:03d}/img{i:06d}.jpg", "Size": 1000 + i, "ETag": f'"{i:032x}"', "LastModified": None}
            for i in range(start, end)
        ]
        return {"Contents": contents, "IsTruncated": end < self.keys, "NextContinuationToken": str(end)}

    def unstrip_protocol(self, path: str) -> str:
        return f"s3://{path}"


def test_listing_100k_keys_streams_in_pages():
    fake = _FakeS3(100_000)
    location = Location(fs=fake, root="bucket/archive", uri="s3://bucket/archive")
    tracemalloc.start()
    try:
        rows = 0
        for batch in iter_listing(location, batch_rows=10_000):
            assert batch.schema == LISTING_SCHEMA
            rows += batch.num_rows
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rows == 100_000
    assert fake.pages == 100
    # 100,000 info dicts alone would take far more than this; one page plus one batch fits.
    assert peak < 24 * 2**20, f"listing peaked at {peak / 2**20:.1f} MiB"


def _analysis_lab(root, non_parts: bool = False):
    """A memscore DEST (60 scored images; with non_parts, files beside the part that are not parts)
    and LaMem-style human data."""
    import numpy as np

    from test_analyze_cli import add_non_parts, make_dest

    rng = np.random.default_rng(42)
    names = [f"im{i:03d}.jpg" for i in range(60)]
    human = np.round(rng.uniform(0.3, 0.9, 60), 2)
    dest = make_dest(root / "dest", [f"set/{name}" for name in names], (human + rng.normal(0, 0.1, 60)).clip(0, 1))
    if non_parts:
        add_non_parts(dest)
    lamem = root / "test_1.txt"
    lamem.write_text("".join(f"{name} {h}\n" for name, h in zip(names, human)))
    return dest, str(lamem)


@pytest.mark.slow
def test_analyze_lists_a_scores_folder_in_s3_as_a_local_one(s3, tmp_path, capsys):
    """The same DEST locally and in an S3 bucket: the same parts are read (DEST/scores/*.parquet,
    one level, no hidden or _underscore names), so the same analysis comes out."""
    import json

    from memscore.flows.cli import main

    fs, _ = s3
    dest, lamem = _analysis_lab(tmp_path, non_parts=True)
    fs.mkdir("memscore-analyze")
    fs.put(dest + "/", "memscore-analyze/run1/", recursive=True)
    fs.invalidate_cache()
    assert fs.isfile("memscore-analyze/run1/scores/backup/part-x.parquet")
    assert fs.isfile("memscore-analyze/run1/scores/_old.parquet")
    results = []
    for scores in (dest, "s3://memscore-analyze/run1"):
        assert main(["analyze", "--scores", scores, "--human", lamem, "--bootstrap", "20", "--json"]) == 0, \
            capsys.readouterr().err
        results.append(json.loads(capsys.readouterr().out))
    local, remote = results
    assert (local["n_scores"], local["n"]) == (remote["n_scores"], remote["n"]) == (60, 60)
    assert local["spearman"] == remote["spearman"] and local["pearson"] == remote["pearson"]


@pytest.mark.slow
def test_analyze_out_to_an_s3_bucket_with_storage_options(s3, s3_server, tmp_path, capsys, monkeypatch):
    """--out s3://... writes joined.parquet, stats.json and report.md into the bucket, through the
    --storage-options (here the endpoint: no AWS_ENDPOINT_URL in the environment), as it does locally."""
    import json

    from memscore.flows.cli import main

    fs, _ = s3
    endpoint, _ = s3_server
    dest, lamem = _analysis_lab(tmp_path)
    fs.mkdir("memscore-reports")
    local_out = tmp_path / "report"
    assert main(["analyze", "--scores", dest, "--human", lamem, "--bootstrap", "20", "--out", str(local_out)]) == 0
    capsys.readouterr()
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    options = json.dumps({"endpoint_url": endpoint})
    assert main(["analyze", "--scores", dest, "--human", lamem, "--bootstrap", "20",
                 "--out", "s3://memscore-reports/lab/r1", "--storage-options", options]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "wrote s3://memscore-reports/lab/r1/joined.parquet" in printed, printed
    fs.invalidate_cache()
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls("memscore-reports/lab/r1")) == ["joined.parquet", "report.md", "stats.json"]
    with fs.open("memscore-reports/lab/r1/joined.parquet", "rb") as handle:
        assert pq.read_table(handle).equals(pq.read_table(local_out / "joined.parquet"))
    stats = json.loads(fs.cat_file("memscore-reports/lab/r1/stats.json"))
    expected = json.loads((local_out / "stats.json").read_text())
    assert stats["outputs"] == {"joined": "s3://memscore-reports/lab/r1/joined.parquet",
                                "stats": "s3://memscore-reports/lab/r1/stats.json",
                                "report": "s3://memscore-reports/lab/r1/report.md"}
    assert {k: v for k, v in stats.items() if k not in ("outputs", "seconds")} == \
        {k: v for k, v in expected.items() if k not in ("outputs", "seconds")}
    assert fs.cat_file("memscore-reports/lab/r1/report.md").decode() == (local_out / "report.md").read_text()
    # a bucket that is not there is one line, not a traceback
    assert main(["analyze", "--scores", dest, "--human", lamem, "--bootstrap", "0",
                 "--out", "s3://memscore-no-such-bucket/r1", "--storage-options", options]) == 1
    assert "memscore: error: cannot write s3://memscore-no-such-bucket/r1" in capsys.readouterr().err


@pytest.mark.slow
def test_bucket_failures_are_one_line_before_scoring(s3, tmp_path, photos, capsys, monkeypatch):
    """Missing DEST bucket, missing credentials, an endpoint nobody answers: one
    `memscore: error:` line each, before any model runs (they were 60-219 line tracebacks)."""
    import s3fs

    from memscore.flows.cli import main

    fs, _ = s3
    fs.mkdir("oneline-src")
    fs.pipe_file("oneline-src/p/a.jpg", _jpeg(photos["astronaut"]))
    common = ["--device", "cpu", "--features", "none", "--no-progress", "--workers", "0"]

    def one_line(args) -> str:
        s3fs.S3FileSystem.clear_instance_cache()
        assert main(["score", *args, *common]) == 1
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1, lines
        return lines[0]

    assert one_line(["s3://oneline-src/p", "--out", "s3://no-such-bucket/x"]) == (
        "memscore: error: cannot write destination s3://no-such-bucket/x: The specified bucket does not exist")
    assert one_line(["s3://no-such-bucket/p", "--out", str(tmp_path / "o")]).startswith(
        "memscore: error: source not found: s3://no-such-bucket/p")
    with monkeypatch.context() as m:
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            m.delenv(name)
        m.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
        m.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
        line = one_line(["s3://oneline-src/p", "--out", str(tmp_path / "o")])
        assert line.startswith("memscore: error: cannot read source s3://oneline-src/p: Unable to locate credentials")
        assert "worker's environment" in line
    with monkeypatch.context() as m:
        m.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
        line = one_line(["s3://oneline-src/p", "--out", str(tmp_path / "o")])
        assert line.startswith("memscore: error: cannot read source s3://oneline-src/p: Could not connect to the endpoint URL")
    assert not (tmp_path / "o").exists()
