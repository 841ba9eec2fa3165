"""The score flow as Prefect users see it: typed choices, descriptions, secrets kept out of
parameters, one-line failures before scoring, one run per DEST, and `memscore sql` options."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import free_port
from memscore.tasks.params import SECRET_KEY_PATTERN

REPO = Path(__file__).resolve().parents[1]


def _flow_schema():
    from prefect.utilities.callables import parameter_schema

    from memscore.flows.score import score_archive

    return parameter_schema(score_archive).model_dump_for_openapi()


def _schema():
    """The properties of the flow's one parameter, ``request`` (a ScoreRequest, referenced from ``definitions``)."""
    schema = _flow_schema()
    ref = schema["properties"]["request"]["$ref"]
    return schema["definitions"][ref.rsplit("/", 1)[1]]["properties"]


def test_choice_parameters_are_enums_and_every_parameter_has_a_description():
    props = _schema()
    assert props["precision"]["enum"] == ["auto", "fp32", "bf16", "fp16"]
    assert props["decode"]["enum"] == ["auto", "workers", "device"]
    assert props["backend"]["enum"] == ["torch", "onnxruntime"]
    device = props["device"]["anyOf"]
    assert device[0]["enum"] == ["auto", "cpu", "cuda", "mps"] and device[1]["pattern"] == "^cuda:[0-9]+$"
    assert not [name for name, p in props.items() if not p.get("description")]


def test_the_schema_refuses_gpu_and_credentials_as_the_server_does():
    """Prefect's server validates a deployment run's parameters against this schema (jsonschema)."""
    import jsonschema

    schema = _flow_schema()
    where = {"source": "s3://a/photos", "destination": "s3://b/out"}
    good = {"device": "cuda:1", "precision": "fp16", "storage_options": {"endpoint_url": "http://x", "anon": True}}
    jsonschema.validate({"request": {**where, **good}}, schema)
    for bad in ({"device": "gpu"}, {"precision": "fp64"}, {"decode": "gpu"}, {"backend": "tensorrt"},
                {"storage_options": {"secret": "s"}}, {"storage_options": {"AWS_SECRET_ACCESS_KEY": "s"}},
                {"storage_options": {"token": "t"}}, {"storage_options": {"account_key": "k"}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"request": {**where, **bad}}, schema)


def test_split_secrets_keeps_nested_shape_and_refuse_names_every_secret():
    from memscore.flows.params import SecretInParametersError, refuse_secrets, resolve_storage_options, split_secrets
    from memscore.flows.params import keep_in_process

    options = {"anon": False, "key": "AKIA", "client_kwargs": {"endpoint_url": "http://h", "aws_session_token": "t"}}
    public, secret = split_secrets(options)
    assert public == {"anon": False, "client_kwargs": {"endpoint_url": "http://h"}}
    assert secret == {"key": "AKIA", "client_kwargs": {"aws_session_token": "t"}}
    with pytest.raises(SecretInParametersError, match="key, client_kwargs.aws_session_token"):
        refuse_secrets(options)
    assert refuse_secrets(public) == public
    ref = keep_in_process(secret)
    assert "AKIA" not in ref
    assert resolve_storage_options(public, ref) == options


def _cli(args, env_extra=None, timeout=240):
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env_extra or {})}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "memscore.flows.cli", *args], env=env, capture_output=True,
                            text=True, timeout=timeout)
    return result, time.monotonic() - started


def test_dest_that_is_a_file_fails_in_one_line_before_scoring(tmp_path, photos):
    (tmp_path / "photos").mkdir()
    photos["astronaut"].save(tmp_path / "photos" / "a.jpg")
    (tmp_path / "taken").write_text("a file where DEST should be")
    result, _ = _cli(["score", str(tmp_path / "photos"), "--out", str(tmp_path / "taken"), "--device", "cpu",
                      "--features", "none", "--no-progress"], {"PREFECT_API_URL": ""})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"memscore: error: cannot write destination {tmp_path / 'taken'}: "
                                                  f"[Errno 17] File exists: '{tmp_path / 'taken'}'"]


