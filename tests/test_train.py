"""Training (issue 6): loss falls, resume continues where it stopped, splits, card, CLI, scoring with the result.

The fast tests train a tiny stand-in model registered for the test only (the loop
is the same for every model); the slow ones train the real memnet-baseline and M3M
for one short epoch and score with what they wrote.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torch import nn

from memscore.models import registry
from memscore.models.preprocess import resmem_transform
from memscore.models.registry import ModelSpec, TrainRecipe
from memscore.tasks.train import (
    TrainConfig,
    TrainingError,
    bootstrap_spearman,
    pairwise_rank_loss,
    rankdata,
    spearman,
    train_model,
)


class TinyMem(nn.Module):
    """A stand-in with the pipeline's interface: mean colour of 16x16 blocks -> linear -> sigmoid."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(16)
        self.fc = nn.Linear(3 * 14 * 14, 1)

    def forward_features(self, x, layers=()):
        h = torch.flatten(self.pool(x), 1)
        return torch.sigmoid(self.fc(h)).squeeze(1), {name: h for name in layers}

    def forward(self, x):
        return self.forward_features(x)[0]


def _tiny_initial(options):
    torch.manual_seed(123)
    return TinyMem()


@pytest.fixture()
def tiny_model(monkeypatch):
    spec = ModelSpec(name="tiny-test", description="test stand-in", build=TinyMem,
                     default_weights=lambda: (_ for _ in ()).throw(RuntimeError("none")),
                     preprocess=resmem_transform, input_size=227, feature_layers={"pooled": 588},
                     default_features=("pooled",), recipe=TrainRecipe(_tiny_initial, (), "test"))
    monkeypatch.setitem(registry._REGISTRY, "tiny-test", spec)
    return "tiny-test"


def make_dataset(root: Path, n: int = 24) -> tuple[Path, Path]:
    """Real photo crops (scikit-image) whose 'human' score is their brightness: learnable."""
    skdata = pytest.importorskip("skimage.data")
    photos = [skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.rocket()]
    rng = np.random.default_rng(0)
    folder = root / "images" / "sub"
    folder.mkdir(parents=True)
    lines = ["image,score"]
    for i in range(n):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        side = min(h, w) // 2
        y, x = rng.integers(0, h - side), rng.integers(0, w - side)
        level = (i * 7 % n) / n
        crop = np.clip(photo[y:y + side, x:x + side].astype(np.float32) * (0.3 + level), 0, 255).astype(np.uint8)
        Image.fromarray(crop).resize((48, 48)).save(folder / f"img{i:03d}.jpg", quality=90)
        lines.append(f"img{i:03d}.jpg,{0.35 + 0.5 * level:.4f}")
    human = root / "human.csv"
    human.write_text("\n".join(lines) + "\n")
    return human, root / "images"


def config_for(model: str, human: Path, images: Path, out: Path, **overrides) -> TrainConfig:
    settings = dict(model=model, human=str(human), images=str(images), out=str(out), init="random",
                    epochs=4, batch_size=4, lr=3e-3, patience=10, val_fraction=0.25, test_fraction=0.125, seed=1)
    settings.update(overrides)
    return TrainConfig(**settings)


def test_statistics_helpers():
    assert list(rankdata(np.array([3.0, 1.0, 3.0, 2.0]))) == [3.5, 1.0, 3.5, 2.0]
    assert spearman(np.array([1, 2, 3, 4.0]), np.array([10, 20, 30, 40.0])) == pytest.approx(1.0)
    assert spearman(np.array([1, 2, 3, 4.0]), np.array([4, 3, 2, 1.0])) == pytest.approx(-1.0)
    low, high = bootstrap_spearman(np.arange(50.0), np.arange(50.0) + np.random.default_rng(0).normal(0, 5, 50), n=200)
    assert 0.7 < low <= high <= 1.0
    good = pairwise_rank_loss(torch.tensor([0.1, 0.5, 0.9]), torch.tensor([0.2, 0.4, 0.6]))
    bad = pairwise_rank_loss(torch.tensor([0.9, 0.5, 0.1]), torch.tensor([0.2, 0.4, 0.6]))
    assert good < bad


def test_short_training_loss_falls_and_writes_everything(tmp_path, tiny_model):
    human, images = make_dataset(tmp_path)
    out = tmp_path / "run"
    seen = []
    result = train_model(config_for(tiny_model, human, images, out, epochs=6), on_epoch=lambda row, hist: seen.append(row.epoch),
                         log=lambda text: None)
    losses = [row.train_loss for row in result.metrics]
    assert seen == [1, 2, 3, 4, 5, 6]
    assert losses[-1] < losses[0] * 0.7, losses
    assert result.best_epoch is not None and result.test is not None
    metrics = pq.read_table(out / "metrics.parquet")
    assert metrics.column_names[:5] == ["epoch", "train_loss", "val_loss", "val_spearman", "val_pearson"]
    assert metrics.num_rows == 6
    splits = pq.read_table(out / "splits.parquet").to_pydict()
    assert sorted(set(splits["split"])) == ["test", "train", "val"]
    assert {s: splits["split"].count(s) for s in ("train", "val", "test")} == {"train": 15, "val": 6, "test": 3}
    card = json.loads((out / "model_card.json").read_text())
    assert card["model"] == "tiny-test" and card["finished"] is True
    assert card["weights"]["digest"] == result.weights_digest
    from memscore.models.weights import file_digest

    assert file_digest(out / "model.pt") == result.weights_digest  # the digest scoring rows will carry
    assert card["splits"]["counts"] == {"train": 15, "val": 6, "test": 3}
    assert card["config"]["lr"] == 3e-3 and "storage_options" not in card["config"]
    # what was read: the detected format and columns, not just the options given (auto, None)
    assert {k: card["data"]["read_as"][k] for k in ("format", "id_column", "score_column", "images")} == {
        "format": "table", "id_column": "image", "score_column": "score", "images": 24}
    assert card["metrics"]["test"]["images"] == 3
    predictions = pq.read_table(out / "test_predictions.parquet").to_pydict()
    assert len(predictions["image"]) == 3
    human_scores = dict(zip(splits["image"], splits["human"]))
    assert predictions["human"] == [human_scores[name] for name in predictions["image"]]  # the data's values, not float32
    assert (out / "checkpoints" / "last.pt").is_file()


