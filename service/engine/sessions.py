"""ONNX Runtime sessions: providers, thread pools, and what is really in use."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from service.engine.graphs import ONNX_TYPES
from service.engine.types import DType

log = logging.getLogger(__name__)

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
}


def usable_cpus() -> int:
    """CPUs this process may use: affinity, then the cgroup v2 quota, not the host's count."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def session_options(intra_op_threads: int) -> ort.SessionOptions:
    """Explicit options: one thread pool sized for this container, full graph optimisation."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: ORT's warnings are not actionable here
    return options


def requested_providers(name: str) -> list[str]:
    """Provider list for a setting value; loads the CUDA libraries first when asked for."""
    if name == "cuda" and hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
        except Exception as exc:  # a CPU-only wheel or missing libraries: fall back below
            log.warning("could not preload CUDA libraries: %s", exc)
    return PROVIDERS[name]


def create_session(
    model: onnx.ModelProto, *, providers: list[str], options: ort.SessionOptions
) -> ort.InferenceSession:
    """One session; its providers are read back by the caller, since ORT falls back silently."""
    return ort.InferenceSession(model.SerializeToString(), options, providers=providers)


def _ort_value(array: np.ndarray) -> ort.OrtValue:
    dtype = DType.of(array)
    if dtype is None or not array.flags.c_contiguous:
        raise ValueError(
            f"cannot bind a {array.dtype} array (contiguous: {array.flags.c_contiguous})"
        )
    return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(array, ONNX_TYPES[dtype])


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
    session.run_with_iobinding(binding)
