"""The Python API (memscore.load_model / score / analyze / sql) against outside references:
the official ``resmem`` package's own module and transformer, the rows ``memscore score``
writes, scipy's Spearman, and a hand count of the archive."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torchvision
from PIL import Image

from conftest import official_resmem, photo, write_archive, write_photo_formats

ROOT = Path(__file__).resolve().parent.parent


def test_import_memscore_is_cheap():
    """`import memscore` gives the API without importing torch, Prefect, DuckDB, pyarrow or pandas."""
    code = ("import sys, memscore; assert callable(memscore.load_model) and callable(memscore.score); "
            "print(sorted(m for m in ('torch', 'prefect', 'duckdb', 'pyarrow', 'pandas', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "[]", out


@pytest.fixture(scope="module")
def resmem():
    return pytest.importorskip("resmem", reason="the official resmem package is needed for the parity check")


@pytest.fixture(scope="module")
def official_model(resmem):
    """The official package's own class, forward pass and weights (conftest.official_resmem)."""
    return official_resmem(resmem)


@pytest.fixture(scope="module")
def model():
    import memscore

    return memscore.load_model("resmem", device="cpu")


def test_load_model_scores_match_official_package(tmp_path, resmem, official_model, model, capsys):
    """PIL images, paths, bytes, uint8 and float tensors, arrays: the official score within 1e-5."""
    files = write_photo_formats(tmp_path)
    images = [Image.open(f).convert("RGB") for f in files]
    with torch.inference_mode():
        official = np.array([float(official_model(resmem.transformer(im).view(-1, 3, 227, 227)).item())
                             for im in images])
    as_uint8 = [torchvision.transforms.functional.pil_to_tensor(im) for im in images]
    inputs = {
        "PIL": images,
        "paths": files,
        "str paths": [str(f) for f in files],
        "file:// URIs": [f.as_uri() for f in files],
        "bytes": [f.read_bytes() for f in files],
        "uint8 tensors": as_uint8,
        "float tensors": [torchvision.transforms.functional.to_tensor(im) for im in images],
        "arrays": [np.asarray(im) for im in images],
    }
    worst = 0.0
    for kind, given in inputs.items():
        ours = model.score(given, batch_size=4)  # two batches: 4 + 2
        assert ours.dtype == np.float32 and ours.shape == (len(files),), kind
        diff = float(np.max(np.abs(ours - official)))
        assert diff <= 1e-5, (kind, ours, official)
        worst = max(worst, diff)
    one = model.score(images[0])  # one image: a batch of one
    assert one.shape == (1,) and abs(one[0] - official[0]) <= 1e-5
    # a 4-D tensor is N images (of one size, to stack): each is preprocessed like a file
    small = [photo(name) for name in ("astronaut", "coffee", "rocket")]  # 320x240
    batch = torch.stack([torchvision.transforms.functional.pil_to_tensor(im) for im in small])
    with torch.inference_mode():
        expected = np.array([float(official_model(resmem.transformer(im).view(-1, 3, 227, 227)).item()) for im in small])
    assert np.max(np.abs(model.score(batch) - expected)) <= 1e-5
    with capsys.disabled():
        print(f"\nload_model('resmem').score vs the official resmem package: max |diff| {worst:.2e} "
              f"over {len(files)} images x {len(inputs)} input kinds")


def test_load_model_features_match_official_forward(resmem, official_model, model):
    """features('resnet152') is the official ResNet-152 output, fc11 the input of its fc12."""
    images = [photo(name, size=None) for name in ("coffee", "rocket", "astronaut")]
    x = torch.cat([resmem.transformer(im).view(-1, 3, 227, 227) for im in images])
    with torch.inference_mode():
        logits = official_model.features(x).numpy()
    scores, feats = model.predict(images, ["resnet152", "fc11"], batch_size=2)
    assert feats["resnet152"].shape == (3, 1000) and feats["fc11"].shape == (3, 256)
    assert np.max(np.abs(feats["resnet152"] - logits)) <= 1e-4 * max(1.0, np.abs(logits).max())
    assert np.allclose(model.features(images, "fc11")["fc11"], feats["fc11"], atol=1e-6)
    with pytest.raises(ValueError, match="no layer"):
        model.features(images, ["nope"])


