"""Peak memory of engine calls against `Engine.plan`, and an A/B of two engines' time.

    python -m bench.engine_memory memory [--engine FILE] [--case LABELS:LOGITS:DTYPE:DIM ...]
    python -m bench.engine_memory timing --old FILE [--repeat 7]

`memory` runs each case in a fresh process: it builds the engine and the inputs, resets
the RSS high-water mark (/proc/self/clear_refs), calls the engine once with every output,
and reports the high-water mark less the RSS before the call, beside the plan's
output_bytes + work_bytes. ONNX Runtime allocates outside Python's view (tracemalloc does
not see it): the RSS high-water mark sees everything. `--engine FILE` loads another
engine.py (say, `git show HEAD~1:service/engine/engine.py > /tmp/old.py`) for a before
figure; it may lack `plan`.

`timing` runs the engine of this tree and the one in FILE interleaved in one process, best
of `repeat`, on the small request (32x10, loss and loss + both gradients) and on 8192x4096
loss (float32); `--extra` adds every output of 8192x4096 and two broadcasts.

    python -m bench.engine_memory sessions [--rows 8192 --classes 4096 --broadcast 16384]
                                           [--allocator shared|session|none|shrink]
    python -m bench.engine_memory arena [--repeat 7] [--rows 8192 ...]
    python -m bench.engine_memory sessions --providers cuda [--allocator session]

`sessions` runs one large call through each of 44 sessions (every output subset of every
float dtype, the class dim first, the sparse op, a float64 broadcast) in this process and
reports the RSS after each: with an arena per session it grows by each session's arena.
`arena` compares the sessions' allocators (service/engine/sessions.py, plus "shrink": an
arena per session, shrunk after each run): `sessions` for each, each in a fresh process,
then their time interleaved in one process, best of `repeat`, on 32x10 and 8192x4096.
With `--providers cuda`, `sessions` also reports the GPU's used memory after each call
(nvidia-smi: the whole device, so nothing else should run on it).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import itertools
import json
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

EVERYTHING = ["loss", "grad_logits", "grad_labels"]
# labels shape : logits shape : dtype : dim. The first is the hardening issue's request.
CASES = [
    "16384,1:1,16384:float64:-1",
    "16384,1:1,16384:float64:0",  # the class dim first: blocks cut the inner axis
    "64,1,64:1,4096,64:float32:1",  # planes, labels broadcast along the classes
    "128,1,256:128,4096,1:float16:-1",  # both partly broadcast (mixed outer groups), half
    "1,8192:8192,8192:bfloat16:-1",  # TensorFlow's case: one row of labels, half
]
MiB = 1 << 20


def load_engine(path: str | None) -> ModuleType:
    """This tree's engine module, or an engine.py file loaded under another name."""
    if path is None:
        from service.engine import engine

        return engine
    spec = importlib.util.spec_from_file_location("other_engine", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _status(field: str) -> int:
    """A /proc/self/status field in bytes (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _shape(text: str) -> tuple[int, ...]:
    return tuple(int(d) for d in text.split(","))


def measure(
    case: str, engine_file: str | None = None, block_bytes: int | None = None
) -> dict[str, Any]:
    """One call, in this process (meant to be a fresh one): peak RSS growth and the plan."""
    from service.engine.types import SOFT_OP, DType

    module = load_engine(engine_file)
    if block_bytes is not None:
        setattr(module, "BLOCK_BYTES", block_bytes)  # noqa: B010 (a module, typed loosely)
    # labels : logits : dtype : dim [: options], options "chunked" and/or "weighted"
    # (class and sample weights, smoothing 0.1, reduction mean)
    labels_text, logits_text, dtype_name, dim_text, *extra = case.split(":")
    flags = set(extra[0].split("+")) if extra else set()
    dtype = DType[dtype_name]
    engine = module.Engine(
        providers="cpu", **({"chunked_softmax": True} if "chunked" in flags else {})
    )
    rng = np.random.default_rng(0)
    labels = rng.random(_shape(labels_text)).astype(dtype.numpy)
    logits = rng.standard_normal(_shape(logits_text)).astype(dtype.numpy)
    dim = int(dim_text)
    options: dict[str, Any] = {}
    if "weighted" in flags:
        from service.engine.types import Options

        full = np.broadcast_shapes(labels.shape, logits.shape)
        loss_shape = full[: dim % len(full)] + full[dim % len(full) + 1 :]
        options = {
            "class_weights": rng.random(full[dim]).astype(dtype.numpy),
            "sample_weights": rng.random(loss_shape).astype(dtype.numpy),
            "options": Options("mean", 0.1),
        }
    specs = {k: (v.shape, DType.of(v)) for k, v in options.items() if isinstance(v, np.ndarray)}
    plan = None
    if hasattr(engine, "plan"):
        p = engine.plan(
            SOFT_OP,
            labels=(labels.shape, dtype),
            logits=(logits.shape, dtype),
            grad_loss=None,
            outputs=EVERYTHING,
            dim=dim,
            **specs,
            **({"options": options["options"]} if options else {}),
        )
        plan = {"elements": p.elements, "output_bytes": p.output_bytes, "work_bytes": p.work_bytes}
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # the high-water mark starts again here
    before = _status("VmRSS")
    start = time.perf_counter()
    result = engine.softmax_cross_entropy(
        labels=labels, logits=logits, dim=dim, outputs=EVERYTHING, **options
    )
    seconds = time.perf_counter() - start
    peak = _status("VmHWM") - before
    del result
    gc.collect()
    return {
        "case": case,
        "inputs": labels.nbytes + logits.nbytes,
        "peak": peak,
        "retained": _status("VmRSS") - before,  # ONNX Runtime's arena keeps its blocks
        "seconds": round(seconds, 3),
        "plan": plan,
    }


def measure_in_subprocess(
    case: str, engine_file: str | None = None, block_bytes: int | None = None
) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.engine_memory", "case", case]
    if engine_file:
        command += ["--engine", engine_file]
    if block_bytes is not None:
        command += ["--block-bytes", str(block_bytes)]
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(command, cwd=root, capture_output=True, text=True, check=True, timeout=600)
    answer: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return answer


def _best(call: Callable[[], object], repeat: int, number: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            call()
        best = min(best, (time.perf_counter() - start) / number)
    return best


def timing(old_file: str, repeat: int, extra: bool) -> None:
    new_module, old_module = load_engine(None), load_engine(old_file)
    engines = {"old": old_module.Engine(providers="cpu"), "new": new_module.Engine(providers="cpu")}
    rng = np.random.default_rng(0)
    cases = []
    for labels_shape, logits_shape, outputs, number in (
        ((32, 10), (32, 10), ["loss"], 2000),
        ((32, 10), (32, 10), EVERYTHING, 2000),
        ((8192, 4096), (8192, 4096), ["loss"], 3),
        ((8192, 4096), (8192, 4096), EVERYTHING, 2),  # more than this: --extra
        ((1, 1000), (1024, 1000), EVERYTHING, 20),  # TensorFlow's broadcast case
        ((1024, 1), (1, 1000), EVERYTHING, 20),  # the hardening issue's shape, smaller
    )[: None if extra else 3]:
        labels = rng.random(labels_shape).astype(np.float32)
        logits = rng.standard_normal(logits_shape).astype(np.float32)
        cases.append((labels_shape, logits_shape, outputs, number, labels, logits))
    for labels_shape, logits_shape, outputs, number, labels, logits in cases:
        times: dict[str, list[float]] = {name: [] for name in engines}
        for _ in range(repeat):  # interleaved: old, new, old, new, ...
            for name, engine in engines.items():
                call = partial(
                    engine.softmax_cross_entropy, labels=labels, logits=logits, outputs=outputs
                )
                times[name].append(_best(call, 1, number))
        old, new = min(times["old"]), min(times["new"])
        shapes = "x".join(map(str, labels_shape)) + " " + "x".join(map(str, logits_shape))
        print(
            f"{shapes:>20} {'+'.join(outputs):<30} old {old * 1e6:10.1f} us"
            f"  new {new * 1e6:10.1f} us  new/old {new / old:.3f}"
        )


# --- the sessions' allocator --------------------------------------------------------------

# sessions.py's allocators, and one it does not offer: an arena per session, shrunk after
# each run (ONNX Runtime frees the arena's unused regions when the run ends).
ALLOCATORS = ("shared", "session", "none", "shrink")


class _Shrinking:
    """A session whose arena is shrunk after each run; the engine sees a session."""

    def __init__(self, session: Any, run_options: Any) -> None:
        self._session, self._run_options = session, run_options

    def io_binding(self) -> Any:
        return self._session.io_binding()

    def run_with_iobinding(self, binding: Any, run_options: Any = None) -> None:
        self._session.run_with_iobinding(binding, self._run_options)

    def get_providers(self) -> list[str]:
        providers: list[str] = self._session.get_providers()
        return providers


def build_engine(allocator: str | None = None, providers: str = "cpu") -> Any:
    """This tree's engine, its sessions made with `allocator` (None: sessions.py's default)."""
    import onnxruntime as ort

    from service.engine import sessions
    from service.engine.engine import Engine

    if allocator is None:
        return Engine(providers=providers)
    if allocator not in ALLOCATORS:
        raise ValueError(f"unknown allocator {allocator!r}; expected one of {ALLOCATORS}")
    kinds: dict[str, sessions.Allocator] = {
        "shared": "shared",
        "session": "session",
        "none": "none",
        "shrink": "session",
    }
    original = sessions.session_options
    setattr(sessions, "session_options", partial(original, allocator=kinds[allocator]))  # noqa: B010
    try:
        engine = Engine(providers=providers)
    finally:
        setattr(sessions, "session_options", original)  # noqa: B010
    if allocator == "shrink":
        run_options = ort.RunOptions()
        run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        engine._sessions = {k: _Shrinking(v, run_options) for k, v in engine._sessions.items()}
    return engine


def _session_calls(
    rows: int, classes: int, broadcast: int
) -> list[tuple[str, Callable[[Any], object]]]:
    """One large call through each of many sessions, as (label, call on an engine).

    Every input is made here, before any call: the RSS after the first call counts them.
    """
    from service.engine.types import DType

    rng = np.random.default_rng(0)
    calls: list[tuple[str, Callable[[Any], object]]] = []
    subsets = [list(c) for k in (1, 2, 3) for c in itertools.combinations(EVERYTHING, k)]
    subsets.insert(0, subsets.pop())  # every output first: the float32 one opens
    sparse_labels = rng.integers(0, classes, rows)
    for dtype in (DType.float32, DType.float64, DType.float16, DType.bfloat16):
        y = rng.random((rows, classes), dtype=np.float32).astype(dtype.numpy)
        x = rng.standard_normal((rows, classes), dtype=np.float32).astype(dtype.numpy)
        for outputs in subsets:
            label = f"{dtype.name} [{rows},{classes}] {'+'.join(outputs)}"
            soft = partial(_soft_call, labels=y, logits=x, dim=-1, outputs=outputs)
            calls.append((label, soft))
        label = f"{dtype.name} [{rows},{classes}] dim 0 {'+'.join(EVERYTHING)}"
        calls.append((label, partial(_soft_call, labels=y, logits=x, dim=0, outputs=EVERYTHING)))
        for outputs in (["loss"], ["grad_logits"], ["loss", "grad_logits"]):
            label = f"{dtype.name} [{rows},{classes}] sparse {'+'.join(outputs)}"
            sparse = partial(_sparse_call, labels=sparse_labels, logits=x, outputs=outputs)
            calls.append((label, sparse))
    y = rng.random((broadcast, 1))
    x = rng.standard_normal((1, broadcast))
    label = f"float64 [{broadcast},1] x [1,{broadcast}] {'+'.join(EVERYTHING)}"
    calls.append((label, partial(_soft_call, labels=y, logits=x, dim=-1, outputs=EVERYTHING)))
    return calls


def _soft_call(engine: Any, **kwargs: Any) -> None:
    engine.softmax_cross_entropy(**kwargs)


def _sparse_call(engine: Any, **kwargs: Any) -> None:
    engine.sparse_softmax_cross_entropy(**kwargs)


def gpu_query(field: str) -> int:
    """One of GPU 0's figures from nvidia-smi, as a number in its own unit."""
    out = subprocess.run(
        ["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader,nounits", "-i", "0"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return int(out.stdout.split()[0])


def gpu_used() -> int:
    """Bytes in use on GPU 0, by every process."""
    return gpu_query("memory.used") * MiB


def many_sessions(
    rows: int = 8192,
    classes: int = 4096,
    broadcast: int = 16384,
    allocator: str | None = None,
    providers: str = "cpu",
) -> dict[str, Any]:
    """One large call through each of many sessions, once each has made a tiny call: the
    process's RSS after each, and the GPU's used memory on CUDA."""
    engine = build_engine(allocator, providers)
    # The same calls, tiny, first: they build the sessions that a CUDA engine makes on
    # first use, so that what follows measures the large calls' memory, not sessions'.
    for _, call in _session_calls(8, 16, 16):
        call(engine)
    calls = _session_calls(rows, classes, broadcast)
    rss: list[int] = []
    gpu: list[int] = []
    seconds: list[float] = []
    for _, call in calls:
        start = time.perf_counter()
        call(engine)
        seconds.append(round(time.perf_counter() - start, 3))
        gc.collect()
        rss.append(_status("VmRSS"))
        if providers == "cuda":
            gpu.append(gpu_used())
    return {
        "allocator": allocator or "default",
        "providers": engine.providers,
        "labels": [label for label, _ in calls],
        "rss": rss,
        "gpu": gpu,
        "seconds": seconds,
    }


def many_sessions_in_subprocess(
    rows: int,
    classes: int,
    broadcast: int,
    allocator: str | None = None,
    providers: str = "cpu",
) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.engine_memory", "sessions", "--rows", str(rows)]
    command += ["--classes", str(classes), "--broadcast", str(broadcast)]
    command += ["--providers", providers]
    if allocator is not None:
        command += ["--allocator", allocator]
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(command, cwd=root, capture_output=True, text=True, check=True, timeout=600)
    answer: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return answer


def arena(repeat: int, rows: int, classes: int, broadcast: int, rss: bool = True) -> None:
    """Each allocator's RSS after many sessions' large calls, then their time, A/B/C/D."""
    if rss:
        print(f"RSS after one call through each of many sessions ({rows}x{classes} ...):")
    for allocator in ALLOCATORS if rss else ():
        r = many_sessions_in_subprocess(rows, classes, broadcast, allocator)
        growth = [(v - r["rss"][0]) / MiB for v in r["rss"]]
        print(
            f"  {allocator:<8} after the first {r['rss'][0] / MiB:7.0f} MiB; then up to "
            f"+{max(growth):6.0f} MiB, +{growth[-1]:6.0f} MiB after the last "
            f"({len(growth)} calls, {sum(r['seconds']):.1f} s)"
        )
    engines = {allocator: build_engine(allocator) for allocator in ALLOCATORS}
    rng = np.random.default_rng(0)
    # Wall time, and the process's CPU time (both threads of the pool, and the kernel's page
    # faults): on a shared machine the other tenants' load moves the first more than the second.
    print(f"time, best of {repeat} interleaved, wall / CPU (x: against {ALLOCATORS[0]}):")
    for shape, outputs, number in (
        ((32, 10), ["loss"], 2000),
        ((32, 10), EVERYTHING, 2000),
        ((8192, 4096), ["loss"], 2),
        ((8192, 4096), ["loss", "grad_logits"], 1),
        ((8192, 4096), EVERYTHING, 1),
    ):
        labels = rng.random(shape, dtype=np.float32)
        logits = rng.standard_normal(shape, dtype=np.float32)
        wall: dict[str, list[float]] = {name: [] for name in engines}
        cpu: dict[str, list[float]] = {name: [] for name in engines}
        for turn in range(repeat):  # interleaved, in turns forward and backward
            for name, engine in list(engines.items())[:: 1 if turn % 2 == 0 else -1]:
                start, start_cpu = time.perf_counter(), time.process_time()
                for _ in range(number):
                    engine.softmax_cross_entropy(labels=labels, logits=logits, outputs=outputs)
                wall[name].append((time.perf_counter() - start) / number)
                cpu[name].append((time.process_time() - start_cpu) / number)
        w0, c0 = min(wall[ALLOCATORS[0]]), min(cpu[ALLOCATORS[0]])
        cells = "  ".join(
            f"{name} {min(wall[name]) * 1e6:8.0f}/{min(cpu[name]) * 1e6:8.0f} us "
            f"({min(wall[name]) / w0:.2f}/{min(cpu[name]) / c0:.2f}x)"
            for name in engines
        )
        print(f"  {'x'.join(map(str, shape)):>9} {'+'.join(outputs):<30} {cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("case", help="one case in this process; prints JSON")
    one.add_argument("case")
    one.add_argument("--engine")
    one.add_argument("--block-bytes", type=int)
    many = sub.add_parser("memory", help="every case, each in a fresh process")
    many.add_argument("--engine")
    many.add_argument("--case", nargs="*", default=CASES)
    ab = sub.add_parser("timing", help="interleaved A/B of this engine against another")
    ab.add_argument("--old", required=True)
    ab.add_argument("--repeat", type=int, default=7)
    ab.add_argument("--extra", action="store_true", help="also all outputs, and broadcasts")
    across = sub.add_parser("sessions", help="a large call through many sessions; prints JSON")
    compare = sub.add_parser("arena", help="the sessions' allocators: RSS and time")
    compare.add_argument("--repeat", type=int, default=7)
    compare.add_argument("--time-only", action="store_true", help="skip the RSS part")
    for command in (across, compare):
        command.add_argument("--rows", type=int, default=8192)
        command.add_argument("--classes", type=int, default=4096)
        command.add_argument("--broadcast", type=int, default=16384)
    across.add_argument("--allocator", choices=ALLOCATORS)
    across.add_argument("--providers", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()
    if args.command == "sessions":
        r = many_sessions(args.rows, args.classes, args.broadcast, args.allocator, args.providers)
        print(json.dumps(r))
    elif args.command == "arena":
        arena(args.repeat, args.rows, args.classes, args.broadcast, not args.time_only)
    elif args.command == "case":
        print(json.dumps(measure(args.case, args.engine, args.block_bytes)))
    elif args.command == "memory":
        for case in args.case:
            r = measure_in_subprocess(case, args.engine)
            plan = r["plan"]
            bound = (
                f"{(plan['output_bytes'] + plan['work_bytes']) / MiB:8.1f}" if plan else "       -"
            )
            print(
                f"{case:<36} inputs {r['inputs'] / MiB:7.1f} MiB  peak {r['peak'] / MiB:8.1f} MiB"
                f"  outputs+work {bound} MiB  retained {r['retained'] / MiB:7.1f} MiB"
                f"  {r['seconds']:.2f} s"
            )
    else:
        timing(args.old, args.repeat, args.extra)


if __name__ == "__main__":
    main()
