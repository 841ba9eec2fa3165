"""Benchmark of ``memscore report`` on a synthetic DEST: time and peak memory at 1,000,000 rows.

A DEST of N score rows (default 1,000,000; 50 parts, paths in 20 top-level folders,
the schema of storage/schema.py, scores from a Beta(4, 3)) and 1% error rows is
written with DuckDB; no image exists, so the gallery shows "missing" cards (the
non-gallery parts are what grows with N; thumbnails are made only for the
2 x --top + --sample images shown). Optionally a LaMem-style human file for
--human-images of the images. Then ``memscore report DEST --out OUT`` runs as a
child process, and its wall time and peak resident memory (ru_maxrss of the
child) are printed.

    .venv/bin/python benchmarks/bench_report.py [--rows N] [--features D] [--human-images N] [--keep DIR]

``--features D`` adds a ``feat_fc11`` column of D floats per row (a real DEST holds
ResMem's resnet152 and fc11 features; the report never reads them).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

REPO = Path(__file__).resolve().parent.parent


def write_dest(dest: Path, rows: int, parts: int, features: int, seed: int) -> None:
    """``rows`` score rows in ``parts`` Parquet parts under dest/scores, 1% error rows under dest/errors."""
    con = duckdb.connect()
    con.sql(f"SELECT setseed({seed / 1e6})")
    (dest / "scores").mkdir(parents=True, exist_ok=True)
    (dest / "errors").mkdir(parents=True, exist_ok=True)
    per = -(-rows // parts)
    feat = (f", list_transform(range({features}), lambda k: (random())::FLOAT)::FLOAT[{features}] AS feat_fc11"
            if features else "")
    for p in range(parts):
        lo, hi = p * per, min(rows, (p + 1) * per)
        if lo >= hi:
            break
        con.sql(f"""COPY (SELECT lpad(to_hex(i), 64, '0') AS image_id,
                'folder' || lpad((i % 20)::VARCHAR, 2, '0') || '/sub' || (i % 7) || '/img_' || lpad(i::VARCHAR, 8, '0') || '.jpg' AS path,
                'file:///nonexistent/' || path AS uri, (50000 + i % 1000)::BIGINT AS size_bytes,
                640::INTEGER AS width, 480::INTEGER AS height, 'resmem' AS model, '{'ab' * 32}' AS weights,
                -- Beta(4, 3) by the ratio of gammas (sums of exponentials)
                ((-ln(random()) - ln(random()) - ln(random()) - ln(random())) /
                 (-ln(random()) - ln(random()) - ln(random()) - ln(random())
                  - ln(random()) - ln(random()) - ln(random())))::FLOAT AS score{feat},
                'v' AS source_version, 'run-{p % 3}' AS run_id,
                TIMESTAMPTZ '2026-01-01 00:00:00+00' + to_milliseconds(i) AS scored_at
              FROM range({lo}, {hi}) r(i)) TO '{dest}/scores/part-bench-{p:06d}.parquet' (FORMAT parquet, COMPRESSION zstd)""")
    con.sql(f"""COPY (SELECT 'folder' || lpad((i % 20)::VARCHAR, 2, '0') || '/bad_' || i || '.jpg' AS path,
            'file:///nonexistent/bad_' || i || '.jpg' AS uri,
            CASE WHEN i % 3 = 0 THEN 'read' ELSE 'decode' END AS stage,
            CASE WHEN i % 3 = 0 THEN 'FileNotFoundError' ELSE 'UnidentifiedImageError' END AS error,
            'synthetic failure ' || i AS message, 'run-0' AS run_id, 'resmem' AS model, '{'ab' * 32}' AS weights,
            10::BIGINT AS size_bytes, 'v' AS source_version, TIMESTAMPTZ '2026-01-01 00:00:00+00' AS failed_at
          FROM range({max(1, rows // 100)}) r(i)) TO '{dest}/errors/part-bench-000000.parquet' (FORMAT parquet)""")


def write_human(path: Path, images: int, seed: int) -> None:
    """LaMem-style 'image_name score' lines for the first ``images`` images (noisy copies of nothing: random)."""
    con = duckdb.connect()
    con.sql(f"SELECT setseed({seed / 1e6 + 0.5})")
    con.sql(f"""COPY (SELECT 'img_' || lpad(i::VARCHAR, 8, '0') || '.jpg ' || round(random(), 4) AS line
              FROM range({images}) r(i)) TO '{path}' (HEADER false, QUOTE '', FORMAT csv)""")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--parts", type=int, default=50)
    parser.add_argument("--features", type=int, default=0)
    parser.add_argument("--human-images", type=int, default=0)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--keep", default=None, help="write DEST and the report here (default: a temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-report-") as scratch:
        root = Path(args.keep) if args.keep else Path(scratch)
        dest, out = root / "dest", root / "report"
        t0 = time.perf_counter()
        write_dest(dest, args.rows, args.parts, args.features, args.seed)
        command = [sys.executable, "-m", "memscore.flows.cli", "report", str(dest), "--out", str(out),
                   "--top", str(args.top), "--sample", str(args.top)]
        if args.human_images:
            write_human(root / "human.txt", args.human_images, args.seed)
            command += ["--human", str(root / "human.txt"), "--human-format", "lamem"]
        size = sum(f.stat().st_size for f in dest.rglob("*.parquet"))
        print(f"synthetic DEST: {args.rows:,} rows, {size / 2**20:.1f} MiB of Parquet, written in "
              f"{time.perf_counter() - t0:.1f} s")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        started = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
        print(done.stdout.strip())
        if done.returncode:
            print(done.stderr, file=sys.stderr)
            return done.returncode
        print(f"memscore report: {seconds:.1f} s wall, peak RSS {peak:.0f} MiB "
              f"({platform.node()}, {os.cpu_count()} CPUs, python {platform.python_version()}, duckdb {duckdb.__version__})")
        print("command: " + " ".join(command[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
