"""memscore compare scores through the scoring engine and reports what memscore analyze reports.

The same model and images, once through ``memscore score`` + ``memscore analyze`` and once
through ``memscore compare``: the same predictions, so the same Spearman and the same
bootstrap interval (same seed, resamples and confidence). The expected Spearman comes from
scipy.stats.spearmanr on the scores ``memscore score`` wrote; the interval is checked
against scipy.stats.bootstrap (its own draws: within a tolerance).
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from scipy import stats as st

from memscore.flows.cli import main
from tests.test_train import TinyMem, make_dataset, tiny_model  # noqa: F401 - tiny_model is a fixture


def _weights(path) -> str:
    """TinyMem weights whose score rises with the image's brightness (the test data's 'human' score)."""
    module = TinyMem()
    with torch.no_grad():
        module.fc.weight.fill_(1.0 / 588)
        module.fc.bias.zero_()
    torch.save(module.state_dict(), path)
    return str(path)


def test_compare_and_analyze_give_the_same_spearman_and_interval(tmp_path, tiny_model, capsys):  # noqa: F811
    human, images = make_dataset(tmp_path, n=40)
    (images / "sub" / "broken.jpg").write_bytes(b"not a jpeg")  # unreadable: counted, not scored, by both
    human.write_text(human.read_text() + "broken.jpg,0.5\n")
    weights = _weights(tmp_path / "tiny.pt")
    seed, resamples = 3, 400

    dest = tmp_path / "scores"
    assert main(["score", str(images), "--out", str(dest), "--model", tiny_model, "--weights", weights,
                 "--workers", "0", "--no-progress", "--features", "none", "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["analyze", "--scores", str(dest), "--human", str(human), "--bootstrap", str(resamples),
                 "--seed", str(seed), "--confidence", "0.95", "--json"]) == 0
    analyzed = json.loads(capsys.readouterr().out)
    assert main(["compare", f"{tiny_model}={weights}", "--human", str(human), "--images", str(images),
                 "--bootstrap", str(resamples), "--seed", str(seed), "--workers", "0", "--device", "cpu",
                 "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)

    # the reference: scipy on the scores memscore score wrote, matched to the human file by name
    table = pq.read_table(sorted((dest / "scores").glob("*.parquet"))).to_pylist()
    scored = {r["path"].rsplit("/", 1)[-1]: r["score"] for r in table}
    lines = [line.split(",") for line in human.read_text().splitlines()[1:] if not line.startswith("broken")]
    pred = np.array([scored[name] for name, _ in lines], dtype=np.float64)
    truth = np.array([float(value) for _, value in lines])
    expected = st.spearmanr(pred, truth)[0]
    assert 0.3 < expected < 0.999  # a real, imperfect correlation

    spearman = analyzed["spearman"]
    assert analyzed["n"] == row["test_images"] == 40 and row["unreadable"] == 1
    assert spearman["rho"] == pytest.approx(expected, abs=1e-12)
    # the same numbers, not merely close: one statistics function, one set of draws
    assert row["test_spearman"] == spearman["rho"]
    assert (row["spearman_ci_low"], row["spearman_ci_high"]) == (spearman["ci_low"], spearman["ci_high"])
    assert spearman["ci_low"] < expected < spearman["ci_high"]
    ref = st.bootstrap((pred, truth), lambda x, y: st.spearmanr(x, y)[0], paired=True, vectorized=False,
                       n_resamples=resamples, method="percentile", confidence_level=0.95,
                       random_state=seed).confidence_interval
    assert spearman["ci_low"] == pytest.approx(ref.low, abs=0.05)
    assert spearman["ci_high"] == pytest.approx(ref.high, abs=0.05)
    assert row["scoring_images_per_second"] > 0
