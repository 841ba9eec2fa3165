"""Benchmark of the analysis SQL on a simulated continuous-recognition study.

10 million trials (default: 100,000 images, 2,000 participants, 2,500 target
images per participant, each shown twice) are generated in DuckDB and written to
Parquet; then, timed separately:

1. reading the trials and participant exclusion (storage.human.load_human),
2. the per-image measure of both halves of 25 random participant splits
   (storage.stats.split_halves, SQL) and their split-half summary (tasks.stats),
3. Spearman and Pearson with 1,000 bootstrap resamples over 100,000 images, plus the
   noise ceiling and the model's fraction of it on the same draws
   (tasks.stats.analyse_models).

Prints wall time and the process's peak resident memory after each step.

    .venv/bin/python benchmarks/bench_analysis.py [--images N] [--participants N]
        [--per-participant N] [--splits N] [--bootstrap N] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import duckdb  # noqa: E402

from memscore.storage.human import Exclusion, load_human  # noqa: E402
import numpy as np  # noqa: E402

from memscore.storage.stats import split_halves  # noqa: E402
from memscore.tasks.stats import analyse_models, split_half_summary  # noqa: E402


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def simulate(con: duckdb.DuckDBPyConnection, path: str, images: int, participants: int, per: int, seed: int) -> int:
    """Trials: each participant sees `per` target images twice (first showing, repeat).
    Image i has true memorability m_i in [0.3, 0.9]; hit with probability m_i at the
    repeat, false alarm with probability 0.1 at the first showing; 2% of the
    participants answer at random (they get excluded)."""
    con.sql(f"""
        COPY (
          WITH t AS (
            SELECT p.p AS participant, (hash(p.p * 1000003 + j.j + {seed} * 7919) % {images})::BIGINT AS image, j.j AS j
            FROM range({participants}) p(p), range({per}) j(j)
          ),
          m AS (SELECT i AS image, 0.3 + 0.6 * ((hash({seed} + 1, i) % 1000000) / 1e6) AS mem FROM range({images}) r(i))
          SELECT 'p' || participant AS participant_id, 'img_' || lpad(image::VARCHAR, 6, '0') || '.jpg' AS image_id,
                 'target' AS trial_type, pr.presentation,
                 CASE WHEN participant % 50 = 7 THEN (hash({seed} + 2, participant, j, pr.presentation) % 2 = 0)
                      WHEN pr.presentation = 2 THEN (hash({seed} + 3, participant, j) % 1000000) / 1e6 < mem
                      ELSE (hash({seed} + 4, participant, j) % 1000000) / 1e6 < 0.1 END::INTEGER AS response
          FROM t JOIN m USING (image), (VALUES (1), (2)) pr(presentation)
          UNION ALL
          SELECT 'p' || p.p, 'filler_' || p.p || '_' || v.v, 'vigilance', pr.presentation,
                 CASE WHEN p.p % 50 = 7 THEN (hash({seed} + 5, p.p, v.v, pr.presentation) % 2 = 0)
                      ELSE pr.presentation = 2 END::INTEGER
          FROM range({participants}) p(p), range(5) v(v), (VALUES (1), (2)) pr(presentation)
        ) TO '{path}' (FORMAT parquet)
    """)
    return con.sql(f"SELECT count(*) FROM read_parquet('{path}')").fetchall()[0][0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--participants", type=int, default=2_000)
    parser.add_argument("--per-participant", type=int, default=2_500, help="target images per participant (2 trials each)")
    parser.add_argument("--splits", type=int, default=25)
    parser.add_argument("--bootstrap", type=int, default=1_000)
    parser.add_argument("--threads", type=int, default=None, help="DuckDB threads (default: DuckDB's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    con = duckdb.connect()
    if args.threads:
        con.sql(f"SET threads = {args.threads}")
    threads = con.sql("SELECT current_setting('threads')").fetchall()[0][0]
    print(f"DuckDB {duckdb.__version__}, threads {threads}, CPUs {os.cpu_count()}")
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "trials.parquet")
        t0 = time.perf_counter()
        rows = simulate(con, path, args.images, args.participants, args.per_participant, args.seed)
        print(f"simulate {rows:,} trials -> Parquet: {time.perf_counter() - t0:.1f} s, peak {peak_mib():.0f} MiB")

        t0 = time.perf_counter()
        info = load_human(con, path, format="trials", measure="hit_rate", exclusion=Exclusion())
        print(f"read trials + exclusion + per-image hit rate: {time.perf_counter() - t0:.1f} s "
              f"({info.images:,} images, {info.participants['excluded']} of {info.participants['total']} "
              f"participants excluded), peak {peak_mib():.0f} MiB")

        t0 = time.perf_counter()
        images = [r[0] for r in con.sql("SELECT image FROM human ORDER BY image").fetchall()]
        halves = split_halves(con, "trial_counts", images, measure="hit_rate", splits=args.splits, seed=args.seed)
        sh = split_half_summary(halves)
        print(f"split-half, {sh['splits']} splits: {time.perf_counter() - t0:.1f} s; Spearman {sh['spearman_mean']:.3f} "
              f"(sd {sh['spearman_sd']:.3f}), Spearman-Brown {sh['spearman_brown']:.3f}, peak {peak_mib():.0f} MiB")

        # a model score: true memorability plus noise, continuous (float32 like memscore's)
        con.sql(f"""CREATE TEMP TABLE joined AS
            SELECT h.image, h.human,
                   (0.3 + 0.6 * ((hash({args.seed} + 1, TRY_CAST(regexp_extract(h.image, '[0-9]+') AS BIGINT)) % 1000000) / 1e6)
                    + 0.15 * ((hash({args.seed} + 9, h.image) % 1000000) / 1e6 - 0.5))::FLOAT AS score
            FROM human h""")
        rows = con.sql("SELECT score, human FROM joined ORDER BY image").fetchnumpy()
        score, human = np.asarray(rows["score"], dtype=np.float64), np.asarray(rows["human"], dtype=np.float64)
        n = len(human)
        t0 = time.perf_counter()
        stats = analyse_models({"model": score}, human, resamples=args.bootstrap, seed=args.seed, kendall_max_n=0)
        s = stats["models"]["model"]["spearman"]
        print(f"Spearman + Pearson, {args.bootstrap} bootstrap resamples over {n:,} images: "
              f"{time.perf_counter() - t0:.1f} s; rho {s['rho']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}], "
              f"peak {peak_mib():.0f} MiB")
        t0 = time.perf_counter()
        stats = analyse_models({"model": score}, human, halves=halves, resamples=args.bootstrap, seed=args.seed,
                               kendall_max_n=0)
        f = stats["models"]["model"]["fraction_of_noise_ceiling"]["spearman"]
        print(f"... with the noise ceiling and the fraction's interval: {time.perf_counter() - t0:.1f} s; fraction "
              f"{f['value']:.3f} [{f['ci_low']:.3f}, {f['ci_high']:.3f}], peak {peak_mib():.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
