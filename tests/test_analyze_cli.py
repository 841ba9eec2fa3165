"""memscore analyze / memscore sql and the analyze flow, on small data made here."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats as st

from memscore.flows.analyze import AnalysisOptions, run_analysis
from memscore.flows.cli import main
from memscore.storage.schema import scores_schema


def make_dest(root, paths, scores, model="resmem", feats=None):
    """A memscore output folder with one scores part (no model run)."""
    (root / "scores").mkdir(parents=True, exist_ok=True)
    n = len(paths)
    schema = scores_schema({"fc11": 4})
    rng = np.random.default_rng(0)
    feats = feats if feats is not None else rng.normal(size=(n, 4)).astype(np.float32)
    table = pa.table({
        "image_id": [f"{i:064x}" for i in range(n)], "path": paths, "uri": [f"file:///src/{p}" for p in paths],
        "size_bytes": pa.array([1000] * n, pa.int64()), "width": pa.array([64] * n, pa.int32()),
        "height": pa.array([48] * n, pa.int32()), "model": [model] * n, "weights": ["abc"] * n,
        "score": pa.array(scores, pa.float32()),
        "feat_fc11": pa.FixedSizeListArray.from_arrays(pa.array(feats.reshape(-1), pa.float32()), 4),
        "source_version": ["v"] * n, "run_id": ["r"] * n,
        "scored_at": pa.array([datetime(2026, 1, 1, tzinfo=timezone.utc)] * n, pa.timestamp("us", tz="UTC")),
    }, schema=schema)
    pq.write_table(table, root / "scores" / "part-x.parquet")
    return str(root)


@pytest.fixture()
def lab(tmp_path):
    rng = np.random.default_rng(42)
    n = 60
    names = [f"im{i:03d}.jpg" for i in range(n)]
    human = np.round(rng.uniform(0.3, 0.9, n), 2)  # ties
    score = (human + rng.normal(0, 0.1, n)).clip(0, 1).astype(np.float32)
    dest = make_dest(tmp_path / "dest", [f"set/{x}" for x in names], score)
    lamem = tmp_path / "test_1.txt"
    # two human images without scores, one scored image without human data
    lines = [f"{a} {h}" for a, h in zip(names[1:], human[1:])] + ["extra1.jpg 0.5", "extra2.jpg 0.6"]
    lamem.write_text("\n".join(lines) + "\n")
    return {"dest": dest, "lamem": str(lamem), "human": human[1:], "score": score[1:], "tmp": tmp_path}


def test_analyze_json_matches_scipy(lab, capsys):
    code = main(["analyze", "--scores", lab["dest"], "--human", lab["lamem"], "--bootstrap", "200", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["match"] == "name"
    assert (out["n"], out["n_unmatched_scores"], out["n_unmatched_human"]) == (59, 1, 2)
    rho, p = st.spearmanr(lab["score"].astype(np.float64), lab["human"])
    r, pr = st.pearsonr(lab["score"].astype(np.float64), lab["human"])
    assert out["spearman"]["rho"] == pytest.approx(rho, abs=1e-9)
    assert out["spearman"]["p_value"] == pytest.approx(p, rel=1e-6)
    assert out["pearson"]["r"] == pytest.approx(r, abs=1e-6)
    assert out["pearson"]["p_value"] == pytest.approx(pr, rel=1e-4)
    assert out["spearman"]["ci_low"] < out["spearman"]["rho"] < out["spearman"]["ci_high"]
    assert {"rho", "ci_low", "ci_high", "p_value"} <= set(out["spearman"])
    assert {"r", "ci_low", "ci_high", "p_value"} <= set(out["pearson"])
    assert out["split_half"] is None
    # same seed, same numbers
    main(["analyze", "--scores", lab["dest"], "--human", lab["lamem"], "--bootstrap", "200", "--json"])
    again = json.loads(capsys.readouterr().out)
    assert again["spearman"] == out["spearman"] and again["pearson"] == out["pearson"]


def test_analyze_summary_and_out_dir(lab, capsys):
    out_dir = lab["tmp"] / "report"
    code = main(["analyze", "--scores", lab["dest"], "--human", lab["lamem"], "--bootstrap", "50",
                 "--match", "name", "--out", str(out_dir)])
    assert code == 0
    text = capsys.readouterr().out
    assert "59 images matched by name" in text and "Spearman rho" in text
    joined = pq.read_table(out_dir / "joined.parquet")
    assert joined.num_rows == 59 and {"image", "score_image", "score", "human", "width"} <= set(joined.column_names)
    assert json.loads((out_dir / "stats.json").read_text())["n"] == 59
    assert "Spearman rho" in (out_dir / "report.md").read_text()


def test_analyze_errors_are_one_line(lab, capsys, tmp_path):
    unrelated = tmp_path / "other.txt"
    unrelated.write_text("zzz.jpg 0.5\nyyy.jpg 0.4\n")
    assert main(["analyze", "--scores", lab["dest"], "--human", str(unrelated)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("memscore: error: no image of the scores matches") and "\n" not in err
    assert main(["analyze", "--scores", lab["dest"], "--human", str(tmp_path / "nope.csv")]) == 1
    assert "not found" in capsys.readouterr().err
    assert main(["analyze", "--scores", lab["dest"], "--human", lab["lamem"], "--match", "path"]) == 1
    assert "by path" in capsys.readouterr().err
    assert main(["analyze", "--scores", lab["dest"], "--human", lab["lamem"], "--score-column", "nope"]) == 1
    assert "no column 'nope'" in capsys.readouterr().err


def test_official_csv_counts_and_groups(tmp_path):
    """The official package's CSV beside a count table, per category."""
    rng = np.random.default_rng(3)
    n = 80
    names = [f"x{i}.png" for i in range(n)]
    hit = rng.integers(5, 40, n)
    miss = rng.integers(1, 20, n)
    fa = rng.integers(0, 10, n)
    cr = rng.integers(20, 40, n)
    cat = np.where(np.arange(n) % 2 == 0, "indoor", "outdoor")
    hr, far = hit / (hit + miss), fa / (fa + cr)
    (tmp_path / "mem.csv").write_text("image_name,category,target_hit,target_miss,target_fa,target_cr\n" + "\n".join(
        f"{a},{c},{h},{m},{f},{r}" for a, c, h, m, f, r in zip(names, cat, hit, miss, fa, cr)) + "\n")
    model = hr - far + rng.normal(0, 0.1, n)
    (tmp_path / "resmem.csv").write_text("image_name,resmem\n" + "\n".join(f"{a},{s}" for a, s in zip(names, model)) + "\n")
    res = run_analysis(str(tmp_path / "resmem.csv"), str(tmp_path / "mem.csv"), AnalysisOptions(
        human_measure="corrected_recognition", bootstrap=100, group_column="category"))
    assert res["match"] == "path" and res["n"] == n and res["human_format"] == "counts"
    assert res["spearman"]["rho"] == pytest.approx(st.spearmanr(model, hr - far)[0], abs=1e-9)
    groups = {g["group"]: g for g in res["groups"]}
    for c in ("indoor", "outdoor"):
        m = cat == c
        assert groups[c]["n"] == m.sum()
        assert groups[c]["spearman"]["rho"] == pytest.approx(st.spearmanr(model[m], (hr - far)[m])[0], abs=1e-9)