def test_prefect_api_url_down_is_one_line_in_seconds(tmp_path, photos):
    (tmp_path / "photos").mkdir()
    photos["astronaut"].save(tmp_path / "photos" / "a.jpg")
    url = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
    result, seconds = _cli(["score", str(tmp_path / "photos"), "--out", str(tmp_path / "out"), "--device", "cpu",
                            "--features", "none", "--no-progress"], {"PREFECT_API_URL": url})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith(f"memscore: error: the Prefect API at {url} (PREFECT_API_URL, from the environment) "
                               "cannot be reached")
    assert "unset PREFECT_API_URL" in lines[0] and "prefect config set" in lines[0]
    assert not (tmp_path / "out" / "scores").exists()
    assert seconds < 60  # Prefect's own retries took 72 s before the check


def test_a_missing_source_fails_the_flow_at_once_with_its_type(tmp_path, prefect_api):
    from memscore.flows.score import score_archive
    from memscore.tasks.discover import SourceNotFoundError
    from memscore.tasks.pipeline import ScoreRequest

    started = time.monotonic()
    with pytest.raises(SourceNotFoundError, match="not found"):
        score_archive(ScoreRequest(source=str(tmp_path / "nowhere"), destination=str(tmp_path / "out"), device="cpu",
                                   features=[]))
    assert time.monotonic() - started < 30  # no task retries (2 + 8 + 30 s of backoff)


def test_flow_call_refuses_credentials_in_storage_options(tmp_path, prefect_api):
    from prefect.exceptions import ParameterTypeError

    from memscore.flows.score import score_archive

    with pytest.raises(ParameterTypeError, match="credentials"):  # a deployment run's parameters: a dict
        score_archive({"source": str(tmp_path), "destination": str(tmp_path / "out"),
                       "storage_options": {"secret": "s3cr3t"}})


def test_one_run_per_destination_holds_a_concurrency_limit(prefect_api):
    import logging

    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import concurrency

    from memscore.flows.dest_lock import hold_destination, limit_name

    assert limit_name("s3://b/out/") == limit_name("s3://b/out") != limit_name("s3://b/out2")
    name = limit_name("/data/out-lock-test")
    with hold_destination("/data/out-lock-test", logging.getLogger("test")) as held:
        assert held == name
        with get_client(sync_client=True) as client:
            limit = client.read_global_concurrency_limit_by_name(name)
        assert (limit.limit, limit.active_slots) == (1, 1)
        with pytest.raises(TimeoutError):  # a second run on the same DEST waits
            with concurrency(name, occupy=1, timeout_seconds=2, strict=True):
                pass
    with concurrency(name, occupy=1, timeout_seconds=10, strict=True):  # free again once the first ends
        pass


@pytest.fixture
def scores_folder(tmp_path) -> Path:
    folder = tmp_path / "dest"
    (folder / "scores").mkdir(parents=True)
    import datetime

    when = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    pq.write_table(pa.table({"image_id": ["i1", "i2"], "path": ['a "q".jpg', "b.jpg"],
                             "uri": [f"file://{folder}/a.jpg", f"file://{folder}/b.jpg"], "model": ["resmem"] * 2,
                             "weights": ["sha256:00"] * 2, "score": [0.25, 0.75], "feat_fc11": [[0.5, 1.5], [2.0]],
                             "run_id": ["20260101T000000Z-aaaaaaaa"] * 2, "scored_at": [when, when]}),
                   folder / "scores" / "part-20260101T000000Z-aaaaaaaa-000000.parquet")
    return folder


def test_sql_csv_writes_feature_lists_as_text(scores_folder):
    import csv
    import io

    from memscore.flows.cli import main

    out = io.StringIO()
    import contextlib

    with contextlib.redirect_stdout(out):
        assert main(["sql", str(scores_folder), "--csv", "SELECT path, feat_fc11 FROM scores ORDER BY path"]) == 0
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert rows == [["path", "feat_fc11"], ['a "q".jpg', "[0.5, 1.5]"], ["b.jpg", "[2.0]"]]


