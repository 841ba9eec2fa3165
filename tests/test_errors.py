"""One marker for user-fixable errors (memscore.errors.UserError): every layer's error
types carry it, the CLI finds it behind wrappers, and the flows never retry it."""

from __future__ import annotations


from memscore.errors import UserError, find_user_error


def test_every_user_fixable_error_type_carries_the_marker():
    from memscore.models.devices import DeviceUnavailableError
    from memscore.models.onnx_runtime import BackendUnavailableError
    from memscore.models.registry import UnknownModelError
    from memscore.models.weights import WeightsMismatchError, WeightsNotFoundError
    from memscore.storage.human import HumanDataError
    from memscore.tasks.discover import SourceNotFoundError, SourceUnreadableError
    from memscore.tasks.train_config import TrainingError

    for kind in (DeviceUnavailableError, BackendUnavailableError, UnknownModelError, WeightsMismatchError,
                 WeightsNotFoundError, HumanDataError, SourceNotFoundError, SourceUnreadableError, TrainingError):
        assert issubclass(kind, UserError), kind
    # callers that catch the built-in bases keep working
    assert issubclass(HumanDataError, ValueError) and issubclass(SourceUnreadableError, RuntimeError)


def test_found_behind_wrappers_and_not_fooled_by_cycles():
    original = UserError("no such bucket")
    try:
        try:
            raise original
        except UserError as inner:
            raise RuntimeError("task failed") from inner
    except RuntimeError as wrapped:
        assert find_user_error(wrapped) is original
    plain = ValueError("x")
    plain.__context__ = KeyError("y")
    plain.__context__.__context__ = plain  # a cycle
    assert find_user_error(plain) is None


def test_the_flows_never_retry_a_user_error():
    from prefect.states import Failed

    from memscore.flows.score import _retry_storage_errors
    from memscore.tasks.train_config import TrainingError

    assert _retry_storage_errors(None, None, Failed(data=TrainingError("bad"))) is False
    assert _retry_storage_errors(None, None, Failed(data=ConnectionError("reset"))) is True


def test_cli_prints_one_line(tmp_path, capsys):
    from memscore.flows.cli import main

    assert main(["score", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("memscore: error: ") and err.count("\n") == 1
