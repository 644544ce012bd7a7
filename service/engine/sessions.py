"""ONNX Runtime sessions: providers, thread pools, and what is really in use."""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import onnx

try:
    import onnxruntime as ort
except ImportError as exc:  # the package comes from an extra: cpu or gpu, never both
    raise ImportError(
        "ONNX Runtime is not installed: pip install 'softmax-xent-service[cpu]' "
        "(or '[gpu]' for onnxruntime-gpu)"
    ) from exc

from service.engine.graphs import ONNX_TYPES
from service.engine.types import DType
from service.errors import EngineFailure

InferenceSession = ort.InferenceSession

log = logging.getLogger(__name__)

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
}


# One stream for each CUDA session's work, the provider's own: with the default (a stream
# per thread that runs the session), each session held another ~74 MiB of device memory
# after its first run; with this, 1 MiB (ORT 1.31.1, H100; `python -m bench.cuda_probes
# streams`): 5.8 GiB against 0.08 over 80 sessions.
CUDA_OPTIONS = {"use_ep_level_unified_stream": "1"}

# Each CUDA session makes its own cuBLAS handle, and cuBLAS gives each handle a workspace
# for matrix products: 64 of the 73.4 MiB of device memory that a session held from its
# creation, whatever its graph (ORT 1.31.1, H100; `python -m bench.cuda_probes creation`:
# 9.3 MiB without). The graphs have no matrix product, so there is none, unless the
# deployment's environment names a workspace itself. Read by cuBLAS when it loads.
CUBLAS_WORKSPACE_CONFIG = ":0:0"


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The container's CPU quota in CPUs (cgroup v2 `cpu.max`, else v1), or None if unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def usable_cpus(root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: affinity, capped by the cgroup quota (not the host's count)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cpus = min(cpus, max(1, math.ceil(limit)))
    return max(1, cpus)


# Where a session's intermediates come from (the inputs and outputs are the caller's numpy
# buffers, bound in place). ONNX Runtime gives each session its own CPU arena by default,
# and an arena keeps its high-water mark: the engine's ~80 sessions (one per dtype, layout
# and output subset) each kept 14-150 MiB after one large call, so that a server that had
# seen every kind of request held the sum of them all, out of proportion to any request.
# `python -m bench.engine_memory arena`: RSS growth after one 8192x4096 call through each
# of 44 sessions (45 calls), over the RSS after the first; time against "shared", best of 15:
#   "shared": one arena for every session of the process (the default). It keeps the
#     high-water mark of the calls in flight at once (what the per-request budget admits),
#     whichever sessions ran them: +44 MiB, against +944 MiB with an arena each, at the
#     same speed (32x10 and 8192x4096 within 5%, run to run, either way).
#   "session": an arena per session (ONNX Runtime's default; kept for the bench's A/B).
#   "none": no arena, malloc and free: +418 MiB (glibc keeps the freed blocks, its mmap
#     threshold having risen to their size after the first free), and 8192x4096 gradients
#     1.1-1.25x slower; with a fixed low mmap threshold glibc returns them, at 2x the time.
# (A session arena shrunk after each run, RunOptions memory.enable_memory_arena_shrinkage:
# +563 MiB, a 32x10 call 2.2-2.7x slower and 8192x4096 1.1-1.4x: not offered.)
Allocator = Literal["shared", "session", "none"]

# The shared arena grows by what is asked, not by doubling regions (kNextPowerOfTwo), so
# that its size follows the largest calls' needs; max_mem 0 is ONNX Runtime's default (no
# cap): the server's admission of requests by their planned memory is what bounds it, and
# a cap would turn a call past it into a failed run, not into a wait.
SHARED_ARENA = {"max_mem": 0, "arena_extend_strategy": 1}  # 1: kSameAsRequested
_shared_arena_lock = threading.Lock()
_shared_arenas: set[str] = set()  # the providers whose arena this process has registered


def register_shared_arena(providers: Sequence[str] = ("CPUExecutionProvider",)) -> None:
    """Register, once per process, the arenas that sessions made with "shared" use: the
    CPU's, and GPU 0's when `providers` has CUDA.

    They live in ONNX Runtime's process-wide environment, beside every session of every
    engine in this process; a session takes them with `session.use_env_allocators`. On
    the GPU the reason is the CPU's, in device memory: each CUDA session kept its own
    arena at its high-water mark (`python -m bench.engine_memory sessions --providers
    cuda`). Where ONNX Runtime cannot register the CUDA one, sessions keep their own.
    """
    with _shared_arena_lock:
        if "CPUExecutionProvider" not in _shared_arenas:
            info = ort.OrtMemoryInfo(
                "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
            )
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(SHARED_ARENA))
            _shared_arenas.add("CPUExecutionProvider")
        if "CUDAExecutionProvider" in providers and "CUDAExecutionProvider" not in _shared_arenas:
            info = ort.OrtMemoryInfo(
                "Cuda", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
            )
            try:
                ort.create_and_register_allocator_v2(
                    "CUDAExecutionProvider", info, {}, ort.OrtArenaCfg(SHARED_ARENA)
                )
            except Exception as exc:  # an older build: each session keeps its own arena
                log.warning("no shared CUDA arena (%s): each session keeps its own", exc)
            _shared_arenas.add("CUDAExecutionProvider")


