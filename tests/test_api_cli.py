"""`memscore score` on a local SOURCE and DEST runs without Prefect (no server, no API),
writes the same rows and prints the same summary as the `score-archive` flow."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
# Imported here, at collection: Prefect sets up its console log handler on first import, on the
# sys.stderr of that moment; inside a test using capsys that stream is closed by the next test.
import prefect.main  # noqa: F401 - `from prefect import flow` and the like: this sets up Prefect's logging
from prefect.client.orchestration import PrefectClient, SyncPrefectClient
from prefect.server.api.server import SubprocessASGIServer

from conftest import write_archive

pytestmark = pytest.mark.slow


def _rows(dest: Path) -> list[dict]:
    """DEST/scores and DEST/errors rows without the per-run columns, sorted by path."""
    rows = []
    for folder, stamp in (("scores", "scored_at"), ("errors", "failed_at")):
        for part in sorted((dest / folder).glob("*.parquet")):
            for row in pq.read_table(part).to_pylist():
                row.pop("run_id"), row.pop(stamp)
                if "message" in row:  # PIL names the buffer it read: "<_io.BytesIO object at 0x7f...>"
                    row["message"] = re.sub(r" at 0x[0-9a-f]+", " at 0x...", row["message"])
                rows.append({"folder": folder, **row})
    return sorted(rows, key=lambda r: (r["folder"], r["path"]))


def _forbid_prefect_servers(monkeypatch) -> list[str]:
    """Make every way Prefect reaches an API fail: starting the temporary local server, and
    entering an API client (sync or async). Returns the list of attempts made."""
    attempts: list[str] = []

    def refuse(what):
        def refused(*args, **kwargs):
            attempts.append(what)
            raise RuntimeError(f"test: {what} is forbidden on the plain path")
        return refused

    monkeypatch.setattr(SubprocessASGIServer, "start", refuse("starting a Prefect server"))
    monkeypatch.setattr(PrefectClient, "__aenter__", refuse("a Prefect API client"))
    monkeypatch.setattr(SyncPrefectClient, "__enter__", refuse("a Prefect API client"))
    return attempts


def test_plain_score_starts_no_prefect_server_and_matches_the_flow(tmp_path, photos, monkeypatch, capsys, prefect_api):
    """The plain path: no Prefect server, no API client (both forbidden here), exit 0; the
    flow (--prefect) under the same ban fails, so the ban bites. Then, with Prefect allowed
    (the session's test API), the flow writes the same rows and prints the same summary."""
    from memscore.flows.cli import main

    import memscore.flows.score_cli as score_cli

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setattr(score_cli, "profile_api_url", lambda: None)  # whatever this machine's Prefect profile says
    source = tmp_path / "archive"
    write_archive(source, photos, count=3)
    (source / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    plain, flow = tmp_path / "plain", tmp_path / "flow"
    common = ["--device", "cpu", "--workers", "0", "--shard-size", "2", "--json", "--no-progress"]

    with monkeypatch.context() as banned:
        attempts = _forbid_prefect_servers(banned)
        assert main(["score", str(source), "--out", str(plain), *common]) == 0
        assert attempts == []
        plain_summary = json.loads(capsys.readouterr().out)
        with pytest.raises(RuntimeError, match="forbidden on the plain path"):
            main(["score", str(source), "--out", str(tmp_path / "banned-flow"), *common, "--prefect"])
        assert attempts
    capsys.readouterr()

    assert main(["score", str(source), "--out", str(flow), *common, "--prefect"]) == 0  # the session's API
    flow_summary = json.loads(capsys.readouterr().out)

    assert _rows(plain) == _rows(flow)
    assert [(r["folder"], r["path"]) for r in _rows(plain)] == [
        ("errors", "broken.png"), ("scores", "a/astronaut.jpg"), ("scores", "a/b/chelsea cat.PNG"),
        ("scores", "café/coffee.webp")]
    varying = {"run_id", "destination", "seconds", "images_per_second"}
    assert {k: v for k, v in plain_summary.items() if k not in varying} == \
        {k: v for k, v in flow_summary.items() if k not in varying}
    assert (plain_summary["scored"], plain_summary["failed"], plain_summary["shards"]) == (3, 1, 2)
    for dest, summary in ((plain, plain_summary), (flow, flow_summary)):  # provenance for `memscore report`
        run = json.loads((dest / "runs" / f"{summary['run_id']}.json").read_text())
        assert run["scored"] == 3 and run["started_at"] <= run["finished_at"]


def test_when_the_flow_is_used(monkeypatch, tmp_path):
    """--prefect, PREFECT_API_URL (environment or profile), --dask-address and buckets take
    the flow; local jobs do not."""
    from memscore.flows.cli import build_parser, parse_command_line
    from memscore.flows.score_cli import wants_flow

    parser = build_parser()

    def reason(*argv):
        return wants_flow(parse_command_line(parser, ["score", *argv]))

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv("PREFECT_PROFILE", raising=False)
    monkeypatch.delenv("PREFECT_PROFILES_PATH", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    profiles = tmp_path / "profiles.toml"
    profiles.write_text('active = "local"\n[profiles.local]\nPREFECT_LOGGING_LEVEL = "INFO"\n'
                        '[profiles.server]\nPREFECT_API_URL = "http://127.0.0.1:4200/api"\n')
    assert reason("photos", "--out", "scores") is None
    assert reason("file:///photos", "--out", "file:///scores") is None
    assert reason("photos", "--out", "scores", "--prefect") == "--prefect"
    assert reason("s3://bucket/photos", "--out", "scores") == "s3://bucket/photos is not a local folder"
    assert reason("photos", "--out", "memory://scores") == "memory://scores is not a local folder"
    assert reason("photos", "--out", "scores", "--dask-address", "tcp://h:8786") == "--dask-address"
    monkeypatch.setenv("PREFECT_PROFILE", "server")  # `prefect profile use server` for this shell
    assert reason("photos", "--out", "scores") == "the Prefect profile server sets PREFECT_API_URL"
    profiles.write_text(profiles.read_text().replace('active = "local"', 'active = "server"'))
    monkeypatch.delenv("PREFECT_PROFILE")
    assert reason("photos", "--out", "scores") == "the Prefect profile server sets PREFECT_API_URL"
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    assert reason("photos", "--out", "scores") == "PREFECT_API_URL is set"