def test_trials_give_split_half_and_ceiling(tmp_path, capsys):
    rng = np.random.default_rng(5)
    images, participants = 120, 60
    mem = rng.uniform(0.2, 0.95, images)
    rows = ["participant_id,image_id,trial_type,presentation,response"]
    for p in range(participants):
        for i in rng.choice(images, 60, replace=False):
            rows.append(f"s{p},im{i}.jpg,target,1,{int(rng.random() < 0.1)}")
            rows.append(f"s{p},im{i}.jpg,target,2,{int(rng.random() < mem[i])}")
        rows.append(f"s{p},v{p}.jpg,vigilance,1,0")
        rows.append(f"s{p},v{p}.jpg,vigilance,2,{0 if p == 0 else 1}")  # s0 misses its vigilance repeat
    (tmp_path / "trials.csv").write_text("\n".join(rows) + "\n")
    dest = make_dest(tmp_path / "dest", [f"im{i}.jpg" for i in range(images)],
                     (mem + rng.normal(0, 0.1, images)).clip(0, 1))
    code = main(["analyze", "--scores", dest, "--human", str(tmp_path / "trials.csv"), "--splits", "10",
                 "--bootstrap", "100", "--seed", "3", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    sh = out["split_half"]
    assert sh["splits"] == 10 and sh["participants"] == participants - 1
    assert {"spearman_mean", "pearson_mean", "spearman_brown", "spearman_sd"} <= set(sh)
    assert 0 < sh["spearman_mean"] < sh["spearman_brown"] < 1
    assert out["participants"]["excluded_ids"] == ["s0"]
    # the noise ceiling is sqrt(Spearman-Brown(mean split-half rho)); the old "fraction_of_ceiling"
    # (rho / Spearman-Brown, not a fraction of a ceiling) is gone
    assert "fraction_of_ceiling" not in out
    ceiling = np.sqrt(2 * sh["spearman_mean"] / (1 + sh["spearman_mean"]))
    assert out["noise_ceiling"]["spearman"]["ceiling"] == pytest.approx(ceiling)
    assert out["fraction_of_noise_ceiling"]["spearman"]["value"] == pytest.approx(out["spearman"]["rho"] / ceiling)


def test_sql_views_and_queries(lab, capsys):
    dest = lab["dest"]
    assert main(["sql", dest, "SELECT path, score FROM scores ORDER BY score DESC LIMIT 3"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["path", "score"] and "(3 rows)" in out
    assert main(["sql", dest, "SELECT count(*) AS n FROM errors"]) == 0
    assert "0" in capsys.readouterr().out.splitlines()[2]
    query = ("SELECT b.path, list_cosine_similarity(a.feat_fc11::FLOAT[], b.feat_fc11::FLOAT[]) AS sim "
             "FROM scores a, scores b WHERE a.path = 'set/im000.jpg' AND b.path <> a.path ORDER BY sim DESC LIMIT 5")
    assert main(["sql", dest, query]) == 0
    assert "(5 rows)" in capsys.readouterr().out
    assert main(["sql", "--csv", dest, "SELECT path FROM scores ORDER BY path LIMIT 2"]) == 0
    assert capsys.readouterr().out.splitlines() == ['"path"', '"set/im000.jpg"', '"set/im001.jpg"']
    # options may also come between DEST and SQL, or after SQL
    assert main(["sql", dest, "--csv", "SELECT path FROM scores ORDER BY path LIMIT 1"]) == 0
    assert capsys.readouterr().out.splitlines() == ['"path"', '"set/im000.jpg"']
    assert main(["sql", dest, "SELECT path FROM scores ORDER BY path", "--max-rows", "1"]) == 0
    assert "set/im001.jpg" not in capsys.readouterr().out
    assert main(["sql", dest, "SELECT nope FROM scores"]) == 1
    assert capsys.readouterr().err.startswith("memscore: error:")
    assert main(["sql", str(lab["tmp"]), "SELECT 1"]) == 1


def test_analyze_and_sql_read_from_a_bucket(lab, capsys):
    """Scores and human data in a bucket (memory:// here, s3:// alike through fsspec) give
    the same analysis as the local copies; memscore sql reads the same folder."""
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.put(lab["dest"] + "/", "/lab-bucket/run1/", recursive=True)
    fs.put(lab["lamem"], "/lab-bucket/human/test_1.txt")
    assert main(["analyze", "--scores", lab["dest"], "--human", lab["lamem"], "--bootstrap", "50", "--json"]) == 0
    local = json.loads(capsys.readouterr().out)
    assert main(["analyze", "--scores", "memory://lab-bucket/run1", "--human", "memory://lab-bucket/human/test_1.txt",
                 "--bootstrap", "50", "--json", "--storage-options", "{}"]) == 0
    remote = json.loads(capsys.readouterr().out)
    assert remote["human"] == "memory://lab-bucket/human/test_1.txt" and remote["human_format"] == "lamem"
    assert (remote["n"], remote["spearman"], remote["pearson"]) == (local["n"], local["spearman"], local["pearson"])
    assert main(["sql", "memory://lab-bucket/run1", "--csv", "SELECT count(*) AS n FROM scores"]) == 0
    assert capsys.readouterr().out.splitlines() == ['"n"', "60"]
    # what is not there, or a bad option, is one line, not a traceback
    assert main(["analyze", "--scores", "memory://lab-bucket/nothing", "--human", lab["lamem"]]) == 1
    assert "scores not found: memory://lab-bucket/nothing" in capsys.readouterr().err
    assert main(["analyze", "--scores", lab["dest"], "--human", "memory://lab-bucket/human/nope.txt"]) == 1
    assert "cannot read human data memory://lab-bucket/human/nope.txt" in capsys.readouterr().err
    assert main(["sql", "memory://lab-bucket/run1", "--storage-options", "[1]", "SELECT 1"]) == 1
    assert "must be a JSON object" in capsys.readouterr().err
    fs.rm("/lab-bucket", recursive=True)


def add_non_parts(dest) -> None:
    """Files a scores folder may hold beside memscore's parts that are not parts: a copy in a
    subfolder (memscore writes DEST/scores/part-*.parquet, flat), an _underscore file, a hidden one
    and a half-written temporary. Each repeats the part's rows, so reading one is a duplicate-id error."""
    from pathlib import Path

    scores = Path(dest) / "scores"
    part = (scores / "part-x.parquet").read_bytes()
    (scores / "backup").mkdir()
    (scores / "backup" / "part-x.parquet").write_bytes(part)
    (scores / "_old.parquet").write_bytes(part)
    (scores / ".part-y.parquet").write_bytes(part)
    (scores / ".part-z.parquet.0123.inprogress").write_bytes(part[:100])


def test_scores_folder_is_listed_alike_locally_and_in_a_bucket(lab, capsys):
    """--scores DEST reads DEST/scores/*.parquet as memscore score writes them (one level, no
    hidden or _underscore names), whether DEST is a local folder or in a bucket."""
    import fsspec

    add_non_parts(lab["dest"])
    fs = fsspec.filesystem("memory")
    fs.put(lab["dest"] + "/", "/lab-listing/run1/", recursive=True)
    assert fs.isfile("/lab-listing/run1/scores/backup/part-x.parquet")
    try:
        results = []
        for scores in (lab["dest"], "file://" + lab["dest"], "memory://lab-listing/run1",
                       lab["dest"] + "/scores", "memory://lab-listing/run1/scores"):
            assert main(["analyze", "--scores", scores, "--human", lab["lamem"], "--bootstrap", "20", "--json"]) == 0, \
                capsys.readouterr().err
            results.append(json.loads(capsys.readouterr().out))
        assert [(r["n_scores"], r["n"]) for r in results] == [(60, 59)] * len(results)
        assert all(r["spearman"] == results[0]["spearman"] for r in results)
    finally:
        fs.rm("/lab-listing", recursive=True)


def test_analyze_out_to_a_bucket(lab, capsys):
    """--out takes a URI (memory:// here; tests/test_s3.py writes to S3 with --storage-options):
    the same three files as in a local folder; a --out that cannot be written is one line."""
    import fsspec

    fs = fsspec.filesystem("memory")
    try:
        assert main(["analyze", "--scores", lab["dest"], "--human", lab["lamem"], "--bootstrap", "20",
                     "--out", "memory://lab-report/r1"]) == 0
        assert "wrote memory:///lab-report/r1/joined.parquet" in capsys.readouterr().out
        assert sorted(fs.ls("/lab-report/r1", detail=False)) == [
            "/lab-report/r1/joined.parquet", "/lab-report/r1/report.md", "/lab-report/r1/stats.json"]
        with fs.open("/lab-report/r1/joined.parquet", "rb") as handle:
            assert pq.read_table(handle).num_rows == 59
        stats = json.loads(fs.cat_file("/lab-report/r1/stats.json"))
        assert stats["n"] == 59 and stats["outputs"]["report"] == "memory:///lab-report/r1/report.md"
        assert "Spearman rho" in fs.cat_file("/lab-report/r1/report.md").decode()
    finally:
        if fs.exists("/lab-report"):
            fs.rm("/lab-report", recursive=True)
    blocker = lab["tmp"] / "a-file"
    blocker.write_text("x")
    assert main(["analyze", "--scores", lab["dest"], "--human", lab["lamem"], "--bootstrap", "0",
                 "--out", str(blocker / "report")]) == 1
    assert capsys.readouterr().err.startswith(f"memscore: error: cannot write {blocker / 'report'}")


def test_unwritable_out_fails_before_the_statistics(lab, capsys, monkeypatch):
    """A --out that cannot be written costs seconds, not a finished bootstrap; nothing is left behind."""
    import memscore.tasks.analyze

    def no_analysis(*args, **kwargs):
        raise AssertionError("analysed although --out cannot be written")

    monkeypatch.setattr(memscore.tasks.analyze, "analyze_scores", no_analysis)
    blocker = lab["tmp"] / "in-the-way"
    blocker.write_text("x")
    assert main(["analyze", "--scores", lab["dest"], "--human", lab["lamem"], "--bootstrap", "10000",
                 "--out", str(blocker / "report")]) == 1
    assert capsys.readouterr().err.startswith(f"memscore: error: cannot write {blocker / 'report'}")
    monkeypatch.undo()
    out = lab["tmp"] / "new" / "report"
    assert main(["analyze", "--scores", lab["dest"], "--human", lab["lamem"], "--bootstrap", "0", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["joined.parquet", "report.md", "stats.json"]  # no probe left


@pytest.mark.slow
def test_prefect_flow_attaches_a_markdown_artifact(lab):
    from prefect.artifacts import Artifact

    from memscore.flows.analyze import analyze
    from memscore.tasks.analysis_options import AnalyzeRequest

    result = analyze(AnalyzeRequest(scores=lab["dest"], human=lab["lamem"], options=AnalysisOptions(bootstrap=50)))
    assert result["n"] == 59
    artifact = Artifact.get("memscore-analysis")
    assert artifact is not None and "Spearman rho" in artifact.data


def test_sql_prompt(lab, monkeypatch, capsys):
    lines = iter(["SELECT count(*) AS n", "FROM scores;", "SELECT nope FROM scores;", ".quit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["sql", lab["dest"]]) == 0
    captured = capsys.readouterr()
    assert "60" in captured.out and "error:" in captured.err


def test_one_model_under_two_weights_is_two_predictors(lab, capsys):
    """A DEST keyed (uri, model, weights) holding resmem under two weights digests (e.g. scored
    again with --weights of a fine-tuned copy): each weights is a predictor named
    model@<first 8 hex of the digest>; a model with one weights keeps its plain name."""
    part = pq.read_table(lab["tmp"] / "dest" / "scores" / "part-x.parquet")
    n = part.num_rows
    rng = np.random.default_rng(7)
    tuned = rng.uniform(0, 1, n).astype(np.float32)
    other = rng.uniform(0, 1, n).astype(np.float32)

    def variant(model, weights, scores):
        t = part.set_column(part.schema.get_field_index("weights"), "weights", pa.array([weights] * n))
        t = t.set_column(t.schema.get_field_index("model"), "model", pa.array([model] * n))
        return t.set_column(t.schema.get_field_index("score"), "score", pa.array(scores, pa.float32()))

    first = variant("resmem", "sha256:" + "1a2b3c4d" + "0" * 56, part.column("score").to_numpy())
    pq.write_table(first, lab["tmp"] / "dest" / "scores" / "part-x.parquet")
    pq.write_table(variant("resmem", "sha256:" + "9f8e7d6c" + "1" * 56, tuned), lab["tmp"] / "dest" / "scores" / "part-y.parquet")
    pq.write_table(variant("other", "abc", other), lab["tmp"] / "dest" / "scores" / "part-z.parquet")
    assert main(["analyze", "--scores", lab["dest"], "--human", lab["lamem"], "--bootstrap", "0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    got = {m["model"]: m["spearman"]["rho"] for m in out["models"]}
    # the lab's images: the first has no human score, so scores[1:] against human
    expected = {"resmem@1a2b3c4d": st.spearmanr(lab["score"].astype(np.float64), lab["human"])[0],
                "resmem@9f8e7d6c": st.spearmanr(tuned[1:].astype(np.float64), lab["human"])[0],
                "other": st.spearmanr(other[1:].astype(np.float64), lab["human"])[0]}
    assert got == pytest.approx(expected, abs=1e-9)
    assert any("several weights" in w and "resmem@9f8e7d6c" in w for w in out["warnings"])


def test_seed_bootstrap_and_splits_out_of_range_are_one_line(lab, capsys):
    """numpy seeds are 0 <= seed < 2**32; resamples and splits have an upper bound."""
    base = ["analyze", "--scores", lab["dest"], "--human", lab["lamem"], "--bootstrap", "0"]
    for flag, value, field in [("--seed", "-1", "seed"), ("--seed", str(2**32), "seed"),
                               ("--bootstrap", "1000001", "bootstrap"), ("--splits", "10001", "splits")]:
        assert main([*base, flag, value]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("memscore: error:") and field in err and "\n" not in err, err
    assert main([*base, "--seed", str(2**32 - 1), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["spearman"]["rho"] == pytest.approx(st.spearmanr(lab["score"].astype(np.float64), lab["human"])[0])