def test_sql_read_only_refuses_other_files(scores_folder, tmp_path, capsys):
    from memscore.flows.cli import main

    (tmp_path / "private.csv").write_text("x\n1\n")
    assert main(["sql", str(scores_folder), "--read-only", "SELECT count(*) AS n FROM scores"]) == 0
    assert "2" in capsys.readouterr().out
    for query in (f"COPY scores TO '{tmp_path / 'copy.csv'}'", f"ATTACH '{tmp_path / 'other.db'}'",
                  f"SELECT * FROM read_csv('{tmp_path / 'private.csv'}')", "SET enable_external_access = true"):
        assert main(["sql", str(scores_folder), "--read-only", query]) == 1, query
        assert "memscore: error:" in capsys.readouterr().err
    assert not (tmp_path / "copy.csv").exists() and not (tmp_path / "other.db").exists()
    # Without --read-only it is full DuckDB (documented).
    assert main(["sql", str(scores_folder), f"SELECT * FROM read_csv('{tmp_path / 'private.csv'}')"]) == 0


def test_storage_options_secret_names_a_prefect_secret_block(prefect_api):
    from prefect.blocks.system import Secret

    from memscore.flows.params import resolve_storage_options

    Secret(value={"key": "k1", "client_kwargs": {"aws_session_token": "t1"}}).save("memscore-test-s3", overwrite=True)
    assert resolve_storage_options({"anon": False, "client_kwargs": {"endpoint_url": "http://h"}}, "memscore-test-s3") == {
        "anon": False, "key": "k1", "client_kwargs": {"endpoint_url": "http://h", "aws_session_token": "t1"}}
    with pytest.raises(ValueError, match="no Prefect Secret block named 'memscore-no-such-block'"):
        resolve_storage_options(None, "memscore-no-such-block")


def test_analyze_flow_keeps_credentials_out_of_its_parameters(tmp_path, prefect_api):
    """The analyze flow refuses secret-looking storage options as a parameter, and
    `memscore analyze --prefect --storage-options` passes credentials by an in-process
    reference: the flow run stored in Prefect's database holds no secret."""
    import asyncio
    import json

    from prefect.client.orchestration import get_client
    from prefect.exceptions import ParameterTypeError

    from memscore.flows.analyze import analyze
    from memscore.flows.cli import main

    with pytest.raises(ParameterTypeError, match="credentials"):
        analyze({"scores": "scores.csv", "human": "human.csv", "options": {"storage_options": {"secret": "s3cr3t"}}})
    names = [f"img{i}.jpg" for i in range(6)]
    (tmp_path / "scores.csv").write_text("path,score\n" + "".join(f"{n},{i / 10}\n" for i, n in enumerate(names)))
    (tmp_path / "human.csv").write_text("path,memorability\n" + "".join(f"{n},{(i % 4) / 5}\n" for i, n in enumerate(names)))
    secret = "AKIA-MEMSCORE-TEST-SECRET"
    assert main(["analyze", "--scores", str(tmp_path / "scores.csv"), "--human", str(tmp_path / "human.csv"),
                 "--human-column", "memorability", "--bootstrap", "0", "--prefect",
                 "--storage-options", json.dumps({"key": secret, "anon": False})]) == 0

    async def stored_parameters():
        async with get_client() as client:
            runs = await client.read_flow_runs(limit=20)
            return [run.parameters for run in runs
                    if run.parameters.get("request", {}).get("scores") == str(tmp_path / "scores.csv")]

    stored = asyncio.run(stored_parameters())
    assert stored, "the analyze flow run was not recorded"
    text = json.dumps(stored)
    assert secret not in text and '"key"' not in text
    assert stored[0]["request"]["options"]["storage_options"] == {"anon": False}


def _deployment_schemas() -> dict[tuple[str, str], tuple[dict, dict]]:
    """(entrypoint, name) -> (parameter schema as `prefect deploy` builds it from the entrypoint, parameters)."""
    import yaml
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema

    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    return {(d["entrypoint"], d["name"]): (parameter_schema(load_flow_from_entrypoint(d["entrypoint"])).model_dump_for_openapi(),
                                          d.get("parameters") or {})
            for d in config["deployments"]}


