"""The deployment path a user takes, for real, on loopback.

`prefect server start` on a free port with its own PREFECT_HOME (SQLite) ->
`prefect work-pool create memscore --type process` -> `prefect deploy` from the
repository's prefect.yaml -> `prefect worker start` -> `prefect deployment run
'score-archive/default' --params '{"request": {...}}' --watch` -> Parquet under DEST, artifacts on
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
from test_dask import dask_cluster  # noqa: F401 - fixture
from test_s3 import s3_server  # noqa: F401 - fixture

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
    assert nightly["parameters"] == {"request": {"source": "s3://my-archive/photos",
                                                 "destination": "s3://my-results/memscore", "model": "resmem"}}
    schema = nightly["parameter_openapi_schema"]["definitions"]["ScoreRequest"]["properties"]
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
        request = {"source": str(source), "destination": str(destination), "device": "cpu", "workers": 0,
                   "features": []}
        run = subprocess.run(
            [*PREFECT, "deployment", "run", "score-archive/default", "--params", json.dumps({"request": request}),
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
    # Module paths, not file paths: Dask workers import the flow's tasks by module.
    assert set(deployments) == {
        ("memscore.flows.score:score_archive", "default"),
        ("memscore.flows.score:score_archive", "nightly"),
        ("memscore.flows.analyze:analyze", "default"),
        ("memscore.flows.report:report", "default"),
    }
    for (entrypoint, _), deployment in deployments.items():
        assert deployment["work_pool"]["name"] == "memscore"
        module_name, function = entrypoint.split(":")
        module = importlib.import_module(module_name)
        assert hasattr(getattr(module, function), "fn"), f"{entrypoint} is not a Prefect flow"
    nightly = deployments[("memscore.flows.score:score_archive", "nightly")]
    assert [s["active"] for s in nightly["schedules"]] == [False]


def test_prefect_deploy_all_reads_every_deployment_and_its_flow():
    """prefect.yaml as `prefect deploy --all` reads it (Prefect's own loader and picker): every
    deployment, the report's included, and each entrypoint loads as a flow with a parameter schema."""
    from prefect.cli.deploy._config import _load_deploy_configs_and_actions, _pick_deploy_configs
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema
    from rich.console import Console

    console = Console(file=open(os.devnull, "w"))
    configs, _ = _load_deploy_configs_and_actions(REPO / "prefect.yaml", console=console)
    picked = _pick_deploy_configs(configs, deploy_all=True, console=console, is_interactive=lambda: False)
    entrypoints = sorted((c["entrypoint"], c["name"]) for c in picked)
    assert ("memscore.flows.report:report", "default") in entrypoints and len(entrypoints) == 4
    report = next(c for c in picked if c["entrypoint"] == "memscore.flows.report:report")
    assert report["description"].startswith("An offline HTML report") and report["work_pool"]["name"] == "memscore"
    flow = load_flow_from_entrypoint(report["entrypoint"])
    assert flow.name == "report"
    schema = parameter_schema(flow.fn).model_dump()
    assert schema["required"] == ["dest", "out"]
    options = schema["definitions"]["ReportOptions"]["properties"]
    assert options["top"]["default"] == 12 and options["maps_method"]["enum"] == ["auto", "occlusion"]


def test_storage_retries_skip_hopeless_failures_and_summary_markdown():
    from prefect.states import Failed

    from memscore.flows.score import ScoreSummary, _retry_storage_errors, summary_markdown
    from memscore.tasks.discover import SourceNotFoundError, SourceUnreadableError

    assert _retry_storage_errors(None, None, Failed(data=OSError(5, "503 Slow Down"))) is True
    # Errors the user must fix (memscore.errors.UserError) are never retried; transient OSErrors are.
    assert _retry_storage_errors(None, None, Failed(data=SourceUnreadableError("cannot list"))) is False
    assert _retry_storage_errors(None, None, Failed(data=SourceNotFoundError("source not found"))) is False

    summary = ScoreSummary(run_id="r1", source="s3://a/b", destination="s3://c/d", model="resmem",
                           weights="sha256:" + "0" * 64, device="cpu", images_found=5, scored=3, failed=2,
                           errors_by_reason={"UnidentifiedImageError": 1, "EmptyFileError": 1})
    text = summary_markdown(summary)
    assert "| scored | 3 |" in text and "| failed | 2 |" in text
    assert "| EmptyFileError | 1 |" in text and "s3://c/d/errors/*.parquet" in text


def _run_deployment(env, cwd, request: dict, timeout=420) -> subprocess.CompletedProcess:
    """`prefect deployment run score-archive/default --param request=<JSON> --watch`; the finished process."""
    args = [*PREFECT, "deployment", "run", "score-archive/default", "--param", f"request={json.dumps(request)}"]
    return subprocess.run([*args, "--watch", "--watch-timeout", str(timeout - 60)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def _flow_run_result(env, flow_run_id: str) -> dict:
    """The persisted result of a flow run, read back through Prefect's client (as a user would)."""
    code = ("import json, sys\nfrom prefect.client.orchestration import get_client\n"
            "with get_client(sync_client=True) as client:\n"
            "    print(json.dumps(client.read_flow_run(sys.argv[1]).state.result()))\n")
    result = subprocess.run([sys.executable, "-c", code, flow_run_id], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_deployment_runs_on_dask_and_on_s3_and_refuses_bad_parameters(prefect_server, dask_cluster, s3_server,
                                                                       tmp_path, photos):
    """The issue's combinations on a real server and process worker: a deployment run with
    dask_address, one from an S3 bucket into another, `device=gpu` and credentials refused at
    creation, the summary as the persisted result, readable run names, no secret stored."""
    import s3fs

    endpoint, _ = s3_server
    aws = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    env = {**prefect_server, **aws}
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        env.pop(name, None)
    fs = s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": endpoint},
                           skip_instance_cache=True)
    fs.mkdir("deploy-src")
    fs.mkdir("deploy-out")
    for name in ("astronaut", "coffee"):
        buffer = __import__("io").BytesIO()
        photos[name].save(buffer, "JPEG")
        fs.pipe_file(f"deploy-src/archive/{name}.jpg", buffer.getvalue())
    source = tmp_path / "archive"
    source.mkdir()
    photos["chelsea"].save(source / "chelsea.jpg", "JPEG")
    photos["rocket"].save(source / "rocket.png", "PNG")
    (source / "broken.jpg").write_bytes(b"not a jpeg")

    _prefect(env, "work-pool", "create", "memscore", "--type", "process")
    _prefect(env, "--no-prompt", "deploy", "--name", "score-archive/default", timeout=240)
    (deployment,) = _api(env, "/deployments/filter")
    assert deployment["entrypoint"] == "memscore.flows.score:score_archive"

    # Refused when the run is created (the server checks the parameter schema): no flow run, no worker needed.
    common = {"source": str(source), "destination": str(tmp_path / "never")}
    for bad in ({"device": "gpu"}, {"storage_options": {"secret": "s3cr3t-value"}}):
        refused = _run_deployment(env, tmp_path, {**common, **bad}, timeout=120)
        assert refused.returncode != 0, refused.stdout[-2000:]
        assert "validation" in (refused.stdout + refused.stderr).lower(), refused.stdout[-2000:] + refused.stderr[-2000:]
    assert _api(env, "/flow_runs/filter") == []

    worker_log = tmp_path / "worker.log"
    worker = None
    try:
        with open(worker_log, "wb") as out:
            worker = subprocess.Popen(
                [*PREFECT, "worker", "start", "--pool", "memscore", "--limit", "1"],
                env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        on_dask = _run_deployment(env, tmp_path, {"source": str(source), "destination": str(tmp_path / "dask-out"),
                                                  "device": "cpu", "features": [], "dask_address": dask_cluster,
                                                  "shard_size": 1})
        assert on_dask.returncode == 0, f"{on_dask.stdout[-4000:]}\nworker:\n{_tail(worker_log)}"
        on_s3 = _run_deployment(env, tmp_path, {"source": "s3://deploy-src/archive",
                                                "destination": "s3://deploy-out/memscore", "device": "cpu",
                                                "workers": 0, "features": []})
        assert on_s3.returncode == 0, f"{on_s3.stdout[-4000:]}\nworker:\n{_tail(worker_log)}"
    finally:
        stop_process_group(worker)

    scores = pq.read_table(tmp_path / "dask-out" / "scores")
    assert sorted(scores.column("path").to_pylist()) == ["chelsea.jpg", "rocket.png"]
    assert pq.read_table(tmp_path / "dask-out" / "errors").column("path").to_pylist() == ["broken.jpg"]
    fs.invalidate_cache()
    s3_paths = []
    for key in fs.find("deploy-out/memscore/scores"):
        with fs.open(key, "rb") as handle:
            s3_paths += pq.read_table(handle).column("path").to_pylist()
    assert sorted(s3_paths) == ["astronaut.jpg", "coffee.jpg"]

    runs = sorted(_api(env, "/flow_runs/filter"), key=lambda r: r["created"])
    assert [r["state_type"] for r in runs] == ["COMPLETED", "COMPLETED"]
    assert runs[0]["name"] == f"resmem: {source} -> {tmp_path / 'dask-out'}"
    assert runs[1]["name"] == "resmem: s3://deploy-src/archive -> s3://deploy-out/memscore"
    dask_summary = _flow_run_result(env, runs[0]["id"])
    assert (dask_summary["scored"], dask_summary["failed"], dask_summary["shards"]) == (2, 1, 3)
    assert "dask" in dask_summary["device"]
    s3_summary = _flow_run_result(env, runs[1]["id"])
    assert (s3_summary["scored"], s3_summary["failed"]) == (2, 0)
    task_names = {t["name"] for t in _api(env, "/task_runs/filter")}
    assert {"score-shard-0", "score-shard-1", "score-shard-2", "write-parts-0"} <= task_names
    logs = " ".join(entry["message"] for entry in _api(env, "/logs/filter", {"limit": 200}))
    assert "1 image(s) could not be scored (UnidentifiedImageError: 1)" in logs
    assert "holding concurrency limit memscore-dest-" in logs

    # memscore score against this server with credentials in --storage-options: they reach
    # the flow through the process, never the server's database.
    cli_env = {**env, "PYTHONPATH": str(REPO)}
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        cli_env.pop(name)
    options = json.dumps({"key": "testing", "secret": "s3cr3t-memscore-value", "client_kwargs": {"endpoint_url": endpoint}})
    cli = subprocess.run([sys.executable, "-m", "memscore.flows.cli", "score", "s3://deploy-src/archive", "--out",
                          str(tmp_path / "cli-out"), "--device", "cpu", "--features", "none", "--no-progress",
                          "--workers", "0", "--storage-options", options],
                         env=cli_env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr[-3000:]
    stored = _api(env, "/flow_runs/filter")
    assert len(stored) == 3
    everything = json.dumps(stored)
    assert "s3cr3t-memscore-value" not in everything and '"testing"' not in everything
    cli_run = next(r for r in stored if r["parameters"]["request"].get("storage_options_secret"))
    assert cli_run["parameters"]["request"]["storage_options"] == {"client_kwargs": {"endpoint_url": endpoint}}
