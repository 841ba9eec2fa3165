"""`score-archive` end to end: Parquet contract, incremental reruns, resume after kill -9."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from conftest import write_archive

pytestmark = pytest.mark.slow


def scores_glob(dest: Path) -> str:
    return str(dest / "scores" / "*.parquet")


def test_score_archive_writes_the_contract_and_reruns_incrementally(tmp_path, photos, prefect_api):
    from memscore.flows.score import score_archive
    from memscore.tasks.pipeline import ScoreRequest

    source, dest = tmp_path / "archive", tmp_path / "out"
    files = write_archive(source, photos, count=4)
    summary = score_archive(ScoreRequest(source=str(source), destination=str(dest), device="cpu", batch_size=2,
                                         workers=1, shard_size=3))
    assert (summary["scored"], summary["failed"], summary["skipped"], summary["ignored_files"]) == (4, 0, 0, 1)
    assert summary["shards"] == 2

    con = duckdb.connect()
    types = dict(con.sql(f"SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM read_parquet('{scores_glob(dest)}'))").fetchall())
    expected = {
        "image_id": "VARCHAR", "path": "VARCHAR", "uri": "VARCHAR", "size_bytes": "BIGINT",
        "width": "INTEGER", "height": "INTEGER", "model": "VARCHAR", "weights": "VARCHAR",
        "score": "FLOAT", "feat_resnet152": "FLOAT[]", "feat_fc11": "FLOAT[]",
        "run_id": "VARCHAR", "scored_at": "TIMESTAMP WITH TIME ZONE",
    }
    for column, column_type in expected.items():
        assert types.get(column) == column_type, (column, types.get(column))

    # Parquet keeps the Arrow type: fixed_size_list<float32>[dim]; DuckDB reads it as a list.
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(next((dest / "scores").glob("*.parquet")))
    assert schema.field("feat_resnet152").type == pa.list_(pa.float32(), 1000)
    assert schema.field("feat_fc11").type == pa.list_(pa.float32(), 256)
    lengths = con.sql(f"SELECT DISTINCT len(feat_resnet152), len(feat_fc11) FROM read_parquet('{scores_glob(dest)}')").fetchall()
    assert lengths == [(1000, 256)]

    rows = con.sql(f"SELECT path, image_id, uri, size_bytes, width, height, model, weights, score FROM read_parquet('{scores_glob(dest)}') ORDER BY path").fetchall()
    by_path = {row[0]: row for row in rows}
    expected_paths = {f.relative_to(source).as_posix() for f in files}
    assert set(by_path) == expected_paths
    assert "a/b/chelsea cat.PNG" in by_path and "café/coffee.webp" in by_path
    for file in files:
        path, image_id, uri, size, width, height, model, weights, score = by_path[file.relative_to(source).as_posix()]
        assert image_id == hashlib.sha256(file.read_bytes()).hexdigest()
        assert size == file.stat().st_size and (width, height) == (320, 240)
        assert uri.startswith("file://") and uri.endswith(path)
        assert model == "resmem" and weights.startswith("sha256:") and len(weights) == 71
        assert 0.0 < score < 1.0
    assert not list((dest / "scores").glob(".*"))  # no temporary files left behind

    # Rerun: nothing new to do.
    again = score_archive(ScoreRequest(source=str(source), destination=str(dest), device="cpu", workers=0))
    assert (again["scored"], again["skipped"]) == (0, 4)

    # A changed file and a new one: only those two are scored, one row per image remains.
    photos["rocket"].rotate(180).save(source / "a" / "astronaut.jpg", "JPEG")
    photos["rocket"].save(source / "new one.jpg", "JPEG")
    third = score_archive(ScoreRequest(source=str(source), destination=str(dest), device="cpu", workers=0))
    assert (third["scored"], third["skipped"]) == (2, 3)
    counts = con.sql(f"SELECT path, count(*) FROM read_parquet('{scores_glob(dest)}') GROUP BY path").fetchall()
    assert len(counts) == 5 and all(n == 1 for _, n in counts)
    new_id = con.sql(f"SELECT image_id FROM read_parquet('{scores_glob(dest)}') WHERE path = 'a/astronaut.jpg'").fetchall()[0][0]
    assert new_id == hashlib.sha256((source / "a" / "astronaut.jpg").read_bytes()).hexdigest()


def test_errors_are_written_and_not_retried_unless_asked(tmp_path, photos, prefect_api):
    from memscore.flows.score import score_archive
    from memscore.tasks.pipeline import ScoreRequest

    source, dest = tmp_path / "archive", tmp_path / "out"
    write_archive(source, photos, count=1)
    (source / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    summary = score_archive(ScoreRequest(source=str(source), destination=str(dest), device="cpu", workers=0, features=[]))
    assert (summary["scored"], summary["failed"]) == (1, 1)
    errors = duckdb.sql(f"SELECT path, stage, error, message FROM read_parquet('{dest}/errors/*.parquet')").fetchall()
    assert errors[0][:3] == ("broken.jpg", "decode", "UnidentifiedImageError") and errors[0][3]
    columns = [c for c, in duckdb.sql(f"SELECT column_name FROM (DESCRIBE SELECT * FROM read_parquet('{scores_glob(dest)}'))").fetchall()]
    assert not [c for c in columns if c.startswith("feat_")]
    assert score_archive(ScoreRequest(source=str(source), destination=str(dest), device="cpu", workers=0,
                                      features=[]))["skipped"] == 2
    retried = score_archive(ScoreRequest(source=str(source), destination=str(dest), device="cpu", workers=0,
                                         features=[], retry_errors=True))
    assert (retried["scored"], retried["failed"]) == (0, 1)
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{dest}/errors/*.parquet')").fetchall()[0][0] == 1


def test_a_run_killed_with_sigkill_is_finished_by_the_next_run(tmp_path, photos):
    source, dest = tmp_path / "archive", tmp_path / "out"
    for i in range(10):
        photos["coffee"].rotate(i * 7).save(source / f"img{i:02d}.jpg" if source.exists() else _mkdir(source) / f"img{i:02d}.jpg", "JPEG")
    command = [sys.executable, "-m", "memscore.flows.cli", "score", str(source), "--out", str(dest), "--device", "cpu",
               "--shard-size", "2", "--batch-size", "2", "--workers", "0", "--features", "fc11", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and len(list((dest / "scores").glob("*.parquet"))) < 2:
            assert process.poll() is None, "the run ended before it could be killed"
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    parts_before = len(list((dest / "scores").glob("*.parquet")))
    assert 2 <= parts_before < 5
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
    rows = duckdb.sql(f"SELECT path, count(*) FROM read_parquet('{scores_glob(dest)}') GROUP BY path").fetchall()
    assert len(rows) == 10 and all(n == 1 for _, n in rows)


def _mkdir(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder
