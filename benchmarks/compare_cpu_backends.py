"""Compare CPU backends for ResMem's forward pass, interleaved, on the same real photos.

Times our torch module (the CPU default: fp32, channels_last, BatchNorm folded),
``--backend onnxruntime`` (memscore's runner), and, for comparison only, OpenVINO
on the same exported ONNX file (when ``openvino`` is installed; not a memscore
backend) and ``torch.compile`` with inductor's ``freezing`` (``--compile``). Each
round runs every backend once over the same batches, so they see the same machine
load; prints images/s per round and each backend's max |score difference| from
the torch default.

Usage (from the repository root; JPEGs from ``bench_score.py``'s archive or any folder)::

    python benchmarks/compare_cpu_backends.py --images /tmp/bench/archive-384-0 --n 64 --rounds 3 --compile
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", required=True, help="a folder of JPEGs (searched recursively)")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also torch.compile with freezing (tens of seconds to compile)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    from PIL import Image

    from memscore.models.onnx_runtime import exported_path
    from memscore.models.preprocess import resmem_transform, to_model_input
    from memscore.models.registry import load_model
    from memscore.models.speed import SpeedSettings, prepare

    files = sorted(p for p in Path(args.images).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))[: args.n]
    pixels = torch.stack([resmem_transform(Image.open(p)) for p in files])
    batches = [pixels[i:i + args.batch_size] for i in range(0, len(pixels), args.batch_size)]
    torch_loaded = load_model("resmem", None, "cpu")
    torch_runner = prepare(torch_loaded, SpeedSettings())
    onnx_loaded = load_model("resmem", None, "cpu")
    onnx_runner = prepare(onnx_loaded, SpeedSettings(backend="onnxruntime"))
    backends = {"torch (default)": lambda b: torch_runner(b, [])[0],
                "onnxruntime": lambda b: onnx_runner(b, [])[0]}
    setup: dict[str, float] = {}
    if importlib.util.find_spec("openvino") is not None:
        import openvino

        started = time.perf_counter()
        compiled = openvino.Core().compile_model(
            str(exported_path(onnx_loaded, folded=True)), "CPU",
            {"INFERENCE_NUM_THREADS": torch.get_num_threads(), "INFERENCE_PRECISION_HINT": "f32"})
        request = compiled.create_infer_request()
        setup["openvino"] = time.perf_counter() - started
        backends["openvino (comparison only)"] = lambda b: request.infer({0: to_model_input(b).numpy()})[compiled.outputs[0]]
    if args.compile:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        module = torch_loaded.module
        compiled_forward = torch.compile(lambda x: module.forward_features(x, ())[0], dynamic=False)

        def run_compiled(b):
            with torch.inference_mode():
                return compiled_forward(to_model_input(b).contiguous(memory_format=torch.channels_last)).numpy()

        started = time.perf_counter()
        run_compiled(batches[0])
        setup["torch.compile"] = time.perf_counter() - started
        backends["torch.compile (freezing)"] = run_compiled

    reference = np.concatenate([np.asarray(backends["torch (default)"](b)) for b in batches])
    results = {name: {"rates": [], "max_abs_diff": float(np.abs(
        np.concatenate([np.asarray(fn(b)) for b in batches]) - reference).max())} for name, fn in backends.items()}
    for round_index in range(args.rounds):
        for name, fn in backends.items():
            started = time.perf_counter()
            for b in batches:
                fn(b)
            results[name]["rates"].append(len(pixels) / (time.perf_counter() - started))
        print(f"round {round_index + 1}: " + "; ".join(f"{n} {r['rates'][-1]:.2f}" for n, r in results.items()), flush=True)
    print(f"\n{len(pixels)} images, batch {args.batch_size}, {torch.get_num_threads()} threads; setup: "
          + ", ".join(f"{k} {v:.1f} s" for k, v in setup.items()))
    print("| backend | img/s per round | max |diff| vs torch default |\n|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {' / '.join(f'{x:.2f}' for x in r['rates'])} | {r['max_abs_diff']:.1e} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"setup_seconds": setup, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
