"""Benchmark memscore's scoring path against the official resmem loop, in one run.

Builds a reproducible archive of N JPEGs at realistic photo sizes (400x300 to
2000x1500, crops of the photos scikit-image ships, seeded), then measures on those
files and one device:

1. model load time (ours: meta device + mmap + assign; the official package's);
2. the official package's one-image-at-a-time loop (decode + transformer + forward)
   - the baseline every ratio is taken against;
3. model-only forward throughput of our module for several settings (precision,
   memory format, BatchNorm folding, batch size), interleaved over rounds so the
   settings see the same machine load; and each setting's score drift against the
   float32 reference (max |diff|, Spearman);
4. decode + preprocessing throughput per DataLoader worker count (no model);
5. end-to-end ``memscore score`` as a user runs it (a subprocess, Prefect and all):
   steady-state images/s (from the times the Parquet parts appear), time to the
   first part, peak RSS, peak GPU memory on CUDA.

``--flat-memory`` instead scores N and 10*N images end to end and compares the
peak RSS of the scoring process.

Prints a table and writes JSON. Usage (from the repository root)::

    python benchmarks/bench_score.py --n 32 --json benchmarks/results-cpu.json
    python benchmarks/bench_score.py --flat-memory --n 12
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
          "retina", "stereo_motorcycle", "colorwheel")


# --------------------------------------------------------------------------- archive
def load_sources(photos_dir: Path | None = None) -> list[Image.Image]:
    """The source photos: scikit-image's, or the same saved as PNG in ``photos_dir`` (offline machines)."""
    if photos_dir is not None:
        return [Image.open(photos_dir / f"{name}.png").convert("RGB") for name in PHOTOS]
    import skimage.data

    sources = []
    for name in PHOTOS:
        array = getattr(skimage.data, name)()
        array = array[0] if isinstance(array, tuple) else array
        sources.append(Image.fromarray(array).convert("RGB"))
    return sources


_SOURCES: list[Image.Image] = []


def _init_sources(photos_dir: Path | None) -> None:
    _SOURCES[:] = load_sources(photos_dir)


def _write_one(job: tuple) -> Path:
    i, box, size, path = job
    _SOURCES[i % len(_SOURCES)].crop(box).resize(size, Image.BICUBIC).save(path, "JPEG", quality=90)
    return path


def build_archive(folder: Path, n: int, seed: int = 0, photos_dir: Path | None = None, processes: int = 1) -> list[Path]:
    """N JPEGs (quality 90), sizes 400x300..2000x1500 (a third portrait), seeded crops of skimage photos.

    The crops are drawn in one seeded sequence, so the archive is the same for any
    number of ``processes`` writing it.
    """
    _init_sources(photos_dir)
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    jobs = []
    for i in range(n):
        w0, h0 = _SOURCES[i % len(_SOURCES)].size
        cw, ch = int(w0 * rng.uniform(0.6, 1.0)), int(h0 * rng.uniform(0.6, 1.0))
        left, top = int(rng.integers(0, w0 - cw + 1)), int(rng.integers(0, h0 - ch + 1))
        long_side = int(rng.integers(400, 2001))
        size = (long_side, long_side * 3 // 4)
        if rng.random() < 1 / 3:
            size = size[::-1]
        path = folder / f"{i // 100:03d}" / f"img_{i:05d}.jpg"
        path.parent.mkdir(exist_ok=True)
        jobs.append((i, (left, top, left + cw, top + ch), size, path))
    if processes <= 1:
        return [_write_one(job) for job in jobs]
    from multiprocessing import get_context

    with get_context("fork").Pool(processes, _init_sources, (photos_dir,)) as pool:
        return pool.map(_write_one, jobs, chunksize=16)


# --------------------------------------------------------------------------- helpers
def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic) if len(a) > 1 else float("nan")