def session_options(
    intra_op_threads: int,
    *,
    allocator: Allocator = "shared",
    providers: Sequence[str] = ("CPUExecutionProvider",),
) -> ort.SessionOptions:
    """Explicit options: one thread pool sized for this container, full graph optimisation,
    and intermediates from `allocator` (see `Allocator`) on `providers`' devices."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: ORT's warnings are not actionable here
    # Idle pool threads sleep instead of spinning: spinning burns the CPUs that the event
    # loop and the other requests need (bench/http.py measured it).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if allocator == "shared":
        register_shared_arena(providers)
        options.add_session_config_entry("session.use_env_allocators", "1")
    elif allocator == "none":
        options.enable_cpu_mem_arena = False
    elif allocator != "session":
        raise ValueError(f"unknown allocator {allocator!r}; expected shared, session or none")
    return options


def loadable_providers(name: str) -> list[str]:
    """The providers of a setting value that this ONNX Runtime build offers, in order.

    Loads the CUDA libraries first when CUDA is asked for, cuBLAS without a workspace
    (CUBLAS_WORKSPACE_CONFIG). ORT may still list CUDA and then fall back silently at
    session creation: callers read `get_providers()` after.
    """
    if name == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)
        if hasattr(ort, "preload_dlls"):
            try:
                ort.preload_dlls()
            except Exception as exc:  # a CPU-only wheel or missing libraries: fall back
                log.debug("could not preload CUDA libraries: %s", exc)
    available = set(ort.get_available_providers())
    return [p for p in PROVIDERS[name] if p in available]


def create_session(
    model: onnx.ModelProto, *, providers: list[str], options: ort.SessionOptions
) -> ort.InferenceSession:
    """One session; its providers are read back by the caller, since ORT falls back silently."""
    chosen = [(p, CUDA_OPTIONS) if p == "CUDAExecutionProvider" else p for p in providers]
    return ort.InferenceSession(model.SerializeToString(), options, providers=chosen)


def _ort_value(array: np.ndarray) -> ort.OrtValue:
    dtype = DType.of(array)
    if dtype is None or not array.flags.c_contiguous:
        raise ValueError(
            f"cannot bind a {array.dtype} array (contiguous: {array.flags.c_contiguous})"
        )
    return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(array, ONNX_TYPES[dtype])


def _failed() -> EngineFailure:
    """The error a failed run raises, once the exception being handled is logged."""
    log.exception("ONNX Runtime run failed")
    return EngineFailure(
        "ONNX Runtime failed to compute this request; it was logged. Retry, and report it if "
        "it persists"
    )


def small_runner(
    session: ort.InferenceSession, outputs: Sequence[str]
) -> Callable[[Mapping[str, np.ndarray]], list[np.ndarray]]:
    """A run of `session` for small calls: ONNX Runtime allocates the outputs (binding
    them costs ~5 us a call, which is most of a call of a few hundred elements), and the
    native run is called without `InferenceSession.run`'s checks of feed names and
    ownership (~3.5 us; the engine's feeds are its own, with the graph's names). Not for
    bfloat16, which ORT's plain run cannot take or return."""
    native = session._sess.run
    names = list(outputs)

    def run(inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        try:
            arrays: list[np.ndarray] = native(names, inputs, None)
        except Exception as exc:
            raise _failed() from exc
        return arrays

    return run


def run_bound(
    session: ort.InferenceSession,
    inputs: Mapping[str, np.ndarray],
    outputs: Mapping[str, np.ndarray],
) -> None:
    """Run `session` reading `inputs` and writing `outputs` in place, without copies.

    IOBinding over the numpy buffers works for every dtype, bfloat16 included, which
    ORT's plain ``run`` cannot take or return.
    """
    binding = session.io_binding()
    for name, array in inputs.items():
        binding.bind_ortvalue_input(name, _ort_value(array))
    for name, array in outputs.items():
        binding.bind_ortvalue_output(name, _ort_value(array))
    try:
        session.run_with_iobinding(binding)
    except Exception as exc:  # ORT raises RuntimeError or its own Fail/RuntimeException types
        raise _failed() from exc
