"""Where the time of a real ``score-archive`` run goes: is the model ever waiting for data?

Runs the flow in this process (a temporary Prefect API, as ``memscore score`` does)
with thin wrappers around three internals: the model runner's ``submit`` (how long
each batch's forward takes), ``score_images`` (when each shard starts and ends) and
the DataLoader (when each batch arrives). It then prints, between the first and the
last forward, the share of time the model was busy, the gap before each shard's
first batch, the gaps between shards, and the model's time per image inside the
run. Busy close to 100% means decoding and I/O are hidden behind the model; the
rest is what the pipeline costs. Compare the in-run time per image with
``bench_score.py``'s model-only figure measured close in time (this machine's speed
drifts by up to 20% from minute to minute, so interleave runs).

    python benchmarks/trace_score.py SOURCE DEST [--shard-size 64] [--workers 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source")
    parser.add_argument("dest")
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None, help="decode workers (default: memscore's)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    import memscore.flows.score as flow_module
    import memscore.tasks.score as score_module

    forwards: list[tuple[float, float, int]] = []  # start, end, images
    shards: list[tuple[float, float]] = []
    arrivals: list[float] = []

    class TimedRunner:
        def __init__(self, runner):
            self.runner = runner

        def submit(self, pixels, layers):
            started = time.perf_counter()
            pending = self.runner.submit(pixels, layers)
            if pixels.is_cuda:
                import torch

                torch.cuda.synchronize(pixels.device)
            forwards.append((started, time.perf_counter(), pixels.shape[0]))
            return pending

    get_runner, score_images, make_loader = score_module.get_runner, score_module.score_images, score_module._loader
    score_module.get_runner = lambda model, speed: TimedRunner(get_runner(model, speed))

    def timed_score_images(*a, **k):
        started = time.perf_counter()
        result = score_images(*a, **k)
        shards.append((started, time.perf_counter()))
        return result

    def timed_loader(*a, **k):
        loader = make_loader(*a, **k)

        def batches():
            for batch in loader:
                arrivals.append(time.perf_counter())
                yield batch
        return batches()

    score_module.score_images = timed_score_images  # tasks.pipeline.score_shard looks it up at call time
    score_module._loader = timed_loader
    started = time.perf_counter()
    from memscore.tasks.pipeline import ScoreRequest

    summary = flow_module.score_archive(ScoreRequest(source=args.source, destination=args.dest, device=args.device,
                                                     shard_size=args.shard_size, workers=args.workers))
    total = time.perf_counter() - started
    if not forwards:
        print("no image was scored")
        return 1
    first, last = forwards[0][0], forwards[-1][1]
    busy = sum(end - start for start, end, _ in forwards)
    images = sum(n for _, _, n in forwards)
    print(f"run: {summary['scored']} scored, {summary['failed']} failed in {summary['shards']} shard(s), "
          f"{total:.1f} s in all; first forward after {first - started:.1f} s (Prefect start, model load, first batch)")
    print(f"between the first and the last forward ({last - first:.1f} s): model busy {busy / (last - first):.1%}, "
          f"{images / (last - first):.3f} img/s; model {busy / images * 1000:.1f} ms per image")
    for index, (begin, end) in enumerate(shards):
        inside = [f for f in forwards if begin <= f[0] <= end]
        if inside:
            print(f"  shard {index}: {end - begin:.1f} s; first forward {inside[0][0] - begin:.2f} s after the shard "
                  f"started; model idle {end - begin - sum(e - s for s, e, _ in inside):.2f} s")
    for (_, end), (begin, _) in zip(shards, shards[1:]):
        print(f"  between shards (write, next task): {begin - end:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