def drift(reference: np.ndarray, candidate: np.ndarray) -> dict:
    return {"max_abs_diff": float(np.max(np.abs(reference - candidate))), "spearman": spearman(reference, candidate)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_official():
    """The official package's model (its class, forward and weight loading), timed."""
    import resmem
    import torchvision

    original = resmem.resnet152
    resmem.resnet152 = lambda pretrained=False: torchvision.models.resnet152(weights=None)
    started = time.perf_counter()
    try:
        model = resmem.ResMem(pretrained=True).eval()
    finally:
        resmem.resnet152 = original
    return model, time.perf_counter() - started


def official_loop(model, paths: list[Path], device: torch.device) -> tuple[np.ndarray, float]:
    """What the resmem README does: one image at a time, decode, transformer, forward."""
    import resmem

    model = model.to(device)
    with torch.no_grad():  # first call sets up oneDNN/cuDNN; not part of the steady loop
        model(resmem.transformer(Image.open(paths[0]).convert("RGB")).view(-1, 3, 227, 227).to(device))
    scores = []
    started = time.perf_counter()
    for path in paths:
        image = Image.open(path).convert("RGB")
        x = resmem.transformer(image).view(-1, 3, 227, 227).to(device)
        with torch.no_grad():
            scores.append(float(model(x).item()))
    return np.array(scores, dtype=np.float64), len(paths) / (time.perf_counter() - started)


def decoded_batch(paths: list[Path]) -> torch.Tensor:
    from memscore.models.preprocess import resmem_transform

    return torch.stack([resmem_transform(Image.open(p)) for p in paths])


def model_variants(device: torch.device, compile_too: bool, only: list[str] | None = None) -> dict[str, dict]:
    """name -> SpeedSettings kwargs. The first is the float32 reference (plain module)."""
    variants = {
        "fp32 plain": dict(precision="fp32", channels_last=False, fold_batchnorm=False),
        "fp32 channels_last": dict(precision="fp32", channels_last=True, fold_batchnorm=False),
        "fp32 cl+fold (default cpu)": dict(precision="fp32", channels_last=True, fold_batchnorm=True),
        "bf16 cl+fold": dict(precision="bf16", channels_last=True, fold_batchnorm=True),
        "fp16 cl+fold": dict(precision="fp16", channels_last=True, fold_batchnorm=True),
    }
    if device.type == "cuda":
        variants = {k.replace(" (default cpu)", ""): v for k, v in variants.items()}
        variants["fp16 cl+fold (default cuda)"] = variants.pop("fp16 cl+fold")
    if device.type == "cpu" and importlib.util.find_spec("onnxruntime") is not None:
        variants["fp32 onnxruntime (--backend onnxruntime)"] = dict(precision="fp32", backend="onnxruntime")
    if compile_too:
        precision = "fp16" if device.type == "cuda" else "fp32"  # the device's default
        variants[f"{precision} cl+fold compiled"] = dict(precision=precision, channels_last=True, fold_batchnorm=True, compile=True)
    if only:
        keep = [name for name in variants if name == "fp32 plain" or any(name.startswith(o) for o in only)]
        variants = {name: variants[name] for name in keep}
    return variants


def bench_models(device, pixels: torch.Tensor, batch_sizes, rounds: int, low_precision_images: int,
                 compile_too: bool, layers=("resnet152", "fc11"), only: list[str] | None = None) -> tuple[list[dict], dict]:
    """Model-only throughput and drift per setting, interleaved over ``rounds``."""
    from memscore.models.registry import load_model
    from memscore.models.speed import SpeedSettings, prepare

    n = pixels.shape[0]
    default_batch = batch_sizes[len(batch_sizes) // 2] if device.type == "cpu" else max(batch_sizes)
    runs = []  # (name, runner, batch, images)
    runners = {}
    load_seconds = []
    prepare_seconds: dict[str, float] = {}
    for name, kwargs in model_variants(device, compile_too, only).items():
        started = time.perf_counter()
        loaded = load_model("resmem", None, device)
        sync(device)
        load_seconds.append(time.perf_counter() - started)
        started = time.perf_counter()
        runner = prepare(loaded, SpeedSettings(**kwargs))
        prepare_seconds[name] = time.perf_counter() - started  # folding; ONNX export or cache load
        runners[name] = runner
        low = kwargs["precision"] in ("bf16", "fp16") and device.type == "cpu"
        images = min(n, low_precision_images) if low else n
        sizes = batch_sizes if name.startswith("fp32 cl+fold") and "compiled" not in name else [default_batch]
        for batch in sizes:
            runs.append((name, runner, batch, images))

    def forward_all(runner, batch, images):
        outputs = []
        for start in range(0, images, batch):
            outputs.append(runner.submit(pixels[start:min(start + batch, images)], layers))
        results = [p.result() for p in outputs]
        return np.concatenate([r[0] for r in results]).astype(np.float64)

    # warm up (cudnn autotuning, oneDNN primitive caches, compile) with every batch size used
    for name, runner, batch, images in runs:
        forward_all(runner, batch, min(images, batch if images < n else 2 * batch))
        sync(device)
    timings: dict[tuple[str, int], list[float]] = {}
    scores: dict[str, np.ndarray] = {}
    for round_index in range(rounds):
        for name, runner, batch, images in runs:
            if round_index and images < n:  # emulated bf16/fp16 on CPU: one round is enough for drift
                continue
            sync(device)
            started = time.perf_counter()
            out = forward_all(runner, batch, images)
            sync(device)
            timings.setdefault((name, batch), []).append(images / (time.perf_counter() - started))
            scores.setdefault(name, out)
    reference = scores["fp32 plain"]
    rows = []
    for (name, batch), rates in timings.items():
        images = len(scores[name])
        rows.append({
            "setting": name, "batch": batch, "images": images,
            "images_per_s": max(rates), "images_per_s_rounds": rates,
            **drift(reference[:images], scores[name]),
        })
    peak_gpu = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return rows, {"ours_load_seconds": load_seconds, "prepare_seconds": prepare_seconds, "reference_scores": reference.tolist(), "peak_gpu_bytes_model": peak_gpu}


def bench_interleaved(official_model, archive: Path, paths: list[Path], pixels: torch.Tensor,
                      device: torch.device, rounds: int) -> list[dict]:
    """Official loop, our pipeline in-process and our model alone, one after another per round.

    The three see (nearly) the same machine load, so their ratios hold even on a
    shared machine. The pipeline is :func:`tasks.score.score_images` over all N
    images as one shard with the device's default batch size and workers (reading,
    hashing, decoding in DataLoader workers, the model, the output tables).
    """
    import pyarrow as pa

    from memscore.models.devices import defaults_for
    from memscore.models.speed import SpeedSettings
    from memscore.storage.uris import open_location
    from memscore.tasks.discover import iter_listing
    from memscore.tasks.plan import plan_shards
    from memscore.tasks.score import ScoreSettings, get_model, get_runner, score_images

    defaults = defaults_for(device)
    source = open_location(str(archive))
    empty = pa.table({"path": pa.array([], pa.string()), "source_version": pa.array([], pa.string())})
    shard = plan_shards(iter_listing(source), empty, len(paths) + 1).shards[0]
    loaded = get_model("resmem", None, device)
    settings = ScoreSettings(defaults.batch_size, defaults.workers, ("resnet152", "fc11"), Image.MAX_IMAGE_PIXELS, "bench")
    runner = get_runner(loaded, SpeedSettings())
    score_images(shard.slice(0, 2), source, loaded, settings)  # warm: worker forkserver, oneDNN
    rows = []
    for _ in range(rounds):
        _, official_rate = official_loop(official_model, paths, device)
        started = time.perf_counter()
        result = score_images(shard, source, loaded, settings)
        sync(device)
        pipeline_rate = result.scores.num_rows / (time.perf_counter() - started)
        started = time.perf_counter()
        pending = [runner.submit(pixels[i:i + defaults.batch_size], ("resnet152", "fc11"))
                   for i in range(0, len(paths), defaults.batch_size)]
        for p in pending:
            p.result()
        model_rate = len(paths) / (time.perf_counter() - started)
        rows.append({"official": official_rate, "pipeline": pipeline_rate, "model_only": model_rate,
                     "pipeline_vs_official": pipeline_rate / official_rate, "pipeline_vs_model": pipeline_rate / model_rate,
                     "batch": defaults.batch_size, "workers": defaults.workers})
    return rows


def draft_batch(paths: list[Path]) -> tuple[torch.Tensor, float]:
    """Preprocessing after PIL's JPEG draft mode (DCT-domain downscale to >= 256 px): a speed
    option for decode-bound GPU runs, NOT the reference. Returns (uint8 batch, CPU ms per image)."""
    from memscore.models.preprocess import resmem_transform

    started = time.process_time()
    out = []
    for p in paths:
        image = Image.open(p)
        image.draft("RGB", (256, 256))
        out.append(resmem_transform(image))
    return torch.stack(out), 1000 * (time.process_time() - started) / len(paths)


def bench_decode(paths: list[Path], worker_counts, batch: int, device: torch.device = torch.device("cpu"),
                 modes: tuple[str, ...] = ("workers",), cpu_cost_images: int | None = None) -> list[dict]:
    """Read + sha256 + decode + preprocess through the pipeline's own DataLoader, no model.

    ``modes``: ``workers`` (PIL in the workers) and/or ``device`` (the workers read,
    the batch is decoded on ``device``: ``--decode device``). For ``device`` the rows
    also give the scoring process's ms per image in the decoder call and in the
    resize, with ``device`` synchronised around each (so those runs are a little
    slower than a plain one). ``cpu_cost_images``: how many images the
    single-thread CPU cost is measured on (default: all).
    """
    import fsspec

    import memscore.tasks.device_decode as device_decode
    from memscore.models.preprocess import resmem_transform
    from memscore.tasks.decode import ShardDataset
    from memscore.tasks.score import ScoreSettings, _loader

    fs = fsspec.filesystem("file")
    files = [str(p) for p in paths]
    rows = []
    started = time.perf_counter()  # start the worker forkserver once, as a scoring process does
    warm = ShardDataset(fs, files[:1], resmem_transform, Image.MAX_IMAGE_PIXELS)
    for _ in _loader(warm, ScoreSettings(1, 1, (), None, "bench"), device):
        pass
    rows.append({"workers": "worker start (forkserver, once per process)", "seconds": time.perf_counter() - started})
    spent = {"decode_jpeg": 0.0, "resize": 0.0}

    def timed_part(name, fn):
        def wrapper(*args, **kwargs):
            sync(device)
            begun = time.perf_counter()
            out = fn(*args, **kwargs)
            sync(device)
            spent[name] += time.perf_counter() - begun
            return out
        return wrapper

    original = device_decode._decode_jpegs, device_decode._resize_all
    device_decode._decode_jpegs = timed_part("decode_jpeg", original[0])
    device_decode._resize_all = timed_part("resize", original[1])
    try:
        for mode in modes:
            for workers in worker_counts:
                dataset = ShardDataset(fs, files, resmem_transform, Image.MAX_IMAGE_PIXELS, device_jpeg=mode == "device")
                settings = ScoreSettings(batch_size=batch, workers=workers, features=(), max_pixels=None, run_id="bench")
                spent.update(decode_jpeg=0.0, resize=0.0)
                sync(device)
                started = time.perf_counter()
                first = None
                count = 0
                for item in _loader(dataset, settings, device):
                    if item.encoded:
                        item = device_decode.decode_on_device(item, resmem_transform, device, None)
                    if item.pixels is not None:
                        item.pixels.to(device, non_blocking=True)
                    if first is None:
                        first = time.perf_counter() - started
                    count += len(item.images)
                sync(device)
                seconds = time.perf_counter() - started
                row = {"decode": mode, "workers": workers, "images": count, "images_per_s": count / seconds,
                       "seconds_to_first_batch": first, "seconds": seconds}
                if mode == "device":
                    row["main_process_ms_per_image"] = {k: 1000 * v / count for k, v in spent.items()}
                rows.append(row)
                print(f"  decode {mode}, {workers} worker(s): {count / seconds:.0f} img/s", file=sys.stderr, flush=True)
    finally:
        device_decode._decode_jpegs, device_decode._resize_all = original
    # single-threaded cost per image, in this process (what a worker spends)
    sample = paths if cpu_cost_images is None else paths[:cpu_cost_images]
    started = time.process_time()
    for p in sample:
        resmem_transform(Image.open(p))
    rows.append({"workers": "in-process, CPU ms per image", "ms_per_image": 1000 * (time.process_time() - started) / len(sample)})
    return rows


# --------------------------------------------------------------------------- end to end
def parse_e2e_runs(values: list[str] | None) -> list[tuple[str, list[str]]]:
    """``LABEL=OPTIONS`` items (from ``--e2e``) as (label, extra memscore score options)."""
    runs = []
    for item in values or []:
        label, _, options = item.partition("=")
        runs.append((label, options.split()))
    return runs


def run_memscore(source: Path, dest: Path, device: str, extra: list[str], env_extra: dict | None = None) -> dict:
    """``memscore score`` in a subprocess; poll RSS of it (and its children) and the parts it writes."""
    import psutil

    cmd = [sys.executable, "-m", "memscore.flows.cli", "score", str(source), "--out", str(dest), "--device", device,
           "--no-progress", "--json", *extra]
    env = dict(os.environ, **(env_extra or {}))
    env.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak_main = peak_tree = 0
    part_times: dict[str, float] = {}
    scores_dir = dest / "scores"
    output: dict = {}

    def reader():
        output["stdout"], output["stderr"] = proc.communicate()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    gpu = _gpu_memory_probe() if device.startswith("cuda") else None
    peak_gpu_mib = 0.0
    while thread.is_alive():
        if gpu is not None:
            peak_gpu_mib = max(peak_gpu_mib, gpu())
        try:
            main = ps.memory_info().rss
            tree = main + sum(c.memory_info().rss for c in ps.children(recursive=True))
            peak_main, peak_tree = max(peak_main, main), max(peak_tree, tree)
        except psutil.Error:
            pass
        if scores_dir.is_dir():
            now = time.perf_counter() - started
            for part in scores_dir.glob("*.parquet"):
                part_times.setdefault(part.name, now)
        thread.join(0.1)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"memscore score failed ({proc.returncode}): {output.get('stderr', '')[-2000:]}")
    summary = json.loads(output["stdout"][output["stdout"].index("{"):])
    import pyarrow.parquet as pq

    rows_per_part = {p.name: pq.ParquetFile(p).metadata.num_rows for p in scores_dir.glob("*.parquet")}
    ordered = sorted(part_times.items(), key=lambda kv: kv[1])
    steady = None
    if len(ordered) >= 2:
        images = sum(rows_per_part.get(name, 0) for name, _ in ordered[1:])
        steady = images / (ordered[-1][1] - ordered[0][1])
    return {
        "command": " ".join(["memscore", *cmd[3:]]),
        "wall_seconds": wall,
        "seconds_to_first_part": ordered[0][1] if ordered else None,
        "steady_images_per_s": steady,
        "summary_images_per_s": summary["images_per_second"],
        "scored": summary["scored"], "failed": summary["failed"],
        "peak_rss_main_mb": peak_main / 2**20, "peak_rss_tree_mb": peak_tree / 2**20,
        "parts": len(ordered),
        "peak_gpu_memory_used_mib": peak_gpu_mib if gpu is not None else None,
    }


def _gpu_memory_probe():
    """A function giving the GPU's used memory in MiB (all processes; NVML), or None without NVML."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    except Exception:  # noqa: BLE001 - no NVML: no GPU memory figure
        return None
    return lambda: pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20


def read_scores(dest: Path) -> dict[str, float]:
    import pyarrow.parquet as pq

    table = pq.read_table(dest / "scores", columns=["path", "score"])
    return dict(zip(table["path"].to_pylist(), table["score"].to_pylist()))


# --------------------------------------------------------------------------- main
def machine() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu_cores": len(os.sched_getaffinity(0)),
            "cpu": platform.processor() or platform.machine(), "load_avg_at_start": os.getloadavg()}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def fmt(value, pattern="{:.2f}") -> str:
    return "-" if value is None else pattern.format(value)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=32, help="images in the archive (default 32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-sizes", default=None, help="model-only batch sizes (default: 4,16,32 on CPU; 64,256,512 on CUDA)")
    parser.add_argument("--workers", default=None, help="decode worker counts to try (default: 0,1,2 on CPU; 0,4,8,<all> on CUDA)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds for model-only timings (best kept)")
    parser.add_argument("--interleaved-rounds", type=int, default=2,
                        help="rounds of official loop / in-process pipeline / model only, back to back (0: skip)")
    parser.add_argument("--low-precision-images", type=int, default=8,
                        help="on CPU, bf16/fp16 (emulated without native support) run on this many images only")
    parser.add_argument("--e2e-shards", type=int, default=4, help="end to end: cut the archive into this many shards")
    parser.add_argument("--e2e", action="append", default=None, metavar="LABEL=OPTIONS",
                        help="an end-to-end run: a label and extra memscore score options, e.g. "
                             "'one worker=--workers 1' (repeatable; default: memscore's defaults)")
    parser.add_argument("--e2e-repeats", type=int, default=1,
                        help="run the list of end-to-end runs this many times, one after another (interleaved)")
    parser.add_argument("--e2e-spawn", action="store_true", help="also run end to end with spawn-started workers (the old way)")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile (slow to compile)")
    parser.add_argument("--skip-official", action="store_true")
    parser.add_argument("--settings", default=None,
                        help="model-only settings to time, by name prefix, comma-separated (the fp32 plain reference always runs)")
    parser.add_argument("--e2e-shard-size", type=int, default=None, help="end to end: this shard size instead of N/--e2e-shards")
    parser.add_argument("--no-draft", action="store_true", help="skip the JPEG draft-mode measurement")
    parser.add_argument("--flat-memory", action="store_true", help="only the flat-memory check: N and 10N images end to end")
    parser.add_argument("--workdir", default=None, help="where to build archives (default: a temporary folder)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)

    from memscore.models.devices import defaults_for, resolve_device

    device = resolve_device(args.device)
    cpu = device.type == "cpu"
    batch_sizes = [int(x) for x in (args.batch_sizes or ("4,16,32" if cpu else "64,256,512")).split(",")]
    cores = len(os.sched_getaffinity(0))
    worker_counts = [int(x) for x in (args.workers or ("0,1,2" if cpu else f"0,4,8,{cores}")).split(",")]
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="memscore-bench-"))
    results: dict = {"date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
                     "device": str(device), "n": args.n, "seed": args.seed, "argv": sys.argv[1:]}
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731

    if args.flat_memory:
        return flat_memory(args, device, workdir, results, log)

    archive = workdir / f"archive-{args.n}-{args.seed}"
    if not archive.exists():
        build_archive(archive, args.n, args.seed)
    paths = sorted(archive.rglob("*.jpg"))
    sizes = [Image.open(p).size for p in paths]
    results["archive"] = {"path": str(archive), "images": len(paths), "mean_megapixels": float(np.mean([w * h for w, h in sizes]) / 1e6),
                          "mean_kb": float(np.mean([p.stat().st_size for p in paths]) / 1024)}
    log(f"archive: {len(paths)} JPEGs, mean {results['archive']['mean_megapixels']:.2f} MP, in {archive}")

    # 1 + 2: official package
    official = None
    if not args.skip_official:
        log("official resmem: load + one-image loop ...")
        model, load_s = load_official()
        scores, rate = official_loop(model, paths, device)
        official = {"load_seconds": load_s, "images_per_s": rate, "scores": scores.tolist()}
        del model
        results["official"] = official

    # 3: model only
    log("model only ...")
    pixels = decoded_batch(paths)
    rows, extra = bench_models(device, pixels, batch_sizes, args.rounds, args.low_precision_images, args.compile,
                               only=args.settings.split(",") if args.settings else None)
    results["model_only"] = rows
    results["ours_load_seconds"] = extra["ours_load_seconds"]
    results["prepare_seconds"] = extra["prepare_seconds"]
    if official:
        results["parity_vs_official"] = drift(np.array(official["scores"]), np.array(extra["reference_scores"]))

    # 3a: official loop, pipeline and model alone interleaved (robust ratios on a busy machine)
    if official and args.interleaved_rounds:
        log("interleaved: official loop / pipeline / model only ...")
        model, _ = load_official()
        results["interleaved"] = bench_interleaved(model, archive, paths, pixels, device, args.interleaved_rounds)
        del model

    # 3b: JPEG draft-mode decode (measured, not wired in): speed and score drift
    if not args.no_draft:
        draft_pixels, draft_ms = draft_batch(paths)
        from memscore.models.registry import load_model
        from memscore.models.speed import prepare

        draft_scores = prepare(load_model("resmem", None, device))(draft_pixels, ())[0].astype(np.float64)
        results["draft_decode"] = {"ms_per_image": draft_ms, **drift(np.array(extra["reference_scores"]), draft_scores)}

    # 4: decode only
    log("decode + preprocess ...")
    results["decode"] = bench_decode(paths, worker_counts, defaults_for(device).batch_size)

    # 5: end to end
    log("end to end (memscore score) ...")
    shard = args.e2e_shard_size or max(1, -(-len(paths) // args.e2e_shards))
    e2e_runs = [(label, options, {}) for label, options in parse_e2e_runs(args.e2e)] or [
        ("memscore score (defaults, forkserver workers)", [], {})]
    if args.e2e_spawn:
        e2e_runs.append(("memscore score (spawn workers, old)", [], {"MEMSCORE_WORKER_START": "spawn"}))
    results["end_to_end"] = []
    for label, options, env in e2e_runs * args.e2e_repeats:
        dest = workdir / f"out-{len(results['end_to_end'])}"
        shutil.rmtree(dest, ignore_errors=True)
        log(f"end to end: {label} ...")
        run = run_memscore(archive, dest, str(device), ["--shard-size", str(shard), *options], env)
        run["setting"] = label
        ours = read_scores(dest)
        reference = np.array([ours[p.relative_to(archive).as_posix()] for p in paths])
        if official:
            run.update({"vs_official_" + k: v for k, v in drift(np.array(official["scores"]), reference).items()})
        results["end_to_end"].append(run)

    report(results, official)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
        log(f"wrote {args.json}")
    return 0


def report(results: dict, official: dict | None) -> None:
    base = official["images_per_s"] if official else None
    ratio = lambda r: fmt(r / base if base and r else None, "{:.2f}x")  # noqa: E731
    m = results["machine"]
    print(f"\nmemscore benchmark, {results['date_utc']}, {m['cpu']} ({m['cpu_cores']} cores), device {results['device']}, "
          f"torch {m['torch']}, {results['archive']['images']} JPEGs, mean {results['archive']['mean_megapixels']:.2f} MP")
    print(f"load: official {fmt(official and official['load_seconds'])} s; ours {', '.join(f'{s:.2f}' for s in results['ours_load_seconds'])} s")
    slow = {name: sec for name, sec in results.get("prepare_seconds", {}).items() if sec >= 0.5}
    if slow:
        print("prepare (after load): " + "; ".join(f"{name} {sec:.1f} s" for name, sec in slow.items()))
    if "parity_vs_official" in results:
        p = results["parity_vs_official"]
        print(f"parity (ours fp32 plain vs official): max |diff| {p['max_abs_diff']:.2e}, Spearman {p['spearman']:.6f}")
    print()
    print(f"| {'what':<52} | {'img/s':>7} | {'vs official':>11} | {'max |diff|':>10} | {'Spearman':>8} |")
    print(f"|{'-' * 54}|{'-' * 9}|{'-' * 13}|{'-' * 12}|{'-' * 10}|")
    if official:
        print(f"| {'official resmem, one image at a time (end to end)':<52} | {official['images_per_s']:7.2f} | {'1.00x':>11} | {'-':>10} | {'-':>8} |")
    for row in results["model_only"]:
        label = f"model only: {row['setting']}, batch {row['batch']}" + (f" ({row['images']} img)" if row["images"] != results["archive"]["images"] else "")
        print(f"| {label:<52} | {row['images_per_s']:7.2f} | {ratio(row['images_per_s']):>11} | {row['max_abs_diff']:10.2e} | {row['spearman']:8.5f} |")
    for row in results["decode"]:
        if "ms_per_image" not in row and "images_per_s" not in row:
            print(f"| {row['workers'][:52]:<52} | {row['seconds']:7.2f} | {'(seconds)':>11} | {'-':>10} | {'-':>8} |")
        elif "ms_per_image" in row:
            print(f"| {'decode+preprocess: CPU ms per image, 1 thread':<52} | {row['ms_per_image']:7.1f} | {'(ms)':>11} | {'-':>10} | {'-':>8} |")
        else:
            where = " (GPU decoding)" if row.get("decode") == "device" else ""
            label = f"decode+preprocess only{where}: {row['workers']} worker(s)"
            print(f"| {label:<52} | {row['images_per_s']:7.2f} | {ratio(row['images_per_s']):>11} | {'-':>10} | {'-':>8} |")
    for i, row in enumerate(results.get("interleaved", []), 1):
        pipeline = f"round {i}: pipeline in-process (batch {row['batch']}, {row['workers']} worker)"
        print(f"| {f'round {i}: official loop':<52} | {row['official']:7.2f} | {'1.00x':>11} | {'-':>10} | {'-':>8} |")
        print(f"| {pipeline:<52} | {row['pipeline']:7.2f} | {row['pipeline_vs_official']:10.2f}x | {'-':>10} | {'-':>8} |")
        print(f"| {f'round {i}: model only (fp32 default)':<52} | {row['model_only']:7.2f} | "
              f"{row['model_only'] / row['official']:10.2f}x | {'-':>10} | {'-':>8} |")
        print(f"| {f'round {i}: pipeline / model only':<52} | {'':7} | {row['pipeline_vs_model']:10.0%}  | {'-':>10} | {'-':>8} |")
    if "draft_decode" in results:
        dd = results["draft_decode"]
        print(f"| {'decode+preprocess, JPEG draft mode (option, not used)':<52} | {dd['ms_per_image']:7.1f} | {'(ms)':>11} | "
              f"{dd['max_abs_diff']:10.2e} | {dd['spearman']:8.5f} |")
    for run in results["end_to_end"]:
        d, s = run.get("vs_official_max_abs_diff"), run.get("vs_official_spearman")
        print(f"| {('end to end, steady: ' + run['setting'])[:52]:<52} | {fmt(run['steady_images_per_s']):>7} | {ratio(run['steady_images_per_s']):>11} | "
              f"{fmt(d, '{:.2e}'):>10} | {fmt(s, '{:.5f}'):>8} |")
    print()
    for run in results["end_to_end"]:
        print(f"{run['setting']}: `{run['command']}`; {run['scored']} scored in {run['parts']} parts; wall {run['wall_seconds']:.1f} s "
              f"(Prefect start and model load included); first part after {fmt(run['seconds_to_first_part'], '{:.1f}')} s; "
              f"flow summary {run['summary_images_per_s']:.2f} img/s; peak RSS {run['peak_rss_main_mb']:.0f} MB "
              f"(with children {run['peak_rss_tree_mb']:.0f} MB)")
    def best_model_only(prefix: str) -> dict | None:
        return max((r for r in results["model_only"] if r["setting"].startswith(prefix)),
                   key=lambda r: r["images_per_s"], default=None)

    for run in results["end_to_end"]:
        # each run against the model-only figure of the backend it ran on
        onnx = "--backend onnxruntime" in run["command"]
        best = best_model_only("fp32 onnxruntime" if onnx else "fp32 cl+fold")
        if run["steady_images_per_s"] and best:
            print(f"end to end ({run['setting']}) / its model only ({best['setting']}, {best['images_per_s']:.2f} img/s): "
                  f"{run['steady_images_per_s'] / best['images_per_s']:.0%}")


def flat_memory(args, device, workdir: Path, results: dict, log) -> int:
    """Score N and 10N images end to end (same shard size); compare peak RSS.

    With ``--e2e LABEL=OPTIONS`` the first entry's options are added to both runs
    (e.g. ``--e2e "ort=--backend onnxruntime"``)."""
    results["flat_memory"] = []
    shard = max(4, args.n)
    extra = parse_e2e_runs(args.e2e)[0][1] if args.e2e else []
    results["flat_memory_options"] = extra
    for count in (args.n, 10 * args.n):
        archive = workdir / f"archive-{count}-{args.seed}"
        if not archive.exists():
            build_archive(archive, count, args.seed)
        dest = workdir / f"flat-out-{count}"
        shutil.rmtree(dest, ignore_errors=True)
        log(f"flat memory: {count} images ...")
        run = run_memscore(archive, dest, str(device), ["--shard-size", str(shard), *extra])
        run["images"] = count
        results["flat_memory"].append(run)
    print(f"\nflat-memory check, {results['date_utc']}, device {device}, shard size {shard}"
          + (f", options {' '.join(extra)}" if extra else ""))
    print(f"| {'images':>6} | {'parts':>5} | {'peak RSS main (MB)':>18} | {'peak RSS with children (MB)':>27} | {'wall s':>7} |")
    print(f"|{'-' * 8}|{'-' * 7}|{'-' * 20}|{'-' * 29}|{'-' * 9}|")
    for run in results["flat_memory"]:
        print(f"| {run['images']:>6} | {run['parts']:>5} | {run['peak_rss_main_mb']:>18.0f} | {run['peak_rss_tree_mb']:>27.0f} | {run['wall_seconds']:>7.1f} |")
    small, large = results["flat_memory"]
    print(f"peak RSS (main) grows by {large['peak_rss_main_mb'] - small['peak_rss_main_mb']:+.0f} MB "
          f"({(large['peak_rss_main_mb'] / small['peak_rss_main_mb'] - 1):+.1%}) for 10x the images")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
