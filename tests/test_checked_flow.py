"""A direct Python call of a memscore flow with credentials or bad values is refused before
Prefect creates (and stores) its flow run (issue 15: "credentials given ... are stored in
clear in Prefect's database as flow-run parameters").

The expected state is read back from Prefect's own API: no flow run holds the secret, and
no flow run exists for the refused call at all.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

SECRET = "AKIA-MEMSCORE-DIRECT-CALL-SECRET"


def _stored_runs(marker: str) -> list[dict]:
    from prefect.client.orchestration import get_client

    async def read():
        async with get_client() as client:
            return [r.parameters for r in await client.read_flow_runs(limit=200)]

    return [p for p in asyncio.run(read()) if marker in json.dumps(p)]


def _calls(marker: str):
    """(flow, keyword arguments holding the secret) for every memscore flow."""
    from memscore.flows.analyze import analyze
    from memscore.flows.report import report
    from memscore.flows.score import score_archive
    from memscore.flows.train import train

    secret_options = {"anon": False, "client_kwargs": {"aws_secret_access_key": SECRET}}
    return {
        "score-archive": (score_archive, {"request": {"source": f"/tmp/{marker}", "destination": f"/tmp/{marker}-out",
                                                      "storage_options": secret_options}}),
        "analyze": (analyze, {"request": {"scores": f"/tmp/{marker}.csv", "human": "h.csv",
                                          "options": {"storage_options": secret_options}}}),
        "report": (report, {"dest": f"/tmp/{marker}", "out": "/tmp/r", "options": {"storage_options": secret_options}}),
        "train": (train, {"config": {"model": "memnet-baseline", "human": "h.csv", "images": "/tmp/i",
                                     "out": f"/tmp/{marker}", "storage_options": secret_options}}),
    }


@pytest.mark.parametrize("name", ["score-archive", "analyze", "report", "train"])
def test_credentials_in_a_direct_call_never_reach_prefects_database(prefect_api, name):
    from prefect.exceptions import ParameterTypeError

    from memscore.tasks.params import ParameterError

    marker = f"marker-{uuid.uuid4().hex}"
    flow, kwargs = _calls(marker)[name]
    with pytest.raises(ParameterTypeError) as raised:
        flow(**kwargs)
    assert isinstance(raised.value, ParameterError)  # memscore's one-line user error too
    message = str(raised.value)
    assert "\n" not in message and "client_kwargs.aws_secret_access_key" in message and SECRET not in message
    assert _stored_runs(marker) == []  # no flow run was created for the refused call


def test_a_bad_value_in_a_direct_call_is_refused_before_a_run_exists(prefect_api):
    from memscore.flows.score import score_archive
    from memscore.tasks.params import ParameterError

    marker = f"marker-{uuid.uuid4().hex}"
    with pytest.raises(ParameterError, match=r"unknown device 'gpu'"):
        score_archive(request={"source": f"/tmp/{marker}", "destination": "/tmp/out", "device": "gpu"})
    assert _stored_runs(marker) == []


def test_credentials_in_process_are_not_refused():
    """Building the object in Python keeps secret keys out of it already; the check reads
    ``storage_options`` only, so other parameters with key-like names pass."""
    from memscore.flows.checked_flow import credentials_in

    assert credentials_in({"request": {"storage_options": {"anon": True}, "human_key": "x"}}) == []
    assert credentials_in({"options": {"storage_options": {"token": "t"}}}) == ["options.storage_options.token"]
