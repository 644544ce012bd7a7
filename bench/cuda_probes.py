"""Probes of ONNX Runtime's CUDA provider, on a GPU machine with onnxruntime-gpu.

    python -m bench.cuda_probes streams ["{'use_ep_level_unified_stream': '1'}"]
    python -m bench.cuda_probes profile
    python -m bench.cuda_probes creation soft|identity shared|session
    python -m bench.cuda_probes start
    python -m bench.cuda_probes idle

`streams`: GPU 0's used memory (nvidia-smi) per session, after making 20 sessions of one
graph with the given CUDA provider options, and after one 32x10 run through each.
`profile`: ONNX Runtime's profiler on the soft graphs (loss; loss + both gradients;
grad_logits) with inputs and outputs in device memory, at 8192x32000 and 1024x1000: the
mean time of 5 runs after 2, and the nodes' kernel time (mean over all 7 runs).
`creation`: GPU 0's used memory and the time per session, making 20 sessions with the
engine's options (sessions.CUDA_OPTIONS; the shared arena or one per session), of the
soft graph or of a graph of one Identity node: what a CUDA session costs by itself
(with cuBLAS's default workspace, unless CUBLAS_WORKSPACE_CONFIG is set).
`start`: a fresh engine on CUDA, as JSON: GPU 0's used memory before it, after it is
made, and after a 32 x 10 call in each dtype (tests/test_cuda.py reads it).
`idle`: a device-resident 8192 x 32000 loss, each run timed, back to back and after
host-only work (idling, a copy, numpy, PyTorch on the CPU), with the SM clock before each.
"""

from __future__ import annotations

import argparse
import ast
import json
import time
from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort

from bench.engine import device_binding
from bench.engine_memory import MiB, gpu_query, gpu_used
from service.engine import graphs, sessions
from service.engine.types import FLOAT_DTYPES, DType, Output

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
            options = ort.SessionOptions()
            options.enable_profiling = True
            session, binding = device_binding(outs, y, x, options)
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


def creation(graph: str, allocator: sessions.Allocator) -> None:
    if graph == "identity":
        node = onnx.helper.make_node("Identity", ["x"], ["y"])
        value = onnx.helper.make_tensor_value_info
        model = onnx.helper.make_model(
            onnx.helper.make_graph(
                [node],
                "identity",
                [value("x", onnx.TensorProto.FLOAT, [None])],
                [value("y", onnx.TensorProto.FLOAT, [None])],
            ),
            opset_imports=[onnx.helper.make_opsetid("", 18)],
            ir_version=8,
        )
    else:
        model = graphs.soft_graph(DType.float32, 2, ["loss"])
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    options = sessions.session_options(1, allocator=allocator, providers=providers)
    first = sessions.create_session(model, providers=providers, options=options)
    assert first.get_providers()[0] == "CUDAExecutionProvider", first.get_providers()
    base = gpu_used() // MiB
    start = time.perf_counter()
    made = [
        sessions.create_session(model, providers=providers, options=options)
        for _ in range(SESSIONS)
    ]
    ms = (time.perf_counter() - start) / SESSIONS * 1e3
    print(
        f"{graph} {allocator}: per session {(gpu_used() // MiB - base) / SESSIONS:.1f} MiB, "
        f"{ms:.1f} ms to make (over {len(made)}, after one); used before {base} MiB"
    )


def start() -> None:
    from service.engine.engine import Engine

    before = gpu_used()
    engine = Engine(providers="cuda")
    made = gpu_used()
    rng = np.random.default_rng(0)
    for dtype in FLOAT_DTYPES:
        x = rng.standard_normal((32, 10)).astype(dtype.numpy)
        engine.softmax_cross_entropy(labels=x, logits=x, outputs=["loss"])
    used = gpu_used()
    print(
        json.dumps(
            {
                "providers": engine.providers,
                "before": before,
                "made": made,
                "after_calls": used,
                "sessions": len(engine._sessions),
            }
        )
    )


def idle() -> None:
    rng = np.random.default_rng(0)
    shape = (8192, 32000)
    x = rng.standard_normal(shape, dtype=np.float32)
    y = np.full(shape, 1.0 / shape[1], np.float32)
    session, binding = device_binding(["loss"], y, x)
    import torch

    x_host, y_host = torch.from_numpy(x), torch.from_numpy(y)
    interludes: list[tuple[str, Callable[[], object]]] = [
        ("nothing", lambda: None),
        ("nothing", lambda: None),
        ("nothing", lambda: None),
        ("nothing", lambda: None),
        ("2 s idle", lambda: time.sleep(2)),
        ("nothing", lambda: None),
        ("a host copy of the logits", x.copy),
        ("nothing", lambda: None),
        ("numpy exp of the logits", lambda: np.exp(x)),
        ("nothing", lambda: None),
        ("PyTorch's CPU loss", lambda: torch.nn.functional.cross_entropy(x_host, y_host)),
        ("nothing", lambda: None),
        ("PyTorch's CPU loss, then 1 s idle", lambda: _then_sleep(x_host, y_host)),
    ]
    for what, interlude in interludes:
        interlude()
        clock = gpu_query("clocks.sm")  # MHz
        begin = time.perf_counter()
        session.run_with_iobinding(binding)
        took = (time.perf_counter() - begin) * 1e3
        print(f"after {what}: SM {clock} MHz, {took:.2f} ms")


def _then_sleep(x: object, y: object) -> None:
    import torch

    torch.nn.functional.cross_entropy(x, y)  # type: ignore[arg-type]
    time.sleep(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    probe = sub.add_parser("streams", help="device memory per CUDA session")
    probe.add_argument("options", nargs="?", default="{}", help="CUDA provider options")
    sub.add_parser("profile", help="the soft graphs' kernels, in device memory")
    made = sub.add_parser("creation", help="device memory and time per CUDA session")
    made.add_argument("graph", choices=["soft", "identity"])
    made.add_argument("allocator", choices=["shared", "session"])
    sub.add_parser("start", help="a fresh CUDA engine's device memory, as JSON")
    sub.add_parser("idle", help="a device-resident run after the GPU idles")
    args = parser.parse_args()
    if args.command == "streams":
        streams(ast.literal_eval(args.options))
    elif args.command == "creation":
        creation(args.graph, args.allocator)
    elif args.command == "start":
        start()
    elif args.command == "idle":
        idle()
    else:
        profile()


if __name__ == "__main__":
    main()
