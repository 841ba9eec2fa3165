"""Start-up of ``memscore score`` on the sample archive: with and without a Prefect server.

Runs the README's first command, ``memscore score sample-images --out DEST``, as a
user does (a fresh subprocess, a fresh DEST each run, ``PREFECT_API_URL`` unset, so
the Prefect flow starts a temporary local API), for each of several variants,
interleaved over rounds so that every variant sees the same machine load:

- ``before``: the code of ``--before-rev`` (default: the last commit before the
  plain path; it always ran the flow), extracted with ``git archive``;
- ``after``: this checkout (a local SOURCE and DEST run without Prefect);
- ``after --prefect``: this checkout asking for the flow (the old path, for comparison).

Per run it records the time to the first result (the first Parquet part in
DEST/scores, polled every 20 ms) and the total wall time (the process's exit), in
seconds from the start of the process. Prints a table and writes JSON.

Usage (from the repository root; the sample archive is made if missing)::

    python benchmarks/bench_startup.py --runs 3 --json benchmarks/results-startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEFORE_REV = "5634133"  # main before `memscore score` got its plain path (issue 19)


def run_once(checkout: Path, sample: Path, extra: list[str], workdir: Path) -> dict[str, float]:
    """One ``memscore score`` run; seconds to the first part and to the exit."""
    dest = workdir / "out"
    shutil.rmtree(dest, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PYTHONPATH"] = str(checkout)
    command = [sys.executable, "-m", "memscore.flows.cli", "score", str(sample), "--out", str(dest),
               "--no-progress", *extra]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = None
    scores = dest / "scores"
    while process.poll() is None:
        if first is None and scores.is_dir() and any(p.suffix == ".parquet" and not p.name.startswith(".")
                                                     for p in scores.iterdir()):
            first = time.perf_counter() - started
        time.sleep(0.02)
    total = time.perf_counter() - started
    _, err = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{err[-3000:]}")
    if first is None:
        first = total
    return {"first_result_s": round(first, 2), "total_s": round(total, 2)}


def extract(rev: str, target: Path) -> Path:
    """The repository at ``rev`` as plain files under ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="rounds (each runs every variant once)")
    parser.add_argument("--before-rev", default=BEFORE_REV, help="git revision of the 'before' variant")
    parser.add_argument("--sample", default=None, help="sample archive (default: made with memscore sample)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-prefect-variant", action="store_true", help="leave out 'after --prefect'")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="memscore-bench-startup-") as tmp:
        tmp = Path(tmp)
        sample = Path(args.sample) if args.sample else tmp / "sample-images"
        if not sample.is_dir():
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            subprocess.run([sys.executable, "-m", "memscore.flows.cli", "sample", str(sample)], check=True, env=env)
        before = extract(args.before_rev, tmp / "before")
        device = ["--device", args.device]
        variants = {"before": (before, device), "after": (ROOT, device)}
        if not args.no_prefect_variant:
            variants["after --prefect"] = (ROOT, [*device, "--prefect"])
        # One unmeasured run of each: the OS file cache and Prefect's database are then warm for all.
        for checkout, extra in variants.values():
            run_once(checkout, sample, extra, tmp)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
        for round_ in range(args.runs):
            for name, (checkout, extra) in variants.items():
                result = run_once(checkout, sample, extra, tmp)
                runs[name].append(result)
                print(f"round {round_ + 1} {name:16s} first result {result['first_result_s']:6.2f} s, "
                      f"total {result['total_s']:6.2f} s", file=sys.stderr)
        images = sum(1 for p in sample.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))

    summary = {
        name: {
            "first_result_s_median": statistics.median(r["first_result_s"] for r in results),
            "total_s_median": statistics.median(r["total_s"] for r in results),
            "runs": results,
        }
        for name, results in runs.items()
    }
    report = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpu_cores": os.cpu_count(), "load_average_at_end": os.getloadavg()},
        "command": f"memscore score sample-images --out DEST --no-progress --device {args.device} [--prefect]",
        "images": images,
        "before_rev": args.before_rev,
        "variants": summary,
    }
    print(f"{'variant':18s} {'first result (median)':>22s} {'total (median)':>15s}   runs (first/total)")
    for name, s in summary.items():
        each = ", ".join(f"{r['first_result_s']:.1f}/{r['total_s']:.1f}" for r in s["runs"])
        print(f"{name:18s} {s['first_result_s_median']:20.2f} s {s['total_s_median']:13.2f} s   {each}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