class Killed(Exception):
    pass


def test_resume_after_kill_continues_where_it_stopped(tmp_path, tiny_model):
    human, images = make_dataset(tmp_path)
    whole = train_model(config_for(tiny_model, human, images, tmp_path / "whole"), log=lambda text: None)

    def kill_after_two(row, history):
        if row.epoch == 2:
            raise Killed()

    killed_out = tmp_path / "killed"
    with pytest.raises(Killed):
        train_model(config_for(tiny_model, human, images, killed_out), on_epoch=kill_after_two, log=lambda text: None)
    assert pq.read_table(killed_out / "metrics.parquet").num_rows == 2
    logs = []
    resumed = train_model(config_for(tiny_model, human, images, killed_out), log=logs.append)
    assert resumed.resumed_from_epoch == 2
    assert any("resuming" in line for line in logs)
    assert [r.epoch for r in resumed.metrics] == [1, 2, 3, 4]
    # the resumed run computes exactly what the uninterrupted one did
    np.testing.assert_allclose([r.train_loss for r in resumed.metrics], [r.train_loss for r in whole.metrics], rtol=1e-6)
    a = torch.load(tmp_path / "whole" / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(killed_out / "checkpoints" / "last.pt", weights_only=True)["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    # a run killed while writing a checkpoint leaves a half-written temporary: the next run removes it
    stale = killed_out / "checkpoints" / ".tmpkilled.inprogress"
    stale.write_bytes(b"half a checkpoint")
    # a finished run started again does no more epochs
    again = train_model(config_for(tiny_model, human, images, killed_out), log=lambda text: None)
    assert again.resumed_from_epoch == 4 and len(again.metrics) == 4
    assert not stale.exists()


def test_output_to_a_bucket_and_resume_from_it(tmp_path, tiny_model):
    """OUT may be any fsspec URI: here memory://, standing in for a bucket."""
    import fsspec

    human, images = make_dataset(tmp_path, n=12)
    out = "memory://memscore-test-runs/tiny"
    try:
        train_model(config_for(tiny_model, human, images, out, epochs=1), log=lambda text: None)
        fs = fsspec.filesystem("memory")
        for name in ("checkpoints/last.pt", "model.pt", "model_card.json", "metrics.parquet", "splits.parquet"):
            assert fs.exists(f"/memscore-test-runs/tiny/{name}"), name
        resumed = train_model(config_for(tiny_model, human, images, out, epochs=2), log=lambda text: None)
        assert resumed.resumed_from_epoch == 1 and [r.epoch for r in resumed.metrics] == [1, 2]
    finally:
        fsspec.filesystem("memory").rm("/memscore-test-runs", recursive=True)


def test_human_data_in_a_bucket_or_file_uri(tmp_path, tiny_model):
    """--human is a path or URI (the help says so): file:// and bucket files are read like local ones."""
    import fsspec

    human, images = make_dataset(tmp_path, n=12)
    fs = fsspec.filesystem("memory")
    fs.pipe_file("/memscore-human-test/scores.csv", human.read_bytes())
    try:
        for uri in (human.as_uri(), "memory://memscore-human-test/scores.csv"):
            out = tmp_path / f"run-{uri.split(':')[0]}"
            result = train_model(config_for(tiny_model, uri, images, out, epochs=1), log=lambda text: None)
            assert sum(result.card["splits"]["counts"].values()) == 12, uri
        with pytest.raises(TrainingError, match="cannot read human data"):
            train_model(config_for(tiny_model, "memory://memscore-human-test/none.csv", images, tmp_path / "x", epochs=1),
                        log=lambda text: None)
    finally:
        fs.rm("/memscore-human-test", recursive=True)


def test_resume_refuses_other_model_or_data(tmp_path, tiny_model):
    human, images = make_dataset(tmp_path)
    out = tmp_path / "run"
    train_model(config_for(tiny_model, human, images, out, epochs=1), log=lambda text: None)
    with pytest.raises(TrainingError, match="other data or splits"):
        train_model(config_for(tiny_model, human, images, out, epochs=2, seed=7), log=lambda text: None)
    fresh = train_model(config_for(tiny_model, human, images, out, epochs=1, seed=7, resume=False), log=lambda text: None)
    assert fresh.resumed_from_epoch is None


def test_resume_refuses_other_training_options_or_scores(tmp_path, tiny_model):
    """Resuming with another lr, loss, batch size, ... would mix two runs under one card: refused.
    More epochs (or another patience) continue the run."""
    human, images = make_dataset(tmp_path)
    out = tmp_path / "run"
    train_model(config_for(tiny_model, human, images, out, epochs=1), log=lambda text: None)
    for change in ({"lr": 0.01}, {"loss": "rank"}, {"batch_size": 8}, {"augment": False}, {"optimizer": "sgd"}):
        with pytest.raises(TrainingError, match="other training options .*" + next(iter(change))):
            train_model(config_for(tiny_model, human, images, out, epochs=2, **change), log=lambda text: None)
    assert pq.read_table(out / "metrics.parquet").num_rows == 1
    rescored = tmp_path / "rescored.csv"
    rescored.write_text(human.read_text().replace(",0.", ",0.0"))  # same images, other scores
    with pytest.raises(TrainingError, match="other data or splits"):
        train_model(config_for(tiny_model, rescored, images, out, epochs=2), log=lambda text: None)
    more = train_model(config_for(tiny_model, human, images, out, epochs=2, patience=3), log=lambda text: None)
    assert more.resumed_from_epoch == 1 and [r.epoch for r in more.metrics] == [1, 2]


def test_training_time_includes_writing_checkpoints(tmp_path, tiny_model, monkeypatch):
    """The card's train_seconds (compare's 'training time') counts checkpoint writes, slow for big models or buckets."""
    import time

    from memscore.tasks.train_run import RunFolder

    human, images = make_dataset(tmp_path, n=12)
    real_save = RunFolder.save_torch

    def slow_save(run, name, obj):
        time.sleep(0.5)
        return real_save(run, name, obj)

    monkeypatch.setattr(RunFolder, "save_torch", slow_save)
    result = train_model(config_for(tiny_model, human, images, tmp_path / "run", epochs=2, lr=0.0), log=lambda text: None)
    passes = sum(row.seconds for row in result.metrics)
    saves = 0.5 * (2 + 1)  # last.pt twice, model.pt once (lr 0: epoch 2 is no better)
    assert result.train_seconds >= passes + saves
    assert result.card["train_seconds"] == pytest.approx(result.train_seconds)


def test_early_stopping_on_validation_spearman(tmp_path, tiny_model):
    human, images = make_dataset(tmp_path)
    result = train_model(config_for(tiny_model, human, images, tmp_path / "run", epochs=30, patience=1, lr=0.0),
                         log=lambda text: None)
    assert result.stopped_early and len(result.metrics) == 2  # lr 0: epoch 2 cannot beat epoch 1
    assert result.best_epoch == 1


def test_rerun_of_a_finished_run_reports_the_same_stop(tmp_path, tiny_model):
    """A run that used all its epochs is not reported as stopped early when run again; one that stopped early is."""
    human, images = make_dataset(tmp_path)
    full = config_for(tiny_model, human, images, tmp_path / "full", epochs=3, patience=2, lr=0.0)
    first = train_model(full, log=lambda text: None)
    again = train_model(full, log=lambda text: None)
    assert (first.stopped_early, again.stopped_early) == (False, False)
    early = config_for(tiny_model, human, images, tmp_path / "early", epochs=6, patience=2, lr=0.0)
    first = train_model(early, log=lambda text: None)
    again = train_model(early, log=lambda text: None)
    assert (first.stopped_early, again.stopped_early) == (True, True) and len(again.metrics) == 3


def test_split_files_lamem_style_and_rank_loss(tmp_path, tiny_model):
    human, images = make_dataset(tmp_path, n=16)
    rows = [line.split(",") for line in human.read_text().splitlines()[1:]]
    for split, part in (("train", rows[:8]), ("val", rows[8:12]), ("test", rows[12:])):
        (tmp_path / f"{split}_1.txt").write_text("".join(f"{name} {score}\n" for name, score in part))
    config = config_for(tiny_model, human, images, tmp_path / "run", epochs=2, loss="rank",
                        split_files={s: str(tmp_path / f"{s}_1.txt") for s in ("train", "val", "test")})
    result = train_model(config, log=lambda text: None)
    splits = pq.read_table(tmp_path / "run" / "splits.parquet").to_pydict()
    assert [s for n, s in sorted(zip(splits["image"], splits["split"]))] == ["train"] * 8 + ["val"] * 4 + ["test"] * 4
    assert result.card["splits"]["source"].startswith("split files")
    assert all(np.isfinite(r.train_loss) for r in result.metrics)


def test_lamem_split_files_carry_the_scores_and_must_not_overlap(tmp_path, tiny_model):
    """The README's LaMem example: --human train_1.txt with val/test split files whose lines carry the scores."""
    human, images = make_dataset(tmp_path, n=16)
    rows = [line.split(",") for line in human.read_text().splitlines()[1:]]
    parts = {"train": rows[:8], "val": rows[8:12], "test": rows[12:]}
    files = {}
    for split, part in parts.items():
        files[split] = tmp_path / f"{split}_1.txt"
        files[split].write_text("".join(f"{name} {score}\n" for name, score in part))
    split_files = {s: str(f) for s, f in files.items()}
    result = train_model(config_for(tiny_model, files["train"], images, tmp_path / "run", epochs=1, split_files=split_files),
                         log=lambda text: None)
    assert result.card["splits"]["counts"] == {"train": 8, "val": 4, "test": 4}
    assert result.card["data"]["scores_from_split_files"] == 8
    table = pq.read_table(tmp_path / "run" / "splits.parquet").to_pydict()
    assert dict(zip(table["image"], table["human"])) == {name: float(score) for name, score in rows}
    # an image in two split files would be trained and tested on: refused
    files["test"].write_text(files["test"].read_text() + f"{rows[0][0]} {rows[0][1]}\n")
    with pytest.raises(TrainingError, match="more than one split file.*img000.jpg"):
        train_model(config_for(tiny_model, human, images, tmp_path / "run2", epochs=1, split_files=split_files),
                    log=lambda text: None)
    # split files that name none of the images: said so (the images were found)
    (tmp_path / "ghost_train.txt").write_text("ghost1.jpg\nghost2.jpg\n")
    (tmp_path / "ghost_val.txt").write_text("ghost3.jpg\n")
    with pytest.raises(TrainingError, match="none of the 16 images .* is in a split"):
        train_model(config_for(tiny_model, human, images, tmp_path / "run3", epochs=1,
                               split_files={"train": str(tmp_path / "ghost_train.txt"), "val": str(tmp_path / "ghost_val.txt")}),
                    log=lambda text: None)


def test_split_column_is_named_as_the_source(tmp_path, tiny_model):
    human, images = make_dataset(tmp_path, n=12)
    lines = human.read_text().splitlines()
    names = ["train"] * 6 + ["validation"] * 3 + ["test"] * 3
    human.write_text("\n".join([lines[0] + ",split"] + [f"{line},{s}" for line, s in zip(lines[1:], names)]) + "\n")
    result = train_model(config_for(tiny_model, human, images, tmp_path / "run", epochs=1), log=lambda text: None)
    assert result.card["splits"]["counts"] == {"train": 6, "val": 3, "test": 3}
    assert "split column" in result.card["splits"]["source"] and "random" not in result.card["splits"]["source"]


def test_missing_images_and_bad_config_are_clear(tmp_path, tiny_model):
    human, images = make_dataset(tmp_path, n=8)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TrainingError, match="none of the 8 images"):
        train_model(config_for(tiny_model, human, empty, tmp_path / "run"), log=lambda text: None)
    with pytest.raises(TrainingError, match="unknown loss"):
        train_model(config_for(tiny_model, human, images, tmp_path / "run", loss="huber"), log=lambda text: None)
    for bad in ({"lr": -1.0}, {"weight_decay": -0.1}, {"rank_weight": float("nan")}, {"max_images": 0}, {"workers": -1}):
        with pytest.raises(TrainingError, match="must be"):
            train_model(config_for(tiny_model, human, images, tmp_path / "run", **bad), log=lambda text: None)
    a_file = tmp_path / "taken"
    a_file.write_text("not a folder")
    with pytest.raises(TrainingError, match="is a file"):
        train_model(config_for(tiny_model, human, images, a_file), log=lambda text: None)
    (tmp_path / "blocked").mkdir()
    (tmp_path / "blocked" / "inner").write_text("a file where OUT's parent folder should be")
    with pytest.raises(TrainingError, match="cannot write to"):
        train_model(config_for(tiny_model, human, images, tmp_path / "blocked" / "inner" / "run"), log=lambda text: None)
    with pytest.raises(TrainingError, match="nothing to train"):
        train_model(config_for(tiny_model, human, images, tmp_path / "run", freeze=["fc"]), log=lambda text: None)
    with pytest.raises(TrainingError, match="no part 'wings'"):
        train_model(config_for(tiny_model, human, images, tmp_path / "run", freeze=["wings"]), log=lambda text: None)


def test_unreadable_images_are_skipped_named_and_fatal_when_nothing_is_readable(tmp_path, tiny_model):
    human, images = make_dataset(tmp_path)
    (images / "sub" / "img003.jpg").write_bytes(b"not a jpeg")
    (images / "sub" / "img004.jpg").write_bytes((images / "sub" / "img005.jpg").read_bytes()[:300])  # truncated
    logs = []
    result = train_model(config_for(tiny_model, human, images, tmp_path / "run", epochs=1), log=logs.append)
    unreadable = result.card["data"]["unreadable_images"]
    assert unreadable["count"] == 2
    assert sorted(Path(e["file"]).name for e in unreadable["examples"]) == ["img003.jpg", "img004.jpg"]
    assert any("unreadable" in line and "img00" in line for line in logs)
    # nothing readable: an error, not a 'trained' model with train loss 0
    for path in (images / "sub").glob("*.jpg"):
        path.write_bytes(b"junk")
    with pytest.raises(TrainingError, match="none of the 15 training images could be read"):
        train_model(config_for(tiny_model, human, images, tmp_path / "run2", epochs=1), log=lambda text: None)
    assert not (tmp_path / "run2" / "model.pt").exists()


def test_scores_outside_zero_one_are_warned_about(tmp_path, tiny_model):
    """Percent scores (0..100) cannot be fitted by a sigmoid: the log says so, with the reader's own warnings."""
    human, images = make_dataset(tmp_path, n=12)
    lines = human.read_text().splitlines()
    human.write_text("\n".join([lines[0]] + [f"{n},{float(v) * 100:.2f}" for n, v in (l.split(",") for l in lines[1:])]
                               + ["img999.jpg,"]) + "\n")
    logs = []
    train_model(config_for(tiny_model, human, images, tmp_path / "run", epochs=1), log=logs.append)
    assert any("outside [0, 1]" in line and "rescale" in line for line in logs), logs
    assert any("dropped 1 row(s) with a missing" in line for line in logs), logs


def test_duplicate_rows_are_an_error_unless_averaged(tmp_path, tiny_model):
    human, images = make_dataset(tmp_path, n=12)
    human.write_text(human.read_text() + "img000.jpg,0.9000\n")
    with pytest.raises(TrainingError, match="cannot read human data"):
        train_model(config_for(tiny_model, human, images, tmp_path / "run", epochs=1), log=lambda text: None)
    train_model(config_for(tiny_model, human, images, tmp_path / "run", epochs=1, duplicates="mean"), log=lambda text: None)
    splits = pq.read_table(tmp_path / "run" / "splits.parquet").to_pydict()
    assert splits["image"].count("img000.jpg") == 1
    assert splits["human"][splits["image"].index("img000.jpg")] == pytest.approx((0.35 + 0.9) / 2)


def test_train_flow_takes_every_config_field():
    import inspect

    from prefect.utilities.callables import parameter_schema

    from memscore.flows.train import train

    assert list(inspect.signature(train.fn).parameters) == ["config"]  # one object: TrainConfig
    schema = parameter_schema(train).model_dump_for_openapi()
    parameters = schema["definitions"]["TrainConfig"]["properties"]
    for name, info in TrainConfig.model_fields.items():
        assert name in parameters, name
        assert parameters[name].get("description"), name
        if not info.is_required():
            assert parameters[name]["default"] == info.default, name
    assert parameters["loss"]["enum"] == ["mse", "rank"] and parameters["optimizer"]["enum"] == ["adamw", "adam", "sgd"]


def test_cli_errors_are_one_line(tmp_path, capsys):
    from memscore.flows.cli import main

    assert main(["train", "--model", "nope", "--human", "x.csv", "--images", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    assert "unknown model" in capsys.readouterr().err
    assert main(["train", "--model", "m3m", "--human", "x.csv", "--images", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--split-file", "holdout=x.txt"]) == 1
    assert "--split-file wants SPLIT=PATH" in capsys.readouterr().err
    assert main(["compare", "m3m", "--images", str(tmp_path), "--human", str(tmp_path / "missing.csv")]) == 1
    assert "memscore: error:" in capsys.readouterr().err


@pytest.mark.slow
def test_train_memnet_cli_then_score_and_compare_with_the_checkpoint(tmp_path, capsys):
    """memscore train (Prefect flow) -> memscore score --weights model.pt -> the usual Parquet -> memscore compare."""
    from memscore.flows.cli import main

    human, images = make_dataset(tmp_path, n=12)
    out = tmp_path / "run"
    code = main(["train", "--model", "memnet-baseline", "--human", str(human), "--images", str(images), "--out", str(out),
                 "--init", "random", "--epochs", "1", "--batch-size", "4", "--val-fraction", "0.25",
                 "--test-fraction", "0.25", "--freeze", "alexnet", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["epochs_run"] == 1 and summary["weights_digest"].startswith("sha256:")
    card = json.loads((out / "model_card.json").read_text())
    assert card["frozen"] == ["conv1", "conv2", "conv3", "conv4", "conv5"]

    dest = tmp_path / "scores"
    assert main(["score", str(images), "--out", str(dest), "--model", "memnet-baseline", "--weights", str(out / "model.pt"),
                 "--workers", "0", "--no-progress", "--features", "fc7"]) == 0
    table = pq.read_table(sorted((dest / "scores").glob("*.parquet")))
    assert table.num_rows == 12
    assert set(table.column("model").to_pylist()) == {"memnet-baseline"}
    assert set(table.column("weights").to_pylist()) == {summary["weights_digest"]}
    assert table.schema.field("feat_fc7").type.list_size == 4096
    scores = np.array(table.column("score").to_pylist())
    assert np.all((scores > 0) & (scores < 1))

    capsys.readouterr()
    assert main(["compare", str(out), "--json", "--bootstrap", "50"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["architecture"] == "memnet-baseline" and rows[0]["test_images"] == 3
    assert rows[0]["parameters"] == 56_258_881 and rows[0]["test_images_seen_in_training"] == 0


@pytest.mark.slow
def test_train_m3m_briefly_and_score_with_its_checkpoint(tmp_path):
    """M3M (random init, no downloads): one short epoch, then the registry loads model.pt for scoring."""
    from memscore.models.registry import load_model

    human, images = make_dataset(tmp_path, n=6)
    out = tmp_path / "run"
    result = train_model(config_for("m3m", human, images, out, epochs=1, batch_size=2, val_fraction=0.34, test_fraction=0.0,
                                    lr=1e-4), log=lambda text: None)
    assert result.parameters == 139_176_907
    assert result.trainable_parameters < result.parameters  # segmenter and ResNet-152 frozen
    loaded = load_model("m3m", str(out / "model.pt"))
    assert loaded.weights.digest == result.weights_digest
    image = Image.open(next((images / "sub").glob("*.jpg")))
    x = resmem_transform(image).unsqueeze(0).float() / 255
    with torch.inference_mode():
        score, feats = loaded.module.forward_features(x, ["segmentation", "fc11"])
    assert score.shape == (1,) and 0 <= float(score) <= 1  # random init may saturate the sigmoid
    saved = torch.load(out / "model.pt", weights_only=True)["model"]
    torch.testing.assert_close(loaded.module.fc6.weight, saved["fc6.weight"])
    torch.testing.assert_close(loaded.module.seg_conv1.weight, saved["seg_conv1.weight"])
    assert feats["segmentation"].shape == (1, 1024) and feats["fc11"].shape == (1, 256)


def test_training_with_decode_workers(tmp_path, tiny_model):
    """Loaders with workers (forked from the scoring path's forkserver) train like in-process loading."""
    human, images = make_dataset(tmp_path, n=16)
    in_process = train_model(config_for(tiny_model, human, images, tmp_path / "w0", epochs=2, augment=False),
                             log=lambda text: None)
    with_workers = train_model(config_for(tiny_model, human, images, tmp_path / "w1", epochs=2, augment=False, workers=1),
                               log=lambda text: None)
    assert [r.train_images for r in with_workers.metrics] == [r.train_images for r in in_process.metrics]
    assert [r.val_spearman for r in with_workers.metrics] == pytest.approx([r.val_spearman for r in in_process.metrics])
    assert with_workers.test["images"] == in_process.test["images"]


@pytest.mark.slow
def test_cli_data_and_weights_errors_inside_the_flow_are_one_line(tmp_path, capfd):
    """Errors found once the flow runs (images, split files, weights files) print one line, no traceback."""
    from memscore.flows.cli import main

    human, images = make_dataset(tmp_path, n=8)
    empty = tmp_path / "empty"
    empty.mkdir()
    base = ["train", "--model", "memnet-baseline", "--human", str(human), "--epochs", "1", "--val-fraction", "0.25"]
    cases = [
        (base + ["--images", str(empty), "--out", str(tmp_path / "o1"), "--init", "random"], "none of the 8 images"),
        (base + ["--images", str(images), "--out", str(tmp_path / "o2"), "--init", "random",
                 "--split-file", f"train={tmp_path / 'nope.txt'}"], "cannot read split file"),
        (base + ["--images", str(images), "--out", str(tmp_path / "o3"), "--resmem-weights", str(human)],
         "not a PyTorch state dict"),
    ]
    for argv, message in cases:
        assert main(argv) == 1
        err = capfd.readouterr().err
        assert f"memscore: error: " in err and message in err, err[-2000:]
        assert "Traceback" not in err, err[-3000:]


def test_compare_runs_given_as_uris_and_bad_run_paths(tmp_path, tiny_model, capsys):
    """compare takes training folders in buckets (model.pt fetched) and file:// URIs; bad paths are one line."""
    import fsspec

    from memscore.flows.cli import main

    human, images = make_dataset(tmp_path)
    local = tmp_path / "run"
    bucket = "memory://memscore-compare-test/run"
    try:
        first = train_model(config_for(tiny_model, human, images, local, epochs=1), log=lambda text: None)
        second = train_model(config_for(tiny_model, human, images, bucket, epochs=1), log=lambda text: None)
        capsys.readouterr()
        assert main(["compare", local.as_uri(), bucket, "--json", "--bootstrap", "20", "--workers", "0"]) == 0
        rows = json.loads(capsys.readouterr().out)
        assert [r["weights"] for r in rows] == [first.weights_digest, second.weights_digest]
        assert rows[0]["model"] != rows[1]["model"]  # both folders are called 'run': labelled by their full path
        # the second row: its Spearman minus the first's, with a paired interval (same images, same draws)
        assert rows[0]["spearman_diff_vs_first"] is None
        diff = rows[1]["spearman_diff_vs_first"]
        if rows[0]["test_spearman"] is not None and rows[1]["test_spearman"] is not None:
            assert diff == pytest.approx(rows[1]["test_spearman"] - rows[0]["test_spearman"], abs=1e-9)
        assert all(r["test_images"] == first.test["images"] and r["test_images_seen_in_training"] == 0 for r in rows)
    finally:
        fsspec.filesystem("memory").rm("/memscore-compare-test", recursive=True)
    assert main(["compare", str(local), "--split-from", str(tmp_path / "no-such-run")]) == 1
    assert "memscore: error: cannot read" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "no-such-run"), "--human", str(human), "--images", str(images)]) == 1
    assert "neither a training folder" in capsys.readouterr().err
    assert main(["compare", str(local), "--images", str(tmp_path / "no-such-folder")]) == 1
    assert "memscore: error:" in capsys.readouterr().err
    # a checkpoint trained as one model, given as another of the same shape (resmem vs resmem-retrain): refused
    torch.save({"model": torch.load(local / "model.pt", weights_only=True)["model"],
                "memscore": {"model": "resmem-retrain"}}, tmp_path / "other.pt")
    assert main(["compare", f"{tiny_model}={tmp_path / 'other.pt'}", "--human", str(human), "--images", str(images)]) == 1
    assert "holds 'resmem-retrain' weights" in capsys.readouterr().err
    assert main(["compare", f"{tiny_model}={human}", "--human", str(human), "--images", str(images), "--bootstrap", "10"]) == 1
    assert "are not a PyTorch state dict" in capsys.readouterr().err  # a CSV given as weights: one line
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(["compare", str(local), "--bootstrap", "10", "--out", str(blocker / "table.parquet")]) == 1
    captured = capsys.readouterr()
    assert "memscore: error: cannot write" in captured.err and "test Spearman" in captured.out  # the table is still shown
    assert main(["compare", str(local), "--bootstrap", "10", "--out", str(tmp_path / "table.csv")]) == 0
    assert (tmp_path / "table.csv").read_text().startswith('"model"')


def test_compare_storage_options_are_passed_not_remembered(tmp_path, capsys, monkeypatch):
    """--storage-options reach every read of a run in a bucket, and compare's functions take them
    as an argument: options given to one compare do not linger for the next caller in the process."""
    import sys

    from fsspec.implementations.memory import MemoryFileSystem

    from memscore.flows import compare_cli
    from memscore.flows.cli import UserError, main

    class TokenMemory(MemoryFileSystem):
        """A bucket that refuses to open without its token (as s3 without credentials)."""

        protocol = "tokenmem"
        store: dict = {}
        pseudo_dirs = [""]

        def __init__(self, token=None, **kwargs):
            if token != "secret":
                raise PermissionError("tokenmem: no or wrong token")
            super().__init__(**kwargs)

        @classmethod
        def _strip_protocol(cls, path):
            return super()._strip_protocol(str(path).removeprefix("tokenmem://"))

    monkeypatch.setitem(sys.modules["fsspec.registry"]._registry, "tokenmem", TokenMemory)
    fs = TokenMemory(token="secret")
    fs.pipe_file("/lab/run/model_card.json", json.dumps({"model": "resmem", "data": {"images": "x"}}).encode())
    fs.pipe_file("/lab/run/model.pt", b"weights bytes")
    options = {"token": "secret"}
    try:
        # the CLI: the run in the bucket is read with the options (it fails later, on the images)
        code = main(["compare", "tokenmem://lab/run", "--human", str(tmp_path / "h.csv"),
                     "--images", str(tmp_path / "no-such-images"), "--storage-options", json.dumps(options)])
        assert code == 1
        err = capsys.readouterr().err
        assert "memscore: error:" in err and "tokenmem" not in err, err
        # a program calling compare's functions afterwards passes its own options ...
        [candidate] = compare_cli.parse_candidates(["tokenmem://lab/run"], options)
        assert (candidate.model, candidate.run, candidate.weights) == ("resmem", "tokenmem://lab/run", "tokenmem://lab/run/model.pt")
        copied = compare_cli.local_weights_file("tokenmem://lab/run", str(tmp_path), options)
        assert Path(copied).read_bytes() == b"weights bytes"
        # ... and without them the bucket refuses: nothing left over from the CLI call above
        with pytest.raises(UserError, match="neither a training folder"):
            compare_cli.parse_candidates(["tokenmem://lab/run"])
        with pytest.raises(UserError, match="cannot fetch weights"):
            compare_cli.local_weights_file("tokenmem://lab/run/model.pt", str(tmp_path))
        # the table written by --out goes through the same options
        import pyarrow as pa

        table = pa.table({"model": ["resmem"], "test_spearman": [0.5]})
        compare_cli.write_table(table, "tokenmem://lab/out/comparison.csv", options)
        assert fs.cat_file("/lab/out/comparison.csv").decode().splitlines()[1] == '"resmem",0.5'
        with pytest.raises(PermissionError):
            compare_cli.write_table(table, "tokenmem://lab/out/again.csv")
    finally:
        TokenMemory.store.clear()
        TokenMemory.clear_instance_cache()


def _out_files(out) -> dict[str, bytes]:
    """Every file under a local or memory:// OUT, by relative path."""
    import fsspec

    if str(out).startswith("memory://"):
        fs, root = fsspec.filesystem("memory"), str(out).removeprefix("memory:/")
        return {path[len(root) + 1:]: fs.cat_file(path) for path in fs.find(root)}
    return {str(p.relative_to(out)): p.read_bytes() for p in Path(out).rglob("*") if p.is_file()}


def _weights_state(out) -> tuple[str | None, str, str, int, int | None]:
    """(the card's weights digest, sha256 of model.pt, the checkpoint's best digest, the checkpoint's
    epoch, the card's best epoch), read as a user or a resumed run would."""
    import hashlib
    import io

    files = _out_files(out)
    card = json.loads(files["model_card.json"])
    checkpoint = torch.load(io.BytesIO(files["checkpoints/last.pt"]), weights_only=True)["memscore"]
    return (card["weights"]["digest"], "sha256:" + hashlib.sha256(files["model.pt"]).hexdigest(),
            checkpoint["best_digest"], checkpoint["epoch"], card["weights"]["best_epoch"])


@pytest.mark.parametrize("where", ["local", "bucket"])
def test_kill_at_any_write_keeps_weights_and_card_consistent(tmp_path, tiny_model, monkeypatch, where):
    """A run killed just before any file of its second epoch (a new best) or of its end lands, then
    run again with the same command: model.pt, the card's weights digest and the checkpoint agree.
    Right after the kill, model.pt and the card still agree, or the checkpoint already records
    model.pt's digest (the next run then rewrites the card before anything else). The rerun's
    epoch 2 is made worse than the killed one's (as on a GPU, where reruns need not be bitwise the
    same), so the old weights must still be there when the killed epoch does not count."""
    import itertools
    import os
    import sys
    import types

    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem

    import memscore.tasks.train as train_module
    from memscore.storage import atomic

    human, images = make_dataset(tmp_path)
    real_spearman = train_module.spearman
    rhos = iter(())

    def validation_spearman(a, b):  # epoch-by-epoch validation values of our choosing
        if sys._getframe(1).f_code.co_name == "evaluate":  # validation (the test split is scored elsewhere)
            return next(rhos)
        return real_spearman(a, b)

    monkeypatch.setattr(train_module, "spearman", validation_spearman)
    armed, writes, kill_at = False, 0, 0

    def maybe_kill(target: str) -> None:
        nonlocal writes
        if armed:
            writes += 1
            if writes == kill_at:
                raise Killed(f"killed before {target} landed")

    real_replace = os.replace
    fake_os = types.ModuleType("os")
    fake_os.__dict__.update(os.__dict__)
    fake_os.replace = lambda src, dst: (maybe_kill(str(dst)), real_replace(src, dst))[1]
    monkeypatch.setattr(atomic, "os", fake_os)  # every local file of a run lands by a rename there
    real_pipe, real_mv = MemoryFileSystem.pipe_file, MemoryFileSystem.mv
    monkeypatch.setattr(MemoryFileSystem, "pipe_file",  # in a bucket, by a PUT or a server-side move
                        lambda self, path, *a, **k: (maybe_kill(path), real_pipe(self, path, *a, **k))[1])
    monkeypatch.setattr(MemoryFileSystem, "mv",
                        lambda self, src, dst, *a, **k: (maybe_kill(dst), real_mv(self, src, dst, *a, **k))[1])

    def arm_after_epoch_one(row, history):
        nonlocal armed
        armed = armed or row.epoch == 1

    clean, repairs = None, set()
    try:
        for kill_at in itertools.count(1):
            out = tmp_path / f"run{kill_at}" if where == "local" else f"memory://memscore-kill-test/run{kill_at}"
            config = config_for(tiny_model, human, images, out, epochs=2)
            armed, writes, rhos = False, 0, iter([0.5, 0.6])
            try:
                clean = train_model(config, on_epoch=arm_after_epoch_one, log=lambda text: None)
            except Killed:
                pass
            else:
                assert clean.best_epoch == 2
                break
            armed = False
            card_digest, on_disk, committed, _, _ = _weights_state(out)
            assert card_digest == on_disk or on_disk == committed, f"killed at write {kill_at}"
            rhos = itertools.repeat(0.4)  # the rerun's epoch 2, if it runs, is no new best
            logs = []
            result = train_model(config, log=logs.append)
            card_digest, on_disk, committed, epoch, card_epoch = _weights_state(out)
            assert card_digest == on_disk == committed == result.weights_digest, (kill_at, logs)
            assert epoch == 2 and card_epoch == result.best_epoch and result.best_epoch in (1, 2), kill_at
            assert json.loads(_out_files(out)["model_card.json"])["finished"] is True
            assert set(_out_files(out)) == {"model.pt", "model_card.json", "metrics.parquet", "splits.parquet",
                                            "checkpoints/last.pt", "test_predictions.parquet"}, kill_at
            repairs.update(word for line in logs for word in ("committed but not exported", "rewrote", "removed the weights")
                           if word in line)
        assert kill_at > 6  # every write of epoch 2 and of the end was a kill point
        # the reruns met each half-done state: weights staged but not committed, committed but not
        # renamed to model.pt, renamed but the card not yet rewritten
        assert repairs == {"committed but not exported", "rewrote", "removed the weights"}
    finally:
        if fsspec.filesystem("memory").exists("/memscore-kill-test"):
            fsspec.filesystem("memory").rm("/memscore-kill-test", recursive=True)


def test_a_malicious_checkpoint_in_out_is_refused_in_one_line(tmp_path, tiny_model):
    """A checkpoints/last.pt whose pickle would run code is never executed: one-line TrainingError,
    naming the file and the blocked call, without torch's advice to load it unsafely."""
    import io

    class Payload:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    human, images = make_dataset(tmp_path)
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    buffer = io.BytesIO()
    torch.save({"format": "memscore-checkpoint/1", "payload": Payload()}, buffer)
    (out / "checkpoints" / "last.pt").write_bytes(buffer.getvalue())
    with pytest.raises(TrainingError) as caught:
        train_model(config_for(tiny_model, human, images, out, epochs=1), log=lambda text: None)
    message = str(caught.value)
    assert "\n" not in message
    assert str(out / "checkpoints" / "last.pt") in message and "posix.system" in message
    assert "weights_only" not in message and "False" not in message
    assert not (tmp_path / "pwned").exists()
