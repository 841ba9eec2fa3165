"""One typed parameter object per pipeline (ScoreRequest, AnalysisOptions/AnalyzeRequest,
TrainConfig): the CLI's and the Python API's defaults and choices are the model's, refused
values are one line, and credentials never reach a flow run's stored parameters."""

from __future__ import annotations

import inspect
import json
from typing import get_args

import pytest

# (subcommand, minimal argv, model, {argparse dest: model field}) for the options that map one to one.
SCORE_FIELDS = ["model", "weights", "device", "batch_size", "workers", "shard_size", "max_pixels", "retry_errors",
                "dask_address", "precision", "channels_last", "fold_batchnorm", "compile_model", "decode", "backend"]
ANALYZE_FIELDS = ["id_column", "human_id_column", "score_column", "human_column", "human_measure", "human_format",
                  "match", "bootstrap", "splits", "seed", "confidence", "group_column", "model", "max_filler_fa",
                  "max_vigilance_miss", "min_observations", "empty_response"]
TRAIN_FIELDS = ["human_format", "id_column", "score_column", "measure", "duplicates", "val_fraction", "test_fraction",
                "seed", "max_images", "loss", "rank_weight", "optimizer", "lr", "weight_decay", "epochs", "batch_size",
                "patience", "amp", "init", "resmem_weights", "segmenter_weights", "device", "workers"]


def _parse(*argv: str):
    from memscore.flows.cli import build_parser

    return build_parser().parse_args(list(argv))


def test_cli_defaults_and_choices_are_the_models():
    from memscore.tasks.analysis_options import AnalysisOptions
    from memscore.tasks.pipeline import ScoreRequest
    from memscore.tasks.train_config import TrainConfig

    cases = [
        (_parse("score", "src", "--out", "dest"), ScoreRequest, SCORE_FIELDS),
        (_parse("analyze", "--scores", "s", "--human", "h"), AnalysisOptions, ANALYZE_FIELDS),
        (_parse("train", "--model", "m", "--human", "h", "--images", "i", "--out", "o"), TrainConfig, TRAIN_FIELDS),
    ]
    for args, model, fields in cases:
        for name in fields:
            assert getattr(args, name) == model.model_fields[name].default, (model.__name__, name)
    # Written out here (the documented choices), not read from memscore.
    actions = {a.dest: a for a in __import__("memscore.flows.cli", fromlist=["x"]).build_parser()
               ._subparsers._group_actions[0].choices["score"]._actions}
    assert tuple(actions["precision"].choices) == ("auto", "fp32", "bf16", "fp16")
    assert tuple(actions["decode"].choices) == ("auto", "workers", "device")
    assert tuple(actions["backend"].choices) == ("torch", "onnxruntime")
    assert actions["device"].choices is None  # cuda:N too: checked by the model
    assert "default: auto" in actions["precision"].help and "Spearman 0.99997" in actions["precision"].help
    # The Python API's keyword defaults are the models' too.
    import memscore

    for name, parameter in inspect.signature(memscore.score).parameters.items():
        field = {"progress": "show_progress"}.get(name, name)
        if field in ScoreRequest.model_fields and not ScoreRequest.model_fields[field].is_required():
            assert parameter.default == ScoreRequest.model_fields[field].default, name


