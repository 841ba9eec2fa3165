"""GPU benchmark: what one CUDA device does with memscore, measured on the same files in one run.

The GPU counterpart of ``bench_score.py`` (whose archive, official loop, model
settings and end-to-end runner it reuses). Phases, each writing ``DIR/<phase>.json``:

``model``
    the official package's one-image loop on the GPU (the baseline); a float32
    CPU reference over the first ``--reference-images`` images (the parity
    reference, PIL decoding); model-only images/s per setting (fp32 = TF32 in
    cuDNN, bf16, fp16, channels_last, BatchNorm folding, batch size, optionally
    torch.compile) with each setting's drift against the CPU reference; the drift
    of device (nvJPEG) decoding; and decode throughput per worker count for PIL in
    workers and for ``--decode device`` (workers read, nvJPEG decodes).
``e2e``
    ``memscore score`` end to end as a user runs it (Prefect, shards, Parquet),
    with the CUDA defaults and with ``--decode workers``: steady-state images/s,
    time to the first part, peak RSS and GPU memory.
``train``
    training images/s of each trainable model on the GPU (``tasks.train.train_model``,
    the code behind ``memscore train``), on LaMem-sized 256x256 JPEGs.

Usage (repository root, on the GPU machine)::

    python benchmarks/bench_gpu.py --phase model --n 16384 --dir /root/bench
    python benchmarks/bench_gpu.py --phase e2e --n 16384 --dir /root/bench
    python benchmarks/bench_gpu.py --phase train --dir /root/bench

``--photos DIR`` reads the source photos from PNG files (``<name>.png``) instead
of scikit-image, for machines without its data.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_score as bs  # noqa: E402

LAYERS = ("resnet152", "fc11")


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        torch.cuda.empty_cache()


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def log(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


def archive(args) -> tuple[Path, list[Path]]:
    folder = args.dir / f"archive-{args.n}-{args.seed}"
    if not folder.exists():
        started = time.perf_counter()
        bs.build_archive(folder, args.n, args.seed, args.photos, processes=os.cpu_count() or 1)
        log(f"built {args.n} JPEGs in {time.perf_counter() - started:.1f} s")
    return folder, sorted(folder.rglob("*.jpg"))


def timed(fn, device: torch.device, repeats: int = 1) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        bs.sync(device)
        started = time.perf_counter()
        out = fn()
        bs.sync(device)
        best = min(best, time.perf_counter() - started)
    return best, out


def run_settings(runner, pixels: torch.Tensor, batch: int) -> np.ndarray:
    """Scores of all ``pixels`` (uint8, host) in batches, one batch in flight (as the pipeline runs)."""
    pending = [runner.submit(pixels[i:i + batch], LAYERS) for i in range(0, len(pixels), batch)]
    return np.concatenate([p.result()[0] for p in pending]).astype(np.float64)


def device_decoded(paths: list[Path], device: torch.device, batch: int) -> torch.Tensor:
    """The pixels ``--decode device`` gives (nvJPEG + resize on the GPU), back on the host."""
    from memscore.models.preprocess import resmem_transform
    from memscore.tasks.decode import collate, load_one
    from memscore.tasks.device_decode import decode_on_device
    import fsspec

    fs = fsspec.filesystem("file")
    out = []
    for start in range(0, len(paths), batch):
        items = [load_one(i, fs, str(p), resmem_transform, None, device_jpeg=True)
                 for i, p in enumerate(paths[start:start + batch], start)]
        decoded = decode_on_device(collate(items), resmem_transform, device, None)
        assert not decoded.failures and [im.index for im in decoded.images] == [it.index for it in items]
        out.append(decoded.pixels.cpu())
    return torch.cat(out)


def model_setting(name, kwargs, args, device, all_pixels, pil_pixels, reference) -> list[dict]:
    """Images/s (best of ``--repeats``) and drift against the CPU reference for one setting."""
    from memscore.models.registry import load_model
    from memscore.models.speed import SpeedSettings, prepare

    started = time.perf_counter()
    runner = prepare(load_model("resmem", None, device), SpeedSettings(**kwargs))
    bs.sync(device)
    load = time.perf_counter() - started
    rows = []
    for batch in (args.batch_sizes if "(default" in name else [256]):
        reset_peak(device)
        warm_s, _ = timed(lambda: run_settings(runner, all_pixels[: 2 * batch], batch), device)
        seconds, _ = timed(lambda: run_settings(runner, all_pixels, batch), device, repeats=args.repeats)
        scores = run_settings(runner, pil_pixels, batch)
        rows.append({"setting": name, "batch": batch, "images_per_s": len(all_pixels) / seconds,
                     "load_and_prepare_seconds": load, "first_batches_seconds": warm_s,
                     "peak_gpu_gib": peak_gib(device), **bs.drift(reference, scores)})
        log(f"  {name}, batch {batch}: {rows[-1]['images_per_s']:.0f} img/s, Spearman {rows[-1]['spearman']:.5f}")
    return rows


def phase_model(args, device: torch.device) -> dict:
    from memscore.models.registry import load_model
    from memscore.models.speed import SpeedSettings, prepare

    folder, paths = archive(args)
    results: dict = {"archive": {"images": len(paths), "mean_megapixels": float(np.mean(
        [w * h for w, h in (Image.open(p).size for p in paths[:2048])]) / 1e6)}}
    sub = paths[: args.reference_images]

    log("official package: load + one-image loop on the GPU ...")
    official_model, load_s = bs.load_official()
    official_scores, official_rate = bs.official_loop(official_model, paths[: args.official_images], device)
    results["official"] = {"load_seconds": load_s, "images_per_s": official_rate, "images": args.official_images}
    del official_model
    reset_peak(device)

    log("CPU float32 reference (PIL decoding, CPU defaults: the parity-tested path) ...")
    pil_pixels = bs.decoded_batch(sub)
    cpu = torch.device("cpu")
    torch.set_num_threads(os.cpu_count() or 1)
    started = time.perf_counter()
    reference = run_settings(prepare(load_model("resmem", None, cpu), SpeedSettings(precision="fp32")), pil_pixels, 64)
    results["cpu_reference"] = {"images": len(sub), "images_per_s": len(sub) / (time.perf_counter() - started),
                                "threads": torch.get_num_threads()}
    n_off = min(len(official_scores), len(reference))
    results["official_gpu_vs_cpu_reference"] = bs.drift(reference[:n_off], official_scores[:n_off])

    log("model only, per setting ...")
    all_pixels = bs.decoded_batch(paths[: args.model_images])
    variants = bs.model_variants(device, args.compile)  # on CUDA, fp32 convolutions run as TF32 (cuDNN's default)
    results["fp32_means"] = "TF32 convolutions" if device.type == "cuda" and torch.backends.cudnn.allow_tf32 else "float32"
    rows = []
    for name, kwargs in variants.items():
        try:
            rows.extend(model_setting(name, kwargs, args, device, all_pixels, pil_pixels, reference))
        except Exception as error:  # noqa: BLE001 - e.g. torch.compile failing: record it, go on
            rows.append({"setting": name, "error": f"{type(error).__name__}: {str(error)[:300]}"})
            log(f"  {name}: failed: {rows[-1]['error']}")
        reset_peak(device)
    results["model_only"] = rows

    log("device (nvJPEG) decoding: drift ...")
    gpu_pixels = device_decoded(sub, device, 256)
    results["device_decode_pixels"] = {
        "mean_abs_diff_levels": float((gpu_pixels.float() - pil_pixels.float()).abs().mean()),
        "max_abs_diff_levels": float((gpu_pixels.float() - pil_pixels.float()).abs().max()),
    }
    decode_rows = []
    for name in [n for n in variants if "cl+fold" in n and "compiled" not in n]:  # fp32, bf16, fp16 (the default)
        runner = prepare(load_model("resmem", None, device), SpeedSettings(**variants[name]))
        decode_rows.append({"setting": f"device decode + {name}", **bs.drift(reference, run_settings(runner, gpu_pixels, 256))})
        del runner
    results["device_decode_drift"] = decode_rows

    log("decode throughput ...")
    results["decode"] = bs.bench_decode(paths[: args.decode_images], args.worker_counts, 256, device,
                                        ("workers", "device"), cpu_cost_images=64)
    return results


def cpu_reference(paths: list[Path]) -> np.ndarray:
    """Float32 CPU scores (PIL decoding, CPU defaults: the parity-tested path)."""
    from memscore.models.registry import load_model
    from memscore.models.speed import SpeedSettings, prepare

    torch.set_num_threads(os.cpu_count() or 1)
    runner = prepare(load_model("resmem", None, torch.device("cpu")), SpeedSettings(precision="fp32"))
    return run_settings(runner, bs.decoded_batch(paths), 64)


def phase_decode(args, device: torch.device) -> dict:
    _, paths = archive(args)
    return {"decode": bs.bench_decode(paths[: args.decode_images], args.worker_counts, 256, device, args.decode_modes,
                                      cpu_cost_images=64)}


def phase_e2e(args, device: torch.device) -> dict:
    import shutil

    folder, paths = archive(args)
    log(f"CPU float32 reference for the first {args.reference_images} images ...")
    reference_paths = paths[: args.reference_images]
    reference = cpu_reference(reference_paths)
    runs = []
    for label, extra in args.e2e_runs:
        dest = args.dir / f"e2e-{len(runs)}"
        shutil.rmtree(dest, ignore_errors=True)
        log(f"memscore score {label} ...")
        run = bs.run_memscore(folder, dest, str(device), extra)
        run["setting"] = label
        scores = bs.read_scores(dest)
        run.update({"vs_cpu_reference_" + k: v for k, v in bs.drift(
            reference, np.array([scores[p.relative_to(folder).as_posix()] for p in reference_paths])).items()})
        runs.append(run)
        log(f"  steady {run['steady_images_per_s']} img/s, wall {run['wall_seconds']:.1f} s, parts {run['parts']}, "
            f"Spearman vs CPU reference {run['vs_cpu_reference_spearman']:.5f}")
    return {"archive": {"images": len(paths)}, "end_to_end": runs}


def phase_train(args, device: torch.device) -> dict:
    """Training images/s per model: 2 epochs on LaMem-sized images (epoch 2 is the steady one).

    Each model's row is logged as soon as it is done, so a run cut short keeps the
    models it finished.
    """
    import csv

    from memscore.tasks.train import TrainConfig, train_model

    folder = args.dir / "train-images"
    labels = args.dir / "train-labels.csv"
    if not labels.exists():
        rng = np.random.default_rng(args.seed)
        sources = bs.load_sources(args.photos)
        folder.mkdir(parents=True, exist_ok=True)
        with labels.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image", "memorability"])
            for i in range(args.train_images):
                photo = sources[i % len(sources)]
                w, h = photo.size
                side = int(min(w, h) * rng.uniform(0.5, 1.0))
                left, top = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
                photo.crop((left, top, left + side, top + side)).resize((256, 256), Image.BICUBIC).save(
                    folder / f"t{i:05d}.jpg", "JPEG", quality=90)
                writer.writerow([f"t{i:05d}.jpg", f"{rng.uniform(0.4, 1.0):.4f}"])
    segmenter = args.dir / "lraspp-random.pt"
    if not segmenter.exists():  # the machine cannot download torchvision's weights: a local file, random
        from torchvision.models.segmentation import lraspp_mobilenet_v3_large

        torch.save(lraspp_mobilenet_v3_large(weights=None, weights_backbone=None).state_dict(), segmenter)
    rows = []
    for model in args.train_models:
        out = args.dir / f"train-{model}"
        import shutil

        shutil.rmtree(out, ignore_errors=True)
        config = TrainConfig(model=model, human=str(labels), images=str(folder), out=str(out), epochs=2, patience=5,
                             batch_size=args.train_batch, workers=args.train_workers, device=str(device),
                             segmenter_weights=str(segmenter) if model.startswith("m3m") else None)
        reset_peak(device)
        log(f"train {model} ...")
        result = train_model(config, log=lambda text: log(f"  [{model}] {text}"))
        last = result.metrics[-1]
        rows.append({"model": model, "parameters": result.parameters, "trainable_parameters": result.trainable_parameters,
                     "batch": args.train_batch, "workers": args.train_workers, "train_images": last.train_images,
                     "epoch2_train_images_per_s": last.train_images_per_second,
                     "epoch1_train_images_per_s": result.metrics[0].train_images_per_second,
                     "peak_gpu_gib": peak_gib(device)})
        log(f"TRAINED {model}: {last.train_images_per_second:.0f} img/s (epoch 2), {json.dumps(rows[-1])}")
    return {"train": rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phase", choices=("model", "decode", "e2e", "train"), required=True)
    parser.add_argument("--dir", type=Path, required=True, help="work folder (archives, outputs, results)")
    parser.add_argument("--n", type=int, default=16384, help="JPEGs in the archive (default 16384)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--photos", type=Path, default=None, help="folder of <photo>.png sources instead of scikit-image")
    parser.add_argument("--official-images", type=int, default=512)
    parser.add_argument("--reference-images", type=int, default=512)
    parser.add_argument("--model-images", type=int, default=2048)
    parser.add_argument("--decode-images", type=int, default=4096)
    parser.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[64, 128, 256, 512])
    parser.add_argument("--worker-counts", type=lambda s: [int(x) for x in s.split(",")], default=None)
    parser.add_argument("--decode-modes", type=lambda s: tuple(s.split(",")), default=("workers", "device"))
    parser.add_argument("--e2e", action="append", default=None, metavar="LABEL=OPTIONS",
                        help="an end-to-end run: a label and extra memscore score options "
                             "(default: the CUDA defaults, and --decode workers)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--device", default="cuda", help="cuda (default); cpu only to try the script out")
    parser.add_argument("--train-models", type=lambda s: s.split(","), default=["memnet-baseline", "resmem", "resmem-retrain", "m3m"])
    parser.add_argument("--train-images", type=int, default=4096)
    parser.add_argument("--train-batch", type=int, default=128)
    parser.add_argument("--train-workers", type=int, default=None)
    args = parser.parse_args(argv)
    cores = len(os.sched_getaffinity(0))
    args.worker_counts = args.worker_counts or [4, 8, cores - 1]
    args.train_workers = cores - 1 if args.train_workers is None else args.train_workers
    args.e2e_runs = bs.parse_e2e_runs(args.e2e) or [
        ("defaults (JPEGs decoded on the GPU, fp16)", []), ("--decode workers (PIL in workers)", ["--decode", "workers"])]
    args.dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    results = {"date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": bs.machine(),
               "phase": args.phase, "argv": sys.argv[1:]}
    phase = {"model": phase_model, "decode": phase_decode, "e2e": phase_e2e, "train": phase_train}[args.phase]
    results.update(phase(args, device))
    path = args.dir / f"{args.phase}.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    print(json.dumps(results, indent=1, default=str)[-6000:])
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
