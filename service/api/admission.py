"""Admission by cost: a per-worker memory budget, granted first come first served.

A request holds a `Lease` on the budget for as long as it holds memory: the body as it
arrives, then what decoding, computing and encoding will need (known from its headers
and shapes before anything large is allocated), then the encoded response until it is
sent. A lease that cannot grow waits in one bounded FIFO queue; only a request that
waits past SCE_QUEUE_TIMEOUT, or finds the queue full, gets 503 with Retry-After, and
one that could never fit gets 413 (its body) or 422 (its work), naming the setting.

Counting bytes rather than requests is what lets ordinary load queue instead of being
refused, and what stops one request from taking more memory than a worker has.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from service.api import metrics
from service.errors import Overloaded, PayloadTooLarge, RequestTimeout, TooLarge

T = TypeVar("T")

# A share of the container's memory, the rest left to the process itself (Python,
# ONNX Runtime's sessions and arenas, the allocator's slack).
DEFAULT_SHARE = 0.7


def cgroup_memory_limit(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The container's memory limit in bytes (cgroup v2 `memory.max`, else v1), or None."""
    for name in ("memory.max", "memory/memory.limit_in_bytes"):
        try:
            text = (root / name).read_text().strip()
        except OSError:
            continue
        if text == "max":
            return None
        try:
            value = int(text)
        except ValueError:
            continue
        return value if value < 1 << 60 else None  # v1 writes a huge number for "none"
    return None


