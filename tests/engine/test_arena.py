"""ONNX Runtime's memory between calls: one CPU arena shared by every session.

The engine has ~80 sessions (dtype x layout x output subset). With an arena each, every
session kept its high-water mark after a large call, and a process that had served every
kind of request held the sum of all the arenas (bench/engine_memory.py sessions). With one
shared arena it holds what the largest calls in flight need, whichever sessions ran them.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from bench.engine_memory import many_sessions_in_subprocess
from service.engine import sessions
from service.engine.engine import Engine
from tests.reference import NUMPY, assert_close, softmax_xent

MiB = 1 << 20
# What the process may grow by after its first large call, however many sessions follow:
# the shared arena's growth to the most demanding call (the class dim first, half types),
# and what glibc keeps of numpy's freed outputs. Measured +35 MiB over 45 calls through 44
# sessions; with an arena per session, +948 MiB (16-50 MiB a session).
GROWTH_BOUND = 96 * MiB


def _rss_readable() -> bool:
    return Path("/proc/self/status").is_file()


@pytest.mark.skipif(not _rss_readable(), reason="needs /proc/self/status (Linux)")
def test_rss_plateaus_across_many_sessions() -> None:
    """A large call through each of 44 sessions (every output subset of every float dtype,
    the class dim first, the sparse op, a broadcast): the process's RSS after each stays
    within GROWTH_BOUND of its RSS after the first, in a fresh process."""
    measured = many_sessions_in_subprocess(rows=1024, classes=4096, broadcast=4096)
    rss, labels = measured["rss"], measured["labels"]
    assert len(set(labels)) >= 40
    growth = [(after - rss[0]) / MiB for after in rss]
    worst = max(range(len(growth)), key=growth.__getitem__)
    assert max(growth) * MiB <= GROWTH_BOUND, (
        f"RSS grew by {growth[worst]:.0f} MiB after its first large call, by the call "
        f"{labels[worst]!r} ({worst + 1} of {len(labels)}; bound {GROWTH_BOUND // MiB} MiB); "
        f"growth after each call, MiB: {[round(g) for g in growth]}"
    )


def test_sessions_share_the_environment_arena() -> None:
    options = sessions.session_options(1)
    assert options.get_session_config_entry("session.use_env_allocators") == "1"
    assert options.enable_cpu_mem_arena
    sessions.register_shared_arena()  # again: once per process, whoever asks
    assert sessions.session_options(1, allocator="none").enable_cpu_mem_arena is False
    with pytest.raises(RuntimeError, match="does not have configuration"):
        sessions.session_options(1, allocator="session").get_session_config_entry(
            "session.use_env_allocators"
        )


def test_an_unknown_allocator_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown allocator"):
        sessions.session_options(1, allocator="bogus")  # type: ignore[arg-type]


def test_concurrent_calls_through_the_shared_arena_are_right() -> None:
    """Threads running different sessions at once allocate from the one arena."""
    engine = Engine(providers="cpu", intra_op_threads=1)
    errors: list[BaseException] = []

    def work(seed: int, dtype: str, outputs: list[str]) -> None:
        rng = np.random.default_rng(seed)
        try:
            for rows in (1, 7, 64, 300, 64, 7):
                labels = rng.random((rows, 513)).astype(NUMPY[dtype])
                logits = (4 * rng.standard_normal((rows, 513))).astype(NUMPY[dtype])
                result = engine.softmax_cross_entropy(labels=labels, logits=logits, outputs=outputs)
                expected = softmax_xent(labels, logits)
                for name, got in result.items():
                    assert_close(got, expected[name], dtype, f"{dtype} {name} rows {rows}")
        except BaseException as exc:
            errors.append(exc)

    jobs = [
        (1, "float32", ["loss"]),
        (2, "float64", ["loss", "grad_logits", "grad_labels"]),
        (3, "float16", ["grad_logits"]),
        (4, "bfloat16", ["loss", "grad_labels"]),
    ]
    threads = [threading.Thread(target=work, args=job) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
