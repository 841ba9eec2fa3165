"""memscore analyze: several models, paired comparisons, observation counts, stated
assumptions, degenerate inputs, and the Prefect flow's parameters. Expected values come
from scipy / numpy written here."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats as st

from memscore.flows.cli import main
from memscore.tasks.analyze import AnalysisOptions, run_analysis
from memscore.tasks.stats import bootstrap_spearman
from tests.test_analyze_cli import make_dest


def _counts_file(tmp_path, n=80, seed=1):
    rng = np.random.default_rng(seed)
    names = [f"x{i:03d}.png" for i in range(n)]
    hit, miss = rng.integers(1, 30, n), rng.integers(1, 15, n)
    fa, cr = rng.integers(0, 6, n), rng.integers(10, 30, n)
    path = tmp_path / "mem.csv"
    path.write_text("image_name,target_hit,target_miss,target_fa,target_cr\n" + "\n".join(
        f"{a},{h},{m},{f},{c}" for a, h, m, f, c in zip(names, hit, miss, fa, cr)) + "\n")
    return str(path), names, hit / (hit + miss), hit + miss


def test_several_score_columns_get_a_paired_comparison(tmp_path):
    path, names, hr, _ = _counts_file(tmp_path)
    rng = np.random.default_rng(2)
    a, b = hr + rng.normal(0, 0.05, len(hr)), hr + rng.normal(0, 0.3, len(hr))
    scores = tmp_path / "s.csv"
    scores.write_text("image_name,a,b\n" + "\n".join(f"{n},{x},{y}" for n, x, y in zip(names, a, b)) + "\n")
    res = run_analysis(str(scores), path, AnalysisOptions(score_column="a,b", bootstrap=1000, seed=0))
    assert [m["model"] for m in res["models"]] == ["a", "b"]
    assert res["models"][1]["spearman"]["rho"] == pytest.approx(st.spearmanr(b, hr)[0], abs=1e-12)
    d = res["comparisons"][0]["spearman_difference"]
    assert d["difference"] == pytest.approx(st.spearmanr(a, hr)[0] - st.spearmanr(b, hr)[0], abs=1e-12)
    ref = st.bootstrap((a, b, hr), lambda x, y, h: st.spearmanr(x, h)[0] - st.spearmanr(y, h)[0], paired=True,
                       vectorized=False, n_resamples=1000, method="percentile", random_state=3).confidence_interval
    assert d["ci_low"] == pytest.approx(ref.low, abs=0.03) and d["ci_high"] == pytest.approx(ref.high, abs=0.03)
    assert d["p_value"] < 0.05


def test_several_models_in_a_folder_are_compared_on_the_images_all_scored(tmp_path, capsys):
    path, names, hr, _ = _counts_file(tmp_path, n=60)
    rng = np.random.default_rng(4)
    good, bad = hr + rng.normal(0, 0.05, 60), rng.normal(size=60)
    dest = make_dest(tmp_path / "dest", names, good.astype(np.float32), model="good")
    other = make_dest(tmp_path / "tmp2", names[:50], bad[:50].astype(np.float32), model="bad")  # 50 images only
    (tmp_path / "dest" / "scores" / "part-y.parquet").write_bytes((tmp_path / "tmp2" / "scores" / "part-x.parquet").read_bytes())
    assert other
    assert main(["analyze", "--scores", dest, "--human", path, "--bootstrap", "200", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 50 and out["observations"]["not_scored_by_every_model"] == 10
    models = {m["model"]: m for m in out["models"]}
    g32 = good.astype(np.float32).astype(np.float64)
    assert models["good"]["spearman"]["rho"] == pytest.approx(st.spearmanr(g32[:50], hr[:50])[0], abs=1e-9)
    (comp,) = out["comparisons"]
    assert {comp["a"], comp["b"]} == {"bad", "good"} and comp["spearman_difference"]["p_value"] is not None
    assert any("lack a score of some model" in w for w in out["warnings"])
    assert main(["analyze", "--scores", dest, "--human", path, "--bootstrap", "50", "--model", "good", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 60


def test_compare_and_analyze_give_the_same_interval_for_the_same_predictions(tmp_path):
    path, names, hr, _ = _counts_file(tmp_path)
    pred = hr + np.random.default_rng(5).normal(0, 0.1, len(hr))
    scores = tmp_path / "p.csv"
    scores.write_text("image_name,score\n" + "\n".join(f"{n},{float(p)!r}" for n, p in zip(names, pred)) + "\n")
    res = run_analysis(str(scores), path, AnalysisOptions(bootstrap=500, seed=7))
    perm = np.random.default_rng(0).permutation(len(pred))  # compare sees the images in its own order
    low, high = bootstrap_spearman(pred[perm], hr[perm], n=500, seed=7)  # what compare and train call
    assert (low, high) == (res["spearman"]["ci_low"], res["spearman"]["ci_high"])
    assert res["spearman"]["rho"] == pytest.approx(st.spearmanr(pred, hr)[0], abs=1e-12)


def test_min_observations_and_the_sparse_image_warning(tmp_path, capsys):
    path, names, hr, obs = _counts_file(tmp_path)
    pred = hr + np.random.default_rng(6).normal(0, 0.1, len(hr))
    scores = tmp_path / "p.csv"
    scores.write_text("image_name,score\n" + "\n".join(f"{n},{float(p)!r}" for n, p in zip(names, pred)) + "\n")
    assert main(["analyze", "--scores", str(scores), "--human", path, "--bootstrap", "0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["observations"]["min"] == obs.min() and out["observations"]["below_warn"] == int((obs < 5).sum())
    if (obs < 5).any():
        assert any(f"{int((obs < 5).sum())} image(s) rest on fewer than 5" in w for w in out["warnings"])
    assert main(["analyze", "--scores", str(scores), "--human", path, "--bootstrap", "0", "--min-observations", "20",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    keep = obs >= 20
    assert out["n"] == keep.sum() and out["observations"]["excluded"] == (~keep).sum()
    assert out["spearman"]["rho"] == pytest.approx(st.spearmanr(pred[keep], hr[keep])[0], abs=1e-12)
    lamem = tmp_path / "l.txt"
    lamem.write_text("x000.png 0.5\nx001.png 0.6\n")
    assert main(["analyze", "--scores", str(scores), "--human", str(lamem), "--min-observations", "3"]) == 1
    assert "needs per-image counts or trial data" in capsys.readouterr().err


def _trials(tmp_path, images=40, participants=30, seed=8, order="presentation"):
    rng = np.random.default_rng(seed)
    mem = rng.uniform(0.2, 0.9, images)
    header = "participant_id,image_id,trial_type,presentation,response" if order == "presentation" else \
        "participant_id,image_id,trial_type,trial,response"
    rows = [header]
    for p in range(participants):
        shown = rng.choice(images, images // 2 + (p % 3) * 5, replace=False)  # uneven coverage
        for k, i in enumerate(shown):
            rows.append(f"s{p},im{i}.jpg,target,{1 if order == 'presentation' else 2 * k},{int(rng.random() < 0.1)}")
            rows.append(f"s{p},im{i}.jpg,target,{2 if order == 'presentation' else 2 * k + 1},"
                        f"{int(rng.random() < mem[i])}")
    (tmp_path / "trials.csv").write_text("\n".join(rows) + "\n")
    return str(tmp_path / "trials.csv"), mem


def test_min_observations_applies_to_the_split_half_too(tmp_path):
    human, mem = _trials(tmp_path)
    dest = make_dest(tmp_path / "dest", [f"im{i}.jpg" for i in range(40)], mem.astype(np.float32))
    full = run_analysis(dest, human, AnalysisOptions(bootstrap=50, splits=5))
    cut = int(np.median([m for m in [full["observations"]["median"]]]))
    res = run_analysis(dest, human, AnalysisOptions(bootstrap=50, splits=5, min_observations=cut))
    assert res["n"] < full["n"]
    assert res["split_half"]["images_mean"] <= res["n"]  # the split-half sees only the images kept
    assert res["noise_ceiling"]["spearman"]["ceiling"] == pytest.approx(
        np.sqrt(2 * res["split_half"]["spearman_mean"] / (1 + res["split_half"]["spearman_mean"])))


def test_assumptions_are_stated_in_text_json_and_report(tmp_path, capsys):
    human, mem = _trials(tmp_path, order="trial")
    dest = make_dest(tmp_path / "dest", [f"im{i}.jpg" for i in range(40)], mem.astype(np.float32))
    out_dir = tmp_path / "report"
    assert main(["analyze", "--scores", dest, "--human", human, "--bootstrap", "50", "--splits", "4",
                 "--out", str(out_dir)]) == 0
    text = capsys.readouterr().out
    data = json.loads((out_dir / "stats.json").read_text())
    report = (out_dir / "report.md").read_text()
    assert "order of column 'trial'" in data["order_source"] and data["response_coding"].startswith("column 'response'")
    for needle in ("order of column 'trial'", "empty = missing", "vigilance miss rate > 0.5", "noise ceiling"):
        assert needle in text and needle in report, needle
    assert "## Participant exclusion" in report


def test_match_auto_explains_shared_file_names(tmp_path, capsys):
    dest = make_dest(tmp_path / "dest", ["a/x.jpg", "b/x.jpg", "a/y.jpg"], np.array([0.1, 0.2, 0.3], np.float32))
    lamem = tmp_path / "h.txt"
    lamem.write_text("x.jpg 0.5\ny.jpg 0.6\n")
    assert main(["analyze", "--scores", dest, "--human", str(lamem)]) == 1
    err = capsys.readouterr().err.strip()
    assert "share a file name" in err and "a/x.jpg and b/x.jpg" in err and "\n" not in err


def test_two_images_are_null_with_a_reason_not_a_perfect_correlation(tmp_path, capsys):
    dest = make_dest(tmp_path / "dest", ["x.jpg", "y.jpg"], np.array([0.1, 0.2], np.float32))
    lamem = tmp_path / "h.txt"
    lamem.write_text("x.jpg 0.5\ny.jpg 0.6\n")
    assert main(["analyze", "--scores", dest, "--human", str(lamem), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["spearman"]["rho"] is None and out["pearson"]["r"] is None and out["kendall"]["tau"] is None
    assert "only 2 image(s)" in out["spearman"]["reason"]
    assert main(["analyze", "--scores", dest, "--human", str(lamem)]) == 0
    assert "Spearman rho = n/a (only 2 image(s)" in capsys.readouterr().out


def test_flow_parameters_cover_every_option_with_choices_and_descriptions():
    import inspect

    from prefect.utilities.callables import parameter_schema

    from memscore.flows.analyze import analyze

    assert list(inspect.signature(analyze.fn).parameters) == ["request"]  # one object: AnalyzeRequest
    schema = parameter_schema(analyze.fn).model_dump_for_openapi()
    definitions = schema["definitions"]
    request = definitions[schema["properties"]["request"]["$ref"].rsplit("/", 1)[1]]["properties"]
    props = definitions["AnalysisOptions"]["properties"]
    assert set(AnalysisOptions.model_fields) <= set(props) and {"scores", "human", "out", "options"} <= set(request)
    assert request["options"]["$ref"] == "#/definitions/AnalysisOptions"
    assert all(props[name].get("description") for name in props), [n for n in props if not props[n].get("description")]
    assert all(request[name].get("description") for name in request)
    assert props["match"]["enum"] == ["auto", "path", "name", "stem"]
    assert "trials" in props["human_format"]["enum"]


@pytest.mark.slow
def test_prefect_flow_honours_confidence(tmp_path, capsys):
    path, names, hr, _ = _counts_file(tmp_path)
    pred = hr + np.random.default_rng(9).normal(0, 0.1, len(hr))
    scores = tmp_path / "p.parquet"
    pq.write_table(pa.table({"image_name": names, "score": pred}), scores)
    assert main(["analyze", "--prefect", "--scores", str(scores), "--human", path, "--bootstrap", "300",
                 "--confidence", "0.9", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["bootstrap"]["confidence"] == 0.9
    plain = run_analysis(str(scores), path, AnalysisOptions(bootstrap=300, confidence=0.9))
    assert (out["spearman"]["ci_low"], out["spearman"]["ci_high"]) == (plain["spearman"]["ci_low"], plain["spearman"]["ci_high"])
    wide = run_analysis(str(scores), path, AnalysisOptions(bootstrap=300))
    assert wide["spearman"]["ci_high"] - wide["spearman"]["ci_low"] > out["spearman"]["ci_high"] - out["spearman"]["ci_low"]


def test_compare_paired_comparisons_match_scipy():
    """compare's table: per pair of models the Spearman difference on the images both scored,
    with a paired bootstrap interval (scipy.stats.bootstrap with paired=True as reference)."""
    from memscore.flows.compare_cli import paired_comparisons

    rng = np.random.default_rng(11)
    human = rng.normal(size=120)
    a, b = human + rng.normal(0, 0.6, 120), human + rng.normal(0, 1.5, 120)
    pa_, pb = dict(enumerate(a)), {i: v for i, v in enumerate(b) if i != 5}  # b failed to read image 5
    (comp,) = paired_comparisons(["A", "B"], [pa_, pb], list(human), 1000, 0)
    keep = np.arange(120) != 5
    d = comp["spearman_difference"]
    assert comp["n"] == 119
    assert d["difference"] == pytest.approx(st.spearmanr(a[keep], human[keep])[0] - st.spearmanr(b[keep], human[keep])[0])
    ref = st.bootstrap((a[keep], b[keep], human[keep]), lambda x, y, h: st.spearmanr(x, h)[0] - st.spearmanr(y, h)[0],
                       paired=True, vectorized=False, n_resamples=1000, method="percentile",
                       random_state=0).confidence_interval
    assert d["ci_low"] == pytest.approx(ref.low, abs=0.03) and d["ci_high"] == pytest.approx(ref.high, abs=0.03)


@pytest.mark.slow
def test_prefect_flow_takes_measure_aliases_and_score_column_lists(tmp_path, capsys):
    """The flow's Literal choices are canonical names: the CLI maps aliases (crr) to them."""
    path, names, hr, _ = _counts_file(tmp_path)
    rng = np.random.default_rng(12)
    scores = tmp_path / "s.csv"
    scores.write_text("image_name,a,b\n" + "\n".join(f"{n},{float(x)!r},{float(y)!r}" for n, x, y in
                                                      zip(names, hr + rng.normal(0, .1, len(hr)), rng.normal(size=len(hr)))) + "\n")
    assert main(["analyze", "--prefect", "--scores", str(scores), "--human", path, "--human-measure", "crr",
                 "--score-column", "a", "--score-column", "b", "--bootstrap", "50", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["human_measure"] == "corrected_recognition" and [m["model"] for m in out["models"]] == ["a", "b"]


def test_dropped_bootstrap_resamples_are_counted_and_warned(tmp_path, capsys):
    """Scores tied but for one image: resamples without it have no correlation; the
    output counts the usable ones (hand count on the same draws) and warns."""
    scores = tmp_path / "s.csv"
    scores.write_text("image_name,score\na.jpg,0\nb.jpg,0\nc.jpg,0\nd.jpg,0\ne.jpg,1\n")
    lamem = tmp_path / "h.txt"
    lamem.write_text("a.jpg 0.1\nb.jpg 0.4\nc.jpg 0.2\nd.jpg 0.3\ne.jpg 0.9\n")
    assert main(["analyze", "--scores", str(scores), "--human", str(lamem), "--bootstrap", "300", "--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    # images enter the bootstrap sorted by (human, score): e.jpg (the only score 1) is last
    rng = np.random.default_rng(0)
    usable = sum(1 for _ in range(300) if (rng.integers(0, 5, 5) == 4).any())
    assert out["spearman"]["usable_resamples"] == usable < 300
    assert any(f"{300 - usable} of 300 bootstrap resamples were unusable" in w for w in out["warnings"])
    assert "were unusable" in captured.err
