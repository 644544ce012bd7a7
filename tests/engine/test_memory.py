"""Peak memory of engine calls stays within what `Engine.plan` says.

Each case runs in a fresh process (bench/engine_memory.py): the engine and the inputs are
built, the RSS high-water mark is reset, the call runs with every output, and the mark's
rise is the call's peak. ONNX Runtime allocates outside Python's view, so tracemalloc
would not see its intermediates; the RSS high-water mark sees everything.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import pytest

from bench.engine_memory import measure_in_subprocess

MiB = 1 << 20
# Allocator noise the bound does not model: glibc arenas, ONNX Runtime's first-run state,
# thread stacks touched for the first time. Measured under 10 MiB; this is generous.
SLACK = 64 * MiB

CASES = [
    # labels : logits : dtype : dim
    "16384,1:1,16384:float64:-1",  # the hardening issue's request (4.1 GiB before)
    "4096,1:1,4096:float64:0",  # the class dim first: logits broadcast along it
    "256,1,64:1,4096,64:float32:1",  # planes, labels broadcast along the classes
    "128,1,256:128,4096,1:float16:-1",  # partly broadcast outer groups, half types
    "1,8192:8192,8192:bfloat16:-1",  # TensorFlow's case: one row of labels
    "2048,8192:2048,8192:float32:-1:chunked",  # chunked class sums (SCE_CHUNKED_SOFTMAX)
    "64,4096,16:64,4096,16:float32:1:chunked",  # chunked, planes
    "1,8192:2048,8192:float16:-1:weighted",  # weights, smoothing and a mean
    "1,4096,1:64,4096,16:float32:1:weighted+chunked",
]


@cache
def _measure(case: str) -> dict[str, Any]:
    return measure_in_subprocess(case)


def _hwm_resettable() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _hwm_resettable(), reason="needs /proc/self/clear_refs (Linux)")
@pytest.mark.parametrize("case", CASES)
def test_peak_memory_is_within_the_plan(case: str) -> None:
    measured = _measure(case)
    plan = measured["plan"]
    bound = plan["output_bytes"] + plan["work_bytes"] + SLACK
    assert measured["peak"] <= bound, (
        f"{case}: peak {measured['peak'] / MiB:.1f} MiB over the plan's outputs + work "
        f"{(plan['output_bytes'] + plan['work_bytes']) / MiB:.1f} MiB + {SLACK // MiB} MiB"
    )


@pytest.mark.skipif(not _hwm_resettable(), reason="needs /proc/self/clear_refs (Linux)")
def test_the_hardening_issue_request_stays_small() -> None:
    """A 197 KB body that grew the server by 4.1 GiB: now a few blocks."""
    measured = _measure(CASES[0])
    assert measured["peak"] <= 256 * MiB, f"peak {measured['peak'] / MiB:.1f} MiB"
