"""Two probes of ONNX Runtime's CUDA provider, on a GPU machine with onnxruntime-gpu.

    python -m bench.cuda_probes streams ["{'use_ep_level_unified_stream': '1'}"]
    python -m bench.cuda_probes profile

`streams`: GPU 0's used memory (nvidia-smi) per session, after making 20 sessions of one
graph with the given CUDA provider options, and after one 32x10 run through each.
`profile`: ONNX Runtime's profiler on the soft graphs (loss; loss + both gradients;
grad_logits) with inputs and outputs in device memory, at 8192x32000 and 1024x1000: the
mean time of 5 runs after 2, and the nodes' kernel time (mean over all 7 runs).
"""

from __future__ import annotations

import argparse
import ast
import json
import time

import numpy as np
import onnxruntime as ort

from bench.engine_memory import MiB, gpu_used
from service.engine import graphs
from service.engine.types import DType, Output

SESSIONS = 20


def streams(options: dict[str, str]) -> None:
    model = graphs.soft_graph(DType.float32, 2, ["loss"]).SerializeToString()
    session_options = ort.SessionOptions()
    session_options.log_severity_level = 3
    providers = [("CUDAExecutionProvider", options), "CPUExecutionProvider"]
    base = gpu_used() // MiB
    made = [
        ort.InferenceSession(model, session_options, providers=providers) for _ in range(SESSIONS)
    ]
    after_made = gpu_used() // MiB
    x = np.zeros((32, 10), np.float32)
    for session in made:
        session.run(None, {"labels": x, "logits": x})
    after_run = gpu_used() // MiB
    print(
        options,
        "per session MiB: made",
        (after_made - base) / SESSIONS,
        "first run",
        (after_run - after_made) / SESSIONS,
        "base",
        base,
    )


def profile() -> None:
    rng = np.random.default_rng(0)
    wanted: list[list[Output]] = [
        ["loss"],
        ["loss", "grad_logits", "grad_labels"],
        ["grad_logits"],
    ]
    for shape in ((8192, 32000), (1024, 1000)):
        x = rng.standard_normal(shape, dtype=np.float32)
        y = np.full(shape, 1.0 / shape[1], np.float32)
        for outs in wanted:
            model = graphs.soft_graph(DType.float32, 2, outs)
            options = ort.SessionOptions()
            options.enable_profiling = True
            session = ort.InferenceSession(
                model.SerializeToString(), options, providers=["CUDAExecutionProvider"]
            )
            binding = session.io_binding()
            feeds = {"labels": y, "logits": x}
            if outs != ["loss"]:
                feeds["grad_loss"] = np.ones((shape[0], 1), np.float32)
            for name, array in feeds.items():
                binding.bind_ortvalue_input(
                    name, ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0)
                )
            for name in outs:
                binding.bind_output(name, "cuda", 0)
            for _ in range(2):
                session.run_with_iobinding(binding)
            start = time.perf_counter()
            for _ in range(5):
                session.run_with_iobinding(binding)
            ms = (time.perf_counter() - start) / 5 * 1e3
            with open(session.end_profiling()) as f:
                events = json.load(f)
            nodes: dict[str, float] = {}
            for e in events:
                if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                    provider = e["args"].get("provider", "")[:4]
                    key = e["name"][: -len("_kernel_time")] + "@" + provider
                    nodes[key] = nodes.get(key, 0) + e["dur"] / 7
            top = sorted(nodes.items(), key=lambda kv: -kv[1])[:5]
            print(shape, outs, f"{ms:.2f} ms", [(k, round(v)) for k, v in top])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    probe = sub.add_parser("streams", help="device memory per CUDA session")
    probe.add_argument("options", nargs="?", default="{}", help="CUDA provider options")
    sub.add_parser("profile", help="the soft graphs' kernels, in device memory")
    args = parser.parse_args()
    if args.command == "streams":
        streams(ast.literal_eval(args.options))
    else:
        profile()


if __name__ == "__main__":
    main()
