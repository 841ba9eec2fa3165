"""Learning check without human data: distil the official ResMem into memnet-baseline.

1. Make a few hundred varied crops (position, scale, flips, brightness, contrast)
   of the real photos scikit-image ships, in a folder.
2. Label every crop with the official ResMem's score (the published weights): the
   "human data" of this check is ResMem's opinion.
3. Train memnet-baseline with ``tasks.train.train_model`` (the same code as
   ``memscore train``) on those labels. The split is by source photo: the
   validation and test crops come from photos that no training crop comes from,
   so the model cannot pass by recognising a photo it has seen.
4. Print per-epoch train loss, validation loss and validation Spearman, and the
   test Spearman with its bootstrap interval, next to what chance gives (a 95%
   band of Spearman under shuffled labels for the validation size).

What it shows: the training loop, data path, loss and optimiser make a model
learn an image-to-memorability-score mapping that transfers to unseen photos.
What it does not show: agreement with human memory (the target is ResMem, not
people), performance on LaMem or any real archive, or how well M3M or
resmem-retrain train (their ResNet-152 is too slow on a small CPU for this).

Run:  python benchmarks/bench_distill.py [--work DIR] [--per-photo 24] [--epochs 20] [--lr 1e-3] [--loss mse|rank]
Labels are cached in DIR/labels.csv, so a second run only trains.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PHOTOS = (
    "astronaut", "brick", "camera", "cat", "coffee", "coins", "colorwheel", "grass", "gravel",
    "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina", "rocket", "text", "clock",
    "cell", "stereo_motorcycle", "logo",
)


def make_crops(folder: Path, per_photo: int, seed: int) -> dict[str, str]:
    """Write ``per_photo`` random crops of each available photo; return {file name: photo}."""
    import skimage.data
    from PIL import Image, ImageEnhance

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    source: dict[str, str] = {}
    for photo in PHOTOS:
        try:
            array = getattr(skimage.data, photo)()
        except Exception:  # noqa: BLE001 - not shipped with this scikit-image (needs a download)
            continue
        if isinstance(array, tuple):
            array = array[0]
        image = Image.fromarray(array).convert("RGB")
        w, h = image.size
        for k in range(per_photo):
            side = int(min(w, h) * rng.uniform(0.35, 1.0))
            x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
            crop = image.crop((x, y, x + side, y + side)).resize((192, 192))
            if rng.random() < 0.5:
                crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            crop = ImageEnhance.Brightness(crop).enhance(rng.uniform(0.6, 1.4))
            crop = ImageEnhance.Contrast(crop).enhance(rng.uniform(0.6, 1.4))
            name = f"{photo}-{k:03d}.jpg"
            crop.save(folder / name, quality=90)
            source[name] = photo
    return source


def label_with_resmem(folder: Path, names: list[str], batch: int = 16) -> dict[str, float]:
    """The official ResMem's scores (published weights, reference preprocessing)."""
    import torch
    from PIL import Image

    from memscore.models.preprocess import to_model_input
    from memscore.models.registry import load_model

    model = load_model("resmem", None, "cpu")
    scores: dict[str, float] = {}
    started = time.perf_counter()
    for i in range(0, len(names), batch):
        chunk = names[i:i + batch]
        pixels = torch.stack([model.spec.preprocess(Image.open(folder / n)) for n in chunk])
        with torch.inference_mode():
            out = model.module(to_model_input(pixels))
        scores.update(zip(chunk, out.tolist()))
        print(f"  labelled {len(scores)}/{len(names)} ({len(scores) / (time.perf_counter() - started):.2f} images/s)", flush=True)
    return scores


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/memscore-distill", help="working folder (images, labels, run)")
    parser.add_argument("--per-photo", type=int, default=24, help="crops per source photo (default 24)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-photos", type=int, default=4)
    parser.add_argument("--test-photos", type=int, default=4)
    parser.add_argument("--loss", choices=("mse", "rank"), default="mse")
    parser.add_argument("--train-branch", action="store_true", help="also train conv1..conv5 (default: frozen)")
    parser.add_argument("--out", default=None, help="training OUT (default: WORK/run-LOSS)")
    args = parser.parse_args()

    import torch

    from memscore.tasks.train import TrainConfig, train_model

    torch.manual_seed(args.seed)
    work = Path(args.work)
    images = work / "images"
    labels_file = work / "labels.csv"
    if labels_file.is_file():
        rows = list(csv.DictReader(labels_file.open()))
        source = {r["image"]: r["photo"] for r in rows}
        print(f"using cached labels: {labels_file} ({len(rows)} images)")
    else:
        t = time.perf_counter()
        source = make_crops(images, args.per_photo, args.seed)
        print(f"wrote {len(source)} crops of {len(set(source.values()))} photos in {time.perf_counter() - t:.1f} s; labelling with ResMem")
        scores = label_with_resmem(images, sorted(source))
        with labels_file.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image", "score", "photo"])
            for name in sorted(source):
                writer.writerow([name, f"{scores[name]:.6f}", source[name]])
        rows = list(csv.DictReader(labels_file.open()))
    values = np.array([float(r["score"]) for r in rows])
    print(f"ResMem labels: mean {values.mean():.3f}, sd {values.std():.3f}, min {values.min():.3f}, max {values.max():.3f}")

    photos = sorted(set(source.values()))
    rng = np.random.default_rng(args.seed)
    rng.shuffle(photos)
    groups = {"test": photos[:args.test_photos], "val": photos[args.test_photos:args.test_photos + args.val_photos],
              "train": photos[args.test_photos + args.val_photos:]}
    split_files = {}
    for split, members in groups.items():
        path = work / f"{split}.txt"
        path.write_text("".join(f"{r['image']} {r['score']}\n" for r in rows if r["photo"] in members))
        split_files[split] = str(path)
        print(f"{split}: photos {', '.join(members)}")
    n_val = sum(1 for r in rows if r["photo"] in groups["val"])
    print(f"chance: |Spearman| below about {1.96 / np.sqrt(n_val - 1):.3f} for {n_val} validation images (95% under shuffled labels)")

    config = TrainConfig(
        model="memnet-baseline", human=str(labels_file), images=str(images), out=args.out or str(work / f"run-{args.loss}"),
        split_files=split_files, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, patience=args.epochs,
        freeze=[] if args.train_branch else ["alexnet"], seed=args.seed, resume=False, device="cpu", loss=args.loss,
    )
    started = time.perf_counter()
    result = train_model(config)
    print(f"trained in {time.perf_counter() - started:.0f} s")
    print("epoch  train_loss  val_loss   val_spearman")
    for row in result.metrics:
        print(f"{row.epoch:5d}  {row.train_loss:10.5f}  {row.val_loss:8.5f}  {row.val_spearman:12.4f}")
    if result.test:
        low, high = result.test["spearman_ci95"]
        print(f"test: Spearman {result.test['spearman']:.4f} [95% CI {low:.3f}, {high:.3f}] on {result.test['images']} "
              f"crops of unseen photos; MSE {result.test['mse']:.5f}")
        import pyarrow.parquet as pq

        from memscore.tasks.train import spearman

        preds = pq.read_table(Path(config.out) / "test_predictions.parquet").to_pydict()
        by_photo: dict[str, tuple[list[float], list[float]]] = {}
        for image, human, predicted in zip(preds["image"], preds["human"], preds["predicted"]):
            pair = by_photo.setdefault(source[image], ([], []))
            pair[0].append(predicted)
            pair[1].append(human)
        within = {photo: spearman(np.array(p), np.array(h)) for photo, (p, h) in by_photo.items()}
        print("test, within each unseen photo (crops of one photo ranked against each other): "
              + ", ".join(f"{photo} {rho:.3f}" for photo, rho in sorted(within.items()))
              + f"; mean {np.nanmean(list(within.values())):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