def test_load_model_bad_images(tmp_path, model):
    """A missing or broken file raises ImageLoadError naming it; errors='nan' gives NaN rows."""
    import memscore

    good = tmp_path / "good.jpg"
    photo("coffee").save(good, "JPEG")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(good.read_bytes()[:500])
    with pytest.raises(memscore.ImageLoadError, match="broken.jpg"):
        model.score([good, broken])
    with pytest.raises(memscore.ImageLoadError, match="missing.jpg.*read failed"):
        model.score([tmp_path / "missing.jpg"])
    scores, feats = model.predict([broken, good, tmp_path / "missing.jpg"], ["fc11"], errors="nan")
    assert np.isnan(scores[[0, 2]]).all() and not np.isnan(scores[1])
    assert np.isnan(feats["fc11"][0]).all() and not np.isnan(feats["fc11"][1]).any()
    assert abs(scores[1] - model.score([good])[0]) <= 1e-6
    with pytest.raises(ValueError, match="shape"):
        model.score([torch.zeros(5, 8, 8, dtype=torch.uint8)])


def _rows(dest: Path) -> dict[str, dict]:
    """DEST/scores as {path: row}, without the per-run columns."""
    tables = [pq.read_table(p) for p in sorted((dest / "scores").glob("*.parquet"))]
    rows = {}
    for table in tables:
        for row in table.to_pylist():
            row.pop("run_id"), row.pop("scored_at")
            rows[row["path"]] = row
    return rows


