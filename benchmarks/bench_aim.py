"""Does the AiM memory help? ResNet-18 with and without it, same data, budget and seeds (issue 18).

The post (docs/aim.md) reports ResNet-50 on Stanford Dogs: 15.1% test accuracy without
memory, 20.1% with it, one run each, different stopping epochs. This reruns the
comparison on what a 2-core CPU and offline data allow:

- ``digits``: scikit-learn's bundled handwritten digits (1,797 images, 10 classes), 8x8
  greyscale upsampled to 32x32 RGB; a fixed stratified 60/20/20 split (seed 0).
  Cross-entropy; the metric is test accuracy.
- ``distill``: the memorability distillation set of ``bench_distill.py`` (crops of the
  scikit-image photos labelled with the official ResMem's score), resized to 32x32; the
  split is by source photo as there (4 test photos, 4 validation, the rest train). MSE on
  a sigmoid output; the metric is test Spearman.

Arms: ``nomem`` (torchvision ResNet-18, the forward of :class:`AiMResNet` without memory)
and ``aim`` (the same network, same initial weights for every shared tensor, plus a
16x2x2 memory: the layout gives 1, 4, 16, 64 memory channels at the 8, 4, 2, 1-pixel
maps; +~5% parameters, like the registered aim-resnet18); ``aim-kaiming`` (optional):
memory channels of the first convolutions drawn like the others instead of zero.
Every run: the same split, the same seed for initial weights and batch order per seed,
Adam (lr 1e-3), batch 32, the same number of epochs; the test metric at the epoch with
the best validation metric (and at the last epoch). Each run is its own process, so
its peak resident memory (``ru_maxrss``) is its own; seconds per epoch are training
passes only (evaluation excluded), wall-clock and CPU time (``process_time``; one thread,
so it is the compute the pass needed, less disturbed by other processes on a shared machine).

Run:  OMP_NUM_THREADS=1 python benchmarks/bench_aim.py --json benchmarks/aim-results-cpu.json
      [--seeds 0,1,2] [--tasks digits,distill] [--arms nomem,aim,aim-kaiming] [--epochs-digits 3]
      [--epochs-distill 20] [--per-photo 10]
The distillation labels are made once (ResMem on the CPU; 200 crops took 771 s
on the shared 2-core machine) and cached in ``--work`` (default /tmp/memscore-aim-distill;
10 crops per photo instead of bench_distill.py's 24, to fit the time).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

SIZE = 32
MEMORY = (16, 2, 2)


def digits_data() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{split: (images [N, 3, 32, 32] float32 in [0, 1], labels int64)}, fixed stratified 60/20/20 split."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False).clamp(0, 1).repeat(1, 3, 1, 1).numpy()
    y = digits.target.astype(np.int64)
    index = np.arange(len(y))
    train, rest = train_test_split(index, test_size=0.4, stratify=y, random_state=0)
    val, test = train_test_split(rest, test_size=0.5, stratify=y[rest], random_state=0)
    return {"train": (x[train], y[train]), "val": (x[val], y[val]), "test": (x[test], y[test])}


def distill_labels(work: Path, per_photo: int) -> list[dict[str, str]]:
    """bench_distill.py's crops and ResMem labels (made and cached in ``work`` if missing)."""
    from bench_distill import label_with_resmem, make_crops

    labels = work / "labels.csv"
    if not labels.is_file():
        source = make_crops(work / "images", per_photo, 0)
        scores = label_with_resmem(work / "images", sorted(source))
        with labels.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image", "score", "photo"])
            for name in sorted(source):
                writer.writerow([name, f"{scores[name]:.6f}", source[name]])
    return list(csv.DictReader(labels.open()))