def test_deployment_schemas_offer_the_nested_objects_choices_and_descriptions():
    """What the UI's form shows: one object per flow, each field with its description, the
    choices as enums and the model's defaults; prefect.yaml's parameters fit the schema."""
    from prefect.utilities.schema_tools.validation import validate

    schemas = _deployment_schemas()
    score, _ = schemas[("memscore.flows.score:score_archive", "default")]
    assert list(score["properties"]) == ["request"] and score["required"] == ["request"]
    assert score["properties"]["request"]["$ref"] == "#/definitions/ScoreRequest"
    request = score["definitions"]["ScoreRequest"]
    assert request["required"] == ["source", "destination"]
    props = request["properties"]
    assert not [name for name, p in props.items() if not p.get("description")]
    assert props["precision"]["enum"] == ["auto", "fp32", "bf16", "fp16"] and props["precision"]["default"] == "auto"
    assert props["decode"]["enum"] == ["auto", "workers", "device"] and props["backend"]["enum"] == ["torch", "onnxruntime"]
    assert props["device"]["anyOf"][0]["enum"] == ["auto", "cpu", "cuda", "mps"] and props["device"]["default"] == "auto"
    assert props["batch_size"]["anyOf"][0] == {"type": "integer", "minimum": 1}
    assert props["storage_options"]["anyOf"][0]["propertyNames"] == {"not": {"pattern": SECRET_KEY_PATTERN}}
    assert "Prefect Secret block" in props["storage_options_secret"]["description"]

    analyze, _ = schemas[("memscore.flows.analyze:analyze", "default")]
    options = analyze["definitions"]["AnalysisOptions"]["properties"]
    assert analyze["definitions"]["AnalyzeRequest"]["properties"]["options"]["$ref"] == "#/definitions/AnalysisOptions"
    assert options["match"]["enum"] == ["auto", "path", "name", "stem"]
    assert options["human_measure"]["anyOf"][0]["enum"] == ["hit_rate", "false_alarm_rate", "corrected_recognition",
                                                            "miss_rate", "dprime"]
    assert options["human_measures"]["anyOf"][0]["items"]["enum"] == options["human_measure"]["anyOf"][0]["enum"]
    assert options["confidence"] == {"default": 0.95, "description": options["confidence"]["description"],
                                     "exclusiveMaximum": 1.0, "exclusiveMinimum": 0.0, "title": "Confidence",
                                     "type": "number"}
    assert not [name for name, p in options.items() if not p.get("description")]
    # The server checks a deployment's own parameters this way when it is created.
    for schema, parameters in schemas.values():
        validate(parameters, schema, raise_on_error=True, ignore_required=True)


def test_a_deployment_run_with_a_bad_nested_value_is_refused_when_created(prefect_api):
    """Prefect's server validates a deployment run's parameters against the deployment's schema
    (enforce_parameter_schema, on by default): a bad device or precision inside ``request``, a
    credential in its storage_options or a missing destination creates no flow run."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectHTTPStatusError

    schema, _ = _deployment_schemas()[("memscore.flows.score:score_archive", "default")]
    where = {"source": "s3://a/photos", "destination": "s3://b/out"}

    async def create_runs() -> tuple[list[str], list[dict]]:
        async with get_client() as client:
            flow_id = await client.create_flow_from_name("score-archive")
            deployment_id = await client.create_deployment(
                flow_id=flow_id, name="schema-test", entrypoint="memscore.flows.score:score_archive",
                parameter_openapi_schema=schema, enforce_parameter_schema=True)
            refused = []
            for bad in ({**where, "device": "gpu"}, {**where, "precision": "fp64"},
                        {**where, "storage_options": {"secret": "s3cr3t"}}, {"source": "s3://a/photos"}):
                try:
                    await client.create_flow_run_from_deployment(deployment_id, parameters={"request": bad})
                except PrefectHTTPStatusError as error:
                    refused.append(error.response.text)
            run = await client.create_flow_run_from_deployment(
                deployment_id, parameters={"request": {**where, "device": "cuda:1", "precision": "fp16"}})
            runs = await client.read_flow_runs()
            stored = [r.parameters for r in runs if r.deployment_id == deployment_id]
            await client.delete_flow_run(run.id)
            await client.delete_deployment(deployment_id)
            return refused, stored

    refused, stored = asyncio.run(create_runs())
    assert len(refused) == 4, refused
    assert all("Validation failed" in text for text in refused), refused
    assert "'gpu'" in refused[0] and "'fp64'" in refused[1] and "destination" in refused[3]
    assert stored == [{"request": {**where, "device": "cuda:1", "precision": "fp16"}}]