def default_budget(workers: int, root: Path = Path("/sys/fs/cgroup")) -> int:
    """DEFAULT_SHARE of the cgroup limit (else of physical memory), split among workers."""
    limit = cgroup_memory_limit(root)
    if limit is None:
        limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(16 << 20, int(limit * DEFAULT_SHARE) // max(1, workers))


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


# How stale the memory and queue gauges may be (MemoryBudget._changed).
GAUGE_DELAY = 0.05


class MemoryBudget:
    """Bytes this worker may hold for requests; waiters are served strictly in order.

    Only touched on the event loop, so it needs no lock. Strict FIFO (a small request
    does not overtake a large one at the head) so that large requests are not starved.

    Requests grow their leases stage by stage, so they can hold memory while they wait
    for more: if every request that holds some were waiting, none could ever be served.
    The request that would complete that circle is refused at once (503) instead, which
    gives its memory back to the others.
    """

    def __init__(self, total: int, *, max_queue: int, timeout: float) -> None:
        self.total = total
        self.free = total
        self.max_queue = max_queue
        self.timeout = timeout
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self.holders = 0  # leases holding memory
        self.stuck = 0  # of those, the ones waiting for more
        self._gauges: asyncio.TimerHandle | None = None
        metrics.MEMORY_BUDGET.set(total)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def lease(self) -> Lease:
        return Lease(self)

    async def _acquire(self, size: int, holding: bool) -> None:
        if not self._waiters and size <= self.free:
            self.free -= size
            self._changed()
            return
        if len(self._waiters) >= self.max_queue:
            raise Overloaded(
                f"{len(self._waiters)} requests are waiting for memory, the most this worker "
                f"queues (SCE_MAX_QUEUE={self.max_queue}); retry shortly"
            )
        if holding and self.stuck + 1 >= self.holders:
            raise Overloaded(
                "every request holding this worker's memory is waiting for more of it; "
                "retry shortly"
            )
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (size, granted)
        self._waiters.append(entry)
        self._changed()
        self.stuck += holding
        try:
            async with asyncio.timeout(self.timeout):
                await granted
        except BaseException as exc:
            if granted.done() and not granted.cancelled():
                self._release(size)  # granted, but its requester is gone
            else:
                self._waiters.remove(entry)
                self._grant()  # the head may have changed
            if isinstance(exc, TimeoutError):
                raise Overloaded(
                    f"waited {self.timeout:g} s for {_mib(size)} of this worker's memory "
                    f"(SCE_QUEUE_TIMEOUT={self.timeout:g}); retry shortly"
                ) from None
            raise
        finally:
            self.stuck -= holding

    def _release(self, size: int) -> None:
        self.free += size
        self._grant()

    def _grant(self) -> None:
        while self._waiters and self._waiters[0][0] <= self.free:
            size, granted = self._waiters.popleft()
            self.free -= size
            granted.set_result(None)
        self._changed()

    def _changed(self) -> None:
        """Write the gauges GAUGE_DELAY after a change, once for all the changes meanwhile:
        a request moves its lease several times, and each write of a (multiprocess) gauge
        cost a small request ~2 us; /metrics writes them first (`write_gauges`)."""
        if self._gauges is None:
            loop = asyncio.get_running_loop()
            self._gauges = loop.call_later(GAUGE_DELAY, self.write_gauges)

    def write_gauges(self) -> None:
        if self._gauges is not None:
            self._gauges.cancel()
            self._gauges = None
        metrics.MEMORY_HELD.set(self.total - self.free)
        metrics.QUEUE_WAITING.set(len(self._waiters))


def _never_fits(size: int, budget: int, body: bool) -> Exception:
    """413 for a body, 422 for work, that this worker's whole budget could not hold."""
    if body:
        return PayloadTooLarge(
            f"this request body needs {_mib(size)}, more than this worker's memory budget "
            f"of {_mib(budget)} (SCE_MEMORY_BUDGET); send a smaller batch"
        )
    return TooLarge(
        f"this request needs {_mib(size)} to decode, compute and encode, more than this "
        f"worker's memory budget of {_mib(budget)} (SCE_MEMORY_BUDGET); send a smaller "
        "batch, ask for fewer outputs, or use a binary transport"
    )


class Lease:
    """What one request holds of the budget; `hold` moves it, `release` ends it."""

    def __init__(self, budget: MemoryBudget) -> None:
        self._budget = budget
        self.held = 0

    async def hold(self, total: int, *, body: bool = False) -> None:
        """Hold `total` bytes: growing waits its turn, shrinking gives bytes back at once."""
        budget = self._budget
        if total <= self.held:
            self._set(total)
            return
        if total > budget.total:
            raise _never_fits(total, budget.total, body)
        await budget._acquire(total - self.held, holding=self.held > 0)
        self._set(total)

    def _set(self, total: int) -> None:
        """Move what is held to `total`, giving back what is left over; keep the count of
        leases that hold memory."""
        budget = self._budget
        budget.holders += (total > 0) - (self.held > 0)
        if total < self.held:
            budget._release(self.held - total)
        self.held = total

    def release(self) -> None:
        self._set(0)


class ComputePool:
    """A fixed pool of compute threads: more threads than CPUs add memory, not speed (ONNX
    Runtime already spreads one run over the CPUs), and a pool whose threads come and go
    (anyio's) let the allocator's per-thread arenas keep growing under load
    (tests/test_faults.py)."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._executor: ThreadPoolExecutor | None = None

    async def run(self, work: Callable[[], T]) -> T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="compute")
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    def close(self) -> None:
        """Stop the compute threads once the work in hand is done."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


class BodyPace:
    """The body's deadline and minimum rate: the time by which the next byte is due.

    A client must send its whole body within `timeout`, and after a grace period it
    must average at least `rate` bytes a second: a trickling upload cannot hold its
    connection and its share of the budget for the whole timeout.
    """

    GRACE = 5.0

    def __init__(self, timeout: float, rate: int) -> None:
        self.start = time.monotonic()
        self.timeout = timeout
        self.rate = rate

    def due(self, received: int) -> float:
        """Seconds from now within which more bytes must arrive (<= 0: too late)."""
        deadline = self.start + self.timeout
        if self.rate:
            deadline = min(deadline, self.start + self.GRACE + received / self.rate)
        return deadline - time.monotonic()

    def error(self) -> RequestTimeout:
        """The 408 for a body that fell behind: its pace, or the overall timeout."""
        if time.monotonic() - self.start < self.timeout:
            return RequestTimeout(
                f"the request body arrived slower than {self.rate} bytes/s after "
                f"{self.GRACE:g} s (SCE_MIN_DATA_RATE)"
            )
        return RequestTimeout(
            f"the request body did not arrive within {self.timeout:g} s (SCE_BODY_TIMEOUT)"
        )

    def credit(self, seconds: float) -> None:
        """Time the server made the client wait (for memory) does not count against it."""
        self.start += seconds