def test_refused_values_are_one_line_user_errors(tmp_path, capsys):
    from memscore.flows.cli import main
    from memscore.tasks.params import ParameterError
    from memscore.tasks.pipeline import ScoreRequest
    from memscore.tasks.train_config import TrainConfig, TrainingError

    import memscore

    with pytest.raises(ParameterError) as refused:
        ScoreRequest(source="a", destination="b", device="gpu")
    assert str(refused.value) == ("unknown device 'gpu'; choose from 'auto', 'cpu', 'cuda' or 'mps', "
                                  "or a value matching ^cuda:[0-9]+$")
    with pytest.raises(memscore.UserError, match=r"^batch_size must be greater than or equal to 1 \(got 0\)$"):
        memscore.score(tmp_path, batch_size=0)
    with pytest.raises(memscore.UserError, match=r"^unknown precision 'fp64'; choose from 'auto', 'fp32', 'bf16' or 'fp16'$"):
        memscore.score(tmp_path, precision="fp64")
    (tmp_path / "s.csv").write_text("path,score\na.jpg,0.5\n")
    with pytest.raises(memscore.UserError, match=r"^confidence must be less than 1 \(got 1.5\)$"):
        memscore.analyze(tmp_path / "s.csv", tmp_path / "s.csv", confidence=1.5)
    with pytest.raises(TrainingError, match=r"^epochs must be greater than or equal to 1 \(got 0\)$"):
        TrainConfig(model="m", human="h", images="i", out="o", epochs=0)
    with pytest.raises(ParameterError, match="credentials"):
        ScoreRequest(source="a", destination="b", storage_options={"client_kwargs": {"aws_secret_access_key": "s"}})

    assert main(["analyze", "--scores", str(tmp_path / "s.csv"), "--human", str(tmp_path / "s.csv"),
                 "--confidence", "1.5"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == ["memscore: error: confidence must be less than 1 (got 1.5)"]
    assert main(["score", str(tmp_path), "--out", str(tmp_path / "o"), "--device", "gpu"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        ("memscore: error: unknown device 'gpu'; choose from 'auto', 'cpu', 'cuda' or 'mps', or a value matching "
         "^cuda:[0-9]+$")]


def test_secret_choice_types_and_the_api_keeps_credentials_in_process(tmp_path):
    """The API accepts credentials in storage_options (they stay in this process): the options
    object it builds holds a reference only, and resolved() merges them back."""
    from memscore.tasks.analysis_options import AnalysisOptions
    from memscore.tasks.params import LOCAL_PREFIX, literal_choices, storage_fields
    from memscore.tasks.pipeline import ScoreRequest

    fields = storage_fields({"anon": False, "key": "AKIA-TEST", "client_kwargs": {"endpoint_url": "http://h"}})
    options = AnalysisOptions(**fields)
    assert options.storage_options == {"anon": False, "client_kwargs": {"endpoint_url": "http://h"}}
    assert options.storage_options_secret.startswith(LOCAL_PREFIX) and "AKIA" not in options.model_dump_json()
    assert options.resolved().storage_options == {"anon": False, "key": "AKIA-TEST",
                                                  "client_kwargs": {"endpoint_url": "http://h"}}
    assert AnalysisOptions(human_measure="CRR").human_measure == "corrected_recognition"  # an alias, canonical
    assert literal_choices(ScoreRequest.model_fields["decode"].annotation) == ("auto", "workers", "device")
    assert get_args(ScoreRequest.model_fields["device"].annotation)  # a union: choices or cuda:N


@pytest.mark.slow
def test_train_flow_keeps_credentials_out_of_its_parameters(tmp_path, prefect_api):
    """`memscore train --storage-options` with a credential: the train flow run stored in
    Prefect's database holds a reference, never the secret (it used to hold it)."""
    import asyncio

    from memscore.flows.cli import main
    from prefect.client.orchestration import get_client
    from test_train import make_dataset

    human, _ = make_dataset(tmp_path, n=8)
    empty = tmp_path / "empty"
    empty.mkdir()
    secret = "AKIA-MEMSCORE-TRAIN-SECRET"
    out = tmp_path / "run"
    assert main(["train", "--model", "memnet-baseline", "--human", str(human), "--images", str(empty), "--out",
                 str(out), "--init", "random", "--epochs", "1",
                 "--storage-options", json.dumps({"key": secret, "anon": False})]) == 1

    async def stored_runs():
        async with get_client() as client:
            return [r for r in await client.read_flow_runs(limit=50)
                    if r.parameters.get("config", {}).get("out") == str(out)]

    runs = asyncio.run(stored_runs())
    assert runs and "none of the 8 images" in runs[0].state.message  # the flow ran (and failed on the data)
    stored = [r.parameters for r in runs]
    assert stored, "the train flow run was not recorded"
    assert secret not in json.dumps(stored)
    assert stored[0]["config"]["storage_options"] == {"anon": False}
    assert stored[0]["config"]["storage_options_secret"].startswith("memscore-process:")