@pytest.mark.slow
def test_score_api_writes_the_cli_parts_and_skips_on_rerun(tmp_path, photos, model, recwarn):
    """memscore.score: the rows `memscore score` writes (same columns and values), a rerun
    scores nothing, and without dest nothing is written and the same scores come back."""
    import memscore
    from memscore.flows.cli import main

    source = tmp_path / "archive"
    files = write_archive(source, photos, count=3)
    (source / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    cli_dest, api_dest = tmp_path / "cli", tmp_path / "api"
    assert main(["score", str(source), "--out", str(cli_dest), "--device", "cpu", "--workers", "0",
                 "--no-progress"]) == 0
    table = memscore.score(source, api_dest, device="cpu", workers=0)
    assert table.num_rows == 3 and table.column_names[:9] == [
        "image_id", "path", "uri", "size_bytes", "width", "height", "model", "weights", "score"]
    summary = json.loads(table.schema.metadata[b"memscore.summary"])
    assert (summary["scored"], summary["failed"], summary["skipped"], summary["ignored_files"]) == (3, 1, 0, 1)
    assert any("1 image(s) could not be scored" in str(w.message) and "broken.jpg" in str(w.message) for w in recwarn)
    cli_rows, api_rows = _rows(cli_dest), _rows(api_dest)
    assert set(api_rows) == {f.relative_to(source).as_posix() for f in files}
    assert cli_rows == api_rows  # every column, scores and feature vectors included, bit for bit
    assert [r["path"] for r in table.to_pylist()] == sorted(api_rows)
    # and Model.score on the same files gives the same scores
    by_path = {r["path"]: r["score"] for r in api_rows.values()}
    paths = sorted(by_path)
    assert np.allclose(model.score([source / p for p in paths]), [by_path[p] for p in paths], atol=1e-6, rtol=0)

    again = memscore.score(source, api_dest, device="cpu", workers=0)
    summary = json.loads(again.schema.metadata[b"memscore.summary"])
    assert (summary["scored"], summary["skipped"]) == (0, 4)  # 3 scored + 1 failed: all already in DEST
    assert again.drop_columns(["scored_at"]).equals(table.drop_columns(["scored_at"]))
    assert len(list((api_dest / "scores").glob("*.parquet"))) == 1

    in_memory = memscore.score(source, device="cpu", workers=0, features=[])
    assert "feat_fc11" not in in_memory.column_names
    assert in_memory["path"].to_pylist() == paths
    assert in_memory["score"].to_pylist() == [by_path[p] for p in paths]
    assert in_memory.to_pandas().shape[0] == 3


def test_score_api_refuses_bad_requests(tmp_path):
    """Bad input is refused before any work, with the CLI's reasons."""
    import memscore
    from memscore.models.registry import UnknownModelError
    from memscore.tasks.discover import SourceUnreadableError

    with pytest.raises(SourceUnreadableError, match="not found"):
        memscore.score(tmp_path / "nowhere")
    with pytest.raises(memscore.UserError):  # what the CLI shows as one line
        memscore.score(tmp_path / "nowhere")
    assert issubclass(memscore.ImageLoadError, memscore.UserError)
    with pytest.raises(UnknownModelError, match="unknown model"):
        memscore.score(tmp_path, model="nope")
    with pytest.raises(ValueError, match="no layer"):
        memscore.score(tmp_path, features=["nope"])


@pytest.mark.slow
def test_analyze_and_sql_api(tmp_path, photos, capsys):
    """memscore.analyze equals `memscore analyze --json` and scipy's Spearman; memscore.sql
    sees the scores and errors views."""
    from scipy import stats

    import memscore
    from memscore.flows.cli import UserError, main

    source, dest = tmp_path / "archive", tmp_path / "out"
    write_archive(source, photos)
    (source / "empty.png").write_bytes(b"")
    with pytest.warns(UserWarning, match=r"1 image\(s\) could not be scored"):
        table = memscore.score(source, dest, device="cpu", workers=0, features=[])
    human = {row["path"]: 0.3 + 0.1 * i for i, row in enumerate(table.to_pylist())}
    human["a/astronaut.jpg"] = 0.95  # not in score order
    human_csv = tmp_path / "human.csv"
    human_csv.write_text("path,hit_rate\n" + "".join(f"{p},{v}\n" for p, v in human.items()))

    result = memscore.analyze(dest, human_csv, bootstrap=200, seed=1)
    scores = dict(zip(table["path"].to_pylist(), table["score"].to_pylist()))
    expected = stats.spearmanr([scores[p] for p in human], [human[p] for p in human])
    assert result.n == 6 and result.n_unmatched_scores == 0
    assert abs(result.spearman["rho"] - expected.statistic) < 1e-9
    assert abs(result.pearson["r"] - stats.pearsonr([scores[p] for p in human], list(human.values())).statistic) < 1e-6
    joined = result.to_pandas()
    assert len(joined) == 6 and {"image", "score", "human"} <= set(joined.columns)
    assert dict(zip(joined["image"], joined["human"])) == pytest.approx(human)
    assert result.to_arrow().num_rows == 6

    capsys.readouterr()
    assert main(["analyze", "--scores", str(dest), "--human", str(human_csv), "--bootstrap", "200",
                 "--seed", "1", "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    ours = result.as_dict()
    cli.pop("seconds"), ours.pop("seconds")
    assert json.loads(json.dumps(ours, default=str)) == cli
    assert set(dir(result)) >= set(cli)

    in_memory = memscore.analyze(table, human_csv, bootstrap=0)  # a table straight from memscore.score
    assert in_memory.spearman["rho"] == pytest.approx(expected.statistic, abs=1e-9)
    with pytest.raises(TypeError, match="unknown analyze setting"):
        memscore.analyze(dest, human_csv, bootstrapp=10)
    out = tmp_path / "report"
    written = memscore.analyze(dest, human_csv, bootstrap=0, out=out)
    assert set(written.outputs) == {"joined", "stats", "report"} and (out / "stats.json").is_file()

    relation = memscore.sql(dest, "SELECT path, score FROM scores ORDER BY score DESC")
    assert relation.fetchall() == sorted(scores.items(), key=lambda kv: -kv[1])
    assert memscore.sql(dest, "SELECT path, stage, error FROM errors").fetchall() == [
        ("empty.png", "decode", "EmptyFileError")]
    with pytest.raises(UserError, match="not a folder"):
        memscore.sql(tmp_path / "nowhere", "SELECT 1")


def test_score_api_reads_model_and_features_as_the_cli_does(tmp_path):
    """features="fc11" is one layer (not the characters f, c, 1, 1) and "a,b" two, as --features;
    a model that is no name is a one-line ParameterError, not a TypeError."""
    import memscore
    from memscore.tasks.discover import SourceUnreadableError
    from memscore.tasks.params import ParameterError

    with pytest.raises(SourceUnreadableError, match="not found"):  # the layer passed: the source is what fails
        memscore.score(tmp_path / "nowhere", features="fc11")
    with pytest.raises(ValueError, match=r"no layer\(s\) nope;"):  # 'nope' named whole, fc11 accepted
        memscore.score(tmp_path / "nowhere", features="fc11, nope")
    for bad in (123, [1, 2], []):
        with pytest.raises(ParameterError, match="model must be a model name") as refused:
            memscore.score(tmp_path / "nowhere", model=bad)
        assert isinstance(refused.value, memscore.UserError) and "\n" not in str(refused.value)
    with pytest.raises(ParameterError, match="features must be"):
        memscore.score(tmp_path / "nowhere", features=5)


def test_analyze_api_reads_measures_and_derived_as_the_cli_does(tmp_path):
    """human_measure="hr,far" / "all" give the model x measure table (as --human-measure), derived as
    one string is one expression; each rho is scipy's on the hand-computed rates."""
    from scipy import stats

    import memscore

    images = ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg", "f.jpg"]
    m1 = [0.9, 0.5, 0.7, 0.2, 0.4, 0.6]
    m2 = [0.1, 0.3, 0.2, 0.5, 0.1, 0.3]
    counts = [(9, 1, 1, 9), (4, 6, 5, 5), (8, 2, 0, 10), (1, 9, 2, 8), (3, 7, 6, 4), (6, 4, 4, 6)]
    scores = tmp_path / "scores.csv"
    scores.write_text("image,model,score\n" + "".join(f"{i},m1,{s}\n" for i, s in zip(images, m1))
                      + "".join(f"{i},m2,{s}\n" for i, s in zip(images, m2)))
    human = tmp_path / "counts.csv"
    human.write_text("image,hit,miss,fa,cr\n" + "".join(f"{i},{h},{m},{f},{c}\n" for i, (h, m, f, c) in zip(images, counts)))
    hit_rate = [h / (h + m) for h, m, _, _ in counts]
    fa_rate = [f / (f + c) for _, _, f, c in counts]
    gap = [a - b for a, b in zip(m1, m2)]

    for measure in ("hr,far", ["hit_rate", "far"]):
        result = memscore.analyze(scores, human, bootstrap=0, human_measure=measure)
        rows = {r["measure"]: {m["model"]: m["spearman"]["rho"] for m in r["models"]} for r in result.measure_table["rows"]}
        assert list(rows) == ["hit_rate", "false_alarm_rate"]
        assert rows["hit_rate"]["m1"] == pytest.approx(stats.spearmanr(m1, hit_rate).statistic, abs=1e-9)
        assert rows["false_alarm_rate"]["m2"] == pytest.approx(stats.spearmanr(m2, fa_rate).statistic, abs=1e-9)

    result = memscore.analyze(scores, human, bootstrap=0, human_measure="all", derived="gap=m1 - m2")
    rows = {r["measure"]: {m["model"]: m["spearman"]["rho"] for m in r["models"]} for r in result.measure_table["rows"]}
    assert list(rows) == ["hit_rate", "false_alarm_rate", "corrected_recognition", "dprime"]
    assert rows["hit_rate"]["gap"] == pytest.approx(stats.spearmanr(gap, hit_rate).statistic, abs=1e-9)
    crr = [round(h - f, 12) for h, f in zip(hit_rate, fa_rate)]  # exact: b and d tie at -0.1
    assert rows["corrected_recognition"]["gap"] == pytest.approx(stats.spearmanr(gap, crr).statistic, abs=1e-9)
