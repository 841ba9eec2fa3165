"""The deployment path a user takes, for real, on loopback.

`prefect server start` on a free port with its own PREFECT_HOME (SQLite) ->
`prefect work-pool create memscore --type process` -> `prefect deploy` from the
repository's prefect.yaml -> `prefect worker start` -> `prefect deployment run
'score-archive/default' --param ... --watch` -> Parquet under DEST, artifacts on
the server. Every process is stopped in ``finally``, also when a step fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import free_port, stop_process_group

REPO = Path(__file__).resolve().parents[1]
PREFECT = [sys.executable, "-m", "prefect"]


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


@pytest.fixture
def prefect_server(tmp_path):
    """A real Prefect server on 127.0.0.1:<free port>; yields the environment that points at it."""
    home = tmp_path / "prefect-home"
    home.mkdir()
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_CLI_PROMPT": "false",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        "MEMSCORE_CACHE_DIR": str(tmp_path / "memscore-cache"),
    }
    env.pop("PREFECT_PROFILE", None)
    log = tmp_path / "server.log"
    server = None
    try:
        with open(log, "wb") as out:
            server = subprocess.Popen(
                [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path,
            )
        deadline = time.monotonic() + 150
        while True:
            if server.poll() is not None:
                pytest.fail(f"prefect server exited with {server.returncode}:\n{_tail(log)}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"prefect server not healthy after 150 s:\n{_tail(log)}")
            time.sleep(1)
        yield env
    finally:
        stop_process_group(server)


def _prefect(env, *args, timeout=180, cwd=REPO) -> subprocess.CompletedProcess:
    result = subprocess.run([*PREFECT, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"prefect {' '.join(args)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _api(env, path: str, body: dict | None = None):
    request = urllib.request.Request(
        env["PREFECT_API_URL"] + path, data=json.dumps(body or {}).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_deploy_from_prefect_yaml_and_run_on_a_worker(prefect_server, tmp_path, photos):
    env = prefect_server
    source = tmp_path / "archive"
    (source / "sub").mkdir(parents=True)
    photos["astronaut"].save(source / "astronaut.jpg", "JPEG")
    photos["chelsea"].save(source / "sub" / "chelsea.png", "PNG")
    (source / "broken.jpg").write_bytes(b"not a jpeg")
    destination = tmp_path / "results"

    text = (REPO / "prefect.yaml").read_text()
    assert not any(marker in text for marker in ("/home/", "/Users/", "/work/", "C:\\")), "developer paths in prefect.yaml"
    _prefect(env, "work-pool", "create", "memscore", "--type", "process")
    analyze_ready = (REPO / "flows" / "analyze.py").is_file()
    if analyze_ready:
        _prefect(env, "--no-prompt", "deploy", "--all", timeout=240)
    else:  # the analyze flow is not in this checkout yet: deploy the scoring deployments only
        _prefect(env, "--no-prompt", "deploy", "--name", "score-archive/default", "--name", "score-archive/nightly", timeout=240)

    flows_by_id = {f["id"]: f["name"] for f in _api(env, "/flows/filter")}
    all_deployments = _api(env, "/deployments/filter")
    deployed = sorted(f"{flows_by_id[d['flow_id']]}/{d['name']}" for d in all_deployments)
    assert "score-archive/default" in deployed and "score-archive/nightly" in deployed
    if analyze_ready:
        assert "analyze/default" in deployed
    for d in all_deployments:
        assert d["work_pool_name"] == "memscore"
        # The working directory is recorded at deploy time (here: this checkout), not written in prefect.yaml.
        assert d["pull_steps"] == [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]
    nightly = next(d for d in all_deployments if flows_by_id[d["flow_id"]] == "score-archive" and d["name"] == "nightly")
    assert [s["active"] for s in nightly["schedules"]] == [False]
    assert nightly["schedules"][0]["schedule"]["cron"] == "0 2 * * *"
    schema = nightly["parameter_openapi_schema"]["properties"]
    assert schema["source"]["type"] == "string" and schema["batch_size"]["anyOf"][0]["type"] == "integer"
    assert schema["dask_address"]["anyOf"][0]["type"] == "string"

    worker_log = tmp_path / "worker.log"
    worker = None
    try:
        with open(worker_log, "wb") as out:
            worker = subprocess.Popen(
                [*PREFECT, "worker", "start", "--pool", "memscore", "--limit", "1"],
                env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        run = subprocess.run(
            [*PREFECT, "deployment", "run", "score-archive/default",
             "--param", f"source={source}", "--param", f"destination={destination}",
             "--param", "device=cpu", "--param", "workers=0", "--param", "features=[]",
             "--watch", "--watch-timeout", "300"],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=360,
        )
        assert run.returncode == 0, f"deployment run failed:\n{run.stdout[-4000:]}\n{run.stderr[-2000:]}\nworker:\n{_tail(worker_log)}"
        assert "Completed" in run.stdout + run.stderr
    finally:
        stop_process_group(worker)

    scores = pq.read_table(destination / "scores")
    assert sorted(scores.column("path").to_pylist()) == ["astronaut.jpg", "sub/chelsea.png"]
    assert all(0.0 <= s <= 1.0 for s in scores.column("score").to_pylist())
    errors = pq.read_table(destination / "errors")
    assert errors.column("path").to_pylist() == ["broken.jpg"]

    runs = _api(env, "/flow_runs/filter")
    assert [r["state_type"] for r in runs] == ["COMPLETED"]
    artifacts = {a["key"]: a for a in _api(env, "/artifacts/filter") if a.get("key")}
    assert "score-archive-summary" in artifacts
    summary = artifacts["score-archive-summary"]["data"]
    assert "| scored | 2 |" in summary and "| failed | 1 |" in summary and "UnidentifiedImageError" in summary
    progress = artifacts["score-archive-progress"]
    assert progress["type"] == "progress" and float(progress["data"]) == pytest.approx(100.0)

    # The pool is overridable per deployment from the command line.
    _prefect(env, "work-pool", "create", "memscore-gpu", "--type", "process")
    _prefect(env, "--no-prompt", "deploy", "--name", "score-archive/default", "--pool", "memscore-gpu")
    pools = {(flows_by_id[d["flow_id"]], d["name"]): d["work_pool_name"] for d in _api(env, "/deployments/filter")}
    assert pools[("score-archive", "default")] == "memscore-gpu"
    assert pools[("score-archive", "nightly")] == "memscore"


def test_prefect_yaml_entrypoints_pool_and_schedule():
    import importlib

    import yaml

    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    deployments = {(d["entrypoint"], d["name"]): d for d in config["deployments"]}
    assert set(deployments) == {
        ("flows/score.py:score_archive", "default"),
        ("flows/score.py:score_archive", "nightly"),
        ("flows/analyze.py:analyze", "default"),
    }
    for (entrypoint, _), deployment in deployments.items():
        assert deployment["work_pool"]["name"] == "memscore"
        path, function = entrypoint.split(":")
        if (REPO / path).is_file():
            module = importlib.import_module("memscore." + path.removesuffix(".py").replace("/", "."))
            assert hasattr(getattr(module, function), "fn"), f"{entrypoint} is not a Prefect flow"
    nightly = deployments[("flows/score.py:score_archive", "nightly")]
    assert [s["active"] for s in nightly["schedules"]] == [False]


def test_storage_retries_skip_hopeless_failures_and_summary_markdown():
    from prefect.states import Failed

    from memscore.flows.score import ScoreSummary, _retry_storage_errors, summary_markdown
    from memscore.tasks.discover import SourceNotFoundError, SourceUnreadableError

    assert _retry_storage_errors(None, None, Failed(data=OSError(5, "503 Slow Down"))) is True
    assert _retry_storage_errors(None, None, Failed(data=SourceUnreadableError("cannot list"))) is True
    assert _retry_storage_errors(None, None, Failed(data=SourceNotFoundError("source not found"))) is False

    summary = ScoreSummary(run_id="r1", source="s3://a/b", destination="s3://c/d", model="resmem",
                           weights="sha256:" + "0" * 64, device="cpu", images_found=5, scored=3, failed=2,
                           errors_by_reason={"UnidentifiedImageError": 1, "EmptyFileError": 1})
    text = summary_markdown(summary)
    assert "| scored | 3 |" in text and "| failed | 2 |" in text
    assert "| EmptyFileError | 1 |" in text and "s3://c/d/errors/*.parquet" in text
