"""The command line fails fast with one line for what the user can fix."""

from __future__ import annotations

import importlib.util

import pytest

from memscore.flows.cli import main


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("memscore: error: ")
    assert "Traceback" not in err
    return lines[0]


def test_unknown_model(tmp_path, capsys):
    code, _, err = run_cli(capsys, "score", str(tmp_path), "--out", str(tmp_path / "out"), "--model", "nope")
    assert code == 1
    assert "unknown model 'nope'" in one_line_error(err) and "resmem" in err


def test_unknown_feature_layer(tmp_path, capsys):
    code, _, err = run_cli(capsys, "score", str(tmp_path), "--out", str(tmp_path / "o"), "--features", "fc11,conv99")
    assert code == 1
    assert "conv99" in one_line_error(err)


def test_missing_weights_file(tmp_path, capsys):
    code, _, err = run_cli(capsys, "score", str(tmp_path), "--out", str(tmp_path / "o"), "--weights", str(tmp_path / "none.pt"))
    assert code == 1
    assert "weights file not found" in one_line_error(err)


def test_missing_resmem_package(tmp_path, capsys, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "resmem" else real_find_spec(name, *a))
    code, _, err = run_cli(capsys, "score", str(tmp_path), "--out", str(tmp_path / "o"))
    assert code == 1
    assert "pip install" in one_line_error(err) and "resmem" in err


@pytest.mark.parametrize("make", ["missing", "file"])
def test_unreadable_source(tmp_path, capsys, make):
    source = tmp_path / "src"
    if make == "file":
        source.write_text("x")
    code, _, err = run_cli(capsys, "score", str(source), "--out", str(tmp_path / "o"))
    assert code == 1
    line = one_line_error(err)
    assert ("not found" if make == "missing" else "not a folder") in line


def test_unavailable_device(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = run_cli(capsys, "score", str(tmp_path), "--out", str(tmp_path / "o"), "--device", "cuda")
    assert code == 1
    assert "CUDA is not available" in one_line_error(err)


def test_help_documents_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["score", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--out", "--model", "--device", "--batch-size", "--workers", "--shard-size", "--features", "exit status"):
        assert option in out


def test_models_lists_resmem(capsys):
    code, out, _ = run_cli(capsys, "models")
    assert code == 0 and "resmem" in out and "fc11 (256)" in out


def test_weights_that_do_not_fit_the_model(tmp_path, capsys):
    import torch

    wrong = tmp_path / "other.pt"
    torch.save({"fc12.weight": torch.zeros(3, 3), "fc12.bias": torch.zeros(3)}, wrong)
    code, _, err = run_cli(capsys, "score", str(tmp_path), "--out", str(tmp_path / "o"), "--weights", str(wrong))
    assert code == 1
    assert "do not fit model 'resmem'" in one_line_error(err)


@pytest.mark.parametrize("argv", [
    ["score", "SRC", "--out", "D", "--batch-size", "0"],
    ["score", "SRC", "--out", "D", "--workers", "-1"],
    ["score", "SRC", "--out", "D", "--shard-size", "0"],
    ["score", "SRC"],  # --out missing
    ["analyze", "--scores", "D", "--human", "h.csv", "--bootstrap", "-1"],
    ["analyze", "--scores", "D", "--human", "h.csv", "--splits", "-3"],
    ["report", "D", "--out", "R", "--top", "-1"],
    ["report", "D", "--out", "R", "--bins", "0"],
    ["report", "D", "--out", "R", "--occlusion-grid", "0"],
    ["score", "SRC", "--out", "D", "--no-such-option"],
    ["no-such-command"],
])
def test_refused_arguments_are_one_line_and_exit_1(tmp_path, capsys, argv):
    """argparse's refusals (range checks, missing or unknown arguments) follow the contract of
    every other bad input: one line `memscore: error: ...` naming the command, exit 1, no usage."""
    argv = [str(tmp_path / a) if a in ("SRC", "D", "R", "h.csv") else a for a in argv]
    code, out, err = run_cli(capsys, *argv)
    assert code == 1 and out == ""
    line = one_line_error(err)
    assert "usage:" not in err
    if argv[0] != "no-such-command":
        assert line.startswith(f"memscore: error: {argv[0]}: ")
    assert not (tmp_path / "D").exists()


@pytest.mark.parametrize("where", ["dest", "report", "report-uri", "report-via-link"])
def test_outputs_inside_source_are_refused(tmp_path, capsys, where):
    """A report (or DEST) written inside SOURCE would be scored by the next run (its thumbnails are
    JPEGs): refused in one line before the run, nothing written."""
    source = tmp_path / "src"
    source.mkdir()
    (tmp_path / "link").symlink_to(source, target_is_directory=True)
    dest, report = str(tmp_path / "d"), str(tmp_path / "r")
    if where == "dest":
        dest = str(source / "d")
    elif where == "report":
        report = str(source / "report")
    elif where == "report-uri":
        report = f"file://{source}/report"
    else:
        report = str(tmp_path / "link" / "report")
    code, _, err = run_cli(capsys, "score", str(source), "--out", dest, "--report", report)
    assert code == 1
    assert "inside SOURCE" in one_line_error(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "src"] and not any(source.iterdir())