def distill_data(work: Path, per_photo: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{split: (images [N, 3, 32, 32] in [0, 1], ResMem scores float32)}, split by photo as bench_distill (seed 0)."""
    from PIL import Image

    rows = distill_labels(work, per_photo)
    photos = sorted({r["photo"] for r in rows})
    np.random.default_rng(0).shuffle(photos)
    groups = {"test": set(photos[:4]), "val": set(photos[4:8]), "train": set(photos[8:])}
    data = {}
    for split, members in groups.items():
        chosen = [r for r in rows if r["photo"] in members]
        x = np.stack([np.asarray(Image.open(work / "images" / r["image"]).convert("RGB").resize((SIZE, SIZE), Image.BILINEAR),
                                 np.float32).transpose(2, 0, 1) / 255.0 for r in chosen])
        data[split] = (x.astype(np.float32), np.array([float(r["score"]) for r in chosen], np.float32))
    return data


def build(arm: str, task: str, seed: int):
    """The network of ``arm``; every tensor it shares with ``nomem`` has the same initial value for a seed."""
    import torch
    import torchvision.models as tvm

    from memscore.models.aim import AiMResNet

    torch.manual_seed(seed)
    resnet = tvm.resnet18(weights=None, num_classes=10 if task == "digits" else 1)
    if arm == "nomem":
        return AiMResNet(resnet, None, SIZE)
    return AiMResNet(resnet, MEMORY, SIZE, memory_weight_init="kaiming" if arm == "aim-kaiming" else "zeros")


def run_one(task: str, arm: str, seed: int, epochs: int, work: Path, per_photo: int) -> dict:
    """One training run in this process; returns its metrics."""
    import torch
    from scipy.stats import spearmanr

    torch.set_num_threads(1)
    data = digits_data() if task == "digits" else distill_data(work, per_photo)
    tensors = {split: (torch.from_numpy(x), torch.from_numpy(y)) for split, (x, y) in data.items()}
    model = build(arm, task, seed)
    parameters = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)

    def normalise(x: torch.Tensor) -> torch.Tensor:
        return (x - 0.5) / 0.25

    def loss_of(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if task == "digits":
            return torch.nn.functional.cross_entropy(out, y)
        return torch.nn.functional.mse_loss(torch.sigmoid(out.squeeze(1)), y)

    @torch.no_grad()
    def metric(split: str) -> float:
        model.eval()
        x, y = tensors[split]
        out = torch.cat([model(normalise(x[i:i + 256])) for i in range(0, len(x), 256)])
        if task == "digits":
            return float((out.argmax(1) == y).float().mean())
        return float(spearmanr(out.squeeze(1).numpy(), y.numpy())[0])

    history = []
    x_train, y_train = tensors["train"]
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        started, cpu_started = time.perf_counter(), time.process_time()
        total = 0.0
        for i in range(0, len(order), 32):
            batch = order[i:i + 32]
            loss = loss_of(model(normalise(x_train[batch])), y_train[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        history.append({"epoch": epoch, "train_loss": total / len(order), "seconds": seconds, "cpu_seconds": cpu_seconds,
                        "val": metric("val"), "test": metric("test"),
                        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
    best = max(history, key=lambda row: (row["val"], -row["epoch"]))
    return {"task": task, "arm": arm, "seed": seed, "epochs": epochs, "parameters": parameters,
            "train_images": len(x_train), "best_epoch": best["epoch"], "test_at_best_val": best["test"],
            "test_last": history[-1]["test"], "seconds_per_epoch": float(np.mean([r["seconds"] for r in history])),
            "cpu_seconds_per_epoch": float(np.mean([r["cpu_seconds"] for r in history])),
            "peak_rss_mib": history[-1]["peak_rss_mib"], "history": history}


def summarise(runs: list[dict]) -> list[dict]:
    """Mean and sample SD over seeds per (task, arm), and the paired difference aim - nomem per seed."""
    rows = []
    for task in dict.fromkeys(r["task"] for r in runs):
        base = {r["seed"]: r for r in runs if r["task"] == task and r["arm"] == "nomem"}
        for arm in dict.fromkeys(r["arm"] for r in runs if r["task"] == task):
            chosen = [r for r in runs if r["task"] == task and r["arm"] == arm]

            def stats(key: str) -> tuple[float, float]:
                values = np.array([r[key] for r in chosen], float)
                return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else float("nan")

            row = {"task": task, "arm": arm, "seeds": [r["seed"] for r in chosen], "parameters": chosen[0]["parameters"]}
            for key in ("test_at_best_val", "test_last", "seconds_per_epoch", "cpu_seconds_per_epoch", "peak_rss_mib"):
                row[key + "_mean"], row[key + "_sd"] = stats(key)
            if arm != "nomem" and base:
                diffs = np.array([r["test_at_best_val"] - base[r["seed"]]["test_at_best_val"] for r in chosen
                                  if r["seed"] in base])
                row["paired_diff_mean"] = float(diffs.mean())
                row["paired_diff_sd"] = float(diffs.std(ddof=1)) if len(diffs) > 1 else float("nan")
                row["paired_diffs"] = [float(d) for d in diffs]
            rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--tasks", default="digits,distill")
    parser.add_argument("--arms", default="nomem,aim")
    parser.add_argument("--epochs-digits", type=int, default=3)
    parser.add_argument("--epochs-distill", type=int, default=20)
    parser.add_argument("--work", default="/tmp/memscore-aim-distill")
    parser.add_argument("--per-photo", type=int, default=10)
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--run-one", default=None, help=argparse.SUPPRESS)  # internal: task,arm,seed,epochs
    args = parser.parse_args()
    work = Path(args.work)
    if args.run_one:
        task, arm, seed, epochs = args.run_one.split(",")
        print("RESULT " + json.dumps(run_one(task, arm, int(seed), int(epochs), work, args.per_photo)))
        return 0

    started = time.perf_counter()
    if "distill" in args.tasks:
        t = time.perf_counter()
        distill_labels(work, args.per_photo)  # once, before the timed runs
        print(f"distillation labels ready in {time.perf_counter() - t:.0f} s ({work / 'labels.csv'})", flush=True)
    runs = []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for task in args.tasks.split(","):
        epochs = args.epochs_digits if task == "digits" else args.epochs_distill
        for seed in (int(s) for s in args.seeds.split(",")):
            for arm in args.arms.split(","):  # arms alternate, so machine drift hits both alike
                out = subprocess.run([sys.executable, __file__, "--run-one", f"{task},{arm},{seed},{epochs}",
                                      "--work", str(work), "--per-photo", str(args.per_photo)],
                                     env=env, capture_output=True, text=True, check=True).stdout
                result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
                runs.append(result)
                print(f"{task:8s} {arm:12s} seed {seed}: test {result['test_at_best_val']:.4f} (best val epoch "
                      f"{result['best_epoch']}), last {result['test_last']:.4f}, {result['seconds_per_epoch']:.1f} s/epoch "
                      f"({result['cpu_seconds_per_epoch']:.1f} s CPU), "
                      f"peak RSS {result['peak_rss_mib']:.0f} MiB", flush=True)
    summary = summarise(runs)
    print("\ntask     arm          params      test (best val) mean +- sd   test (last)        s/epoch      CPU s/epoch   peak RSS MiB   aim - nomem (paired)")
    for row in summary:
        diff = (f"{row['paired_diff_mean']:+.4f} +- {row['paired_diff_sd']:.4f}" if "paired_diff_mean" in row else "")
        print(f"{row['task']:8s} {row['arm']:12s} {row['parameters']:>10,d}  {row['test_at_best_val_mean']:.4f} +- "
              f"{row['test_at_best_val_sd']:.4f}        {row['test_last_mean']:.4f} +- {row['test_last_sd']:.4f}  "
              f"{row['seconds_per_epoch_mean']:5.1f} +- {row['seconds_per_epoch_sd']:.1f}  "
              f"{row['cpu_seconds_per_epoch_mean']:5.1f} +- {row['cpu_seconds_per_epoch_sd']:.1f}  {row['peak_rss_mib_mean']:6.0f}"
              f"         {diff}")
    total = time.perf_counter() - started
    print(f"\ntotal {total:.0f} s")
    if args.json:
        import torch

        Path(args.json).write_text(json.dumps({
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU(s) shared, {platform.platform()}",
            "torch": torch.__version__, "command": "OMP_NUM_THREADS=1 python " + " ".join(sys.argv),
            "image_size": SIZE, "memory_shape": list(MEMORY), "total_seconds": total,
            "summary": summary, "runs": runs,
        }, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
