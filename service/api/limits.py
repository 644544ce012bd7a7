"""Backpressure and time limits around one request's body and compute."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import TypeVar

from fastapi import Request

from service.api.body import read_body
from service.errors import Overloaded, RequestTimeout

T = TypeVar("T")
# Bodies up to this size are decoded and computed on the event loop: that takes less
# time (~0.1-0.5 ms) than handing the work to a thread and back (bench/http.py).
INLINE_BYTES = 64 * 1024


class InFlightLimit:
    """At most `limit` requests read or compute at once in this worker; the next gets 503.

    Refusing at once (rather than queueing) keeps memory bounded and lets the client or
    the load balancer send the request to a less busy replica. Of those admitted, only
    `compute` decode, run and encode at the same time, on a fixed pool of as many
    threads: more threads than CPUs add memory, not speed (ONNX Runtime already spreads
    one run over the CPUs), and a pool whose threads come and go (anyio's) let the
    allocator's per-thread arenas keep growing under load (tests/test_faults.py).
    """

    def __init__(self, limit: int, compute: int) -> None:
        self.limit = limit
        self.active = 0  # only touched on the event loop: no lock needed
        self.compute = compute
        self._executor: ThreadPoolExecutor | None = None

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The compute pool, started on first use (and again after `close`)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.compute, thread_name_prefix="compute")
        return self._executor

    def close(self) -> None:
        """Stop the compute threads once the work in hand is done."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.active >= self.limit:
            raise Overloaded(
                f"{self.active} requests are in flight, the limit of this worker "
                f"(SCE_MAX_IN_FLIGHT={self.limit}); retry shortly"
            )
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1


async def process(
    request: Request,
    limit: InFlightLimit,
    *,
    max_bytes: int,
    body_timeout: float,
    work: Callable[[bytes | bytearray], T],
) -> T:
    """Read the body (within `body_timeout`) and run `work` on it off the event loop."""
    async with limit.slot():
        try:
            async with asyncio.timeout(body_timeout):
                body = await read_body(request, max_bytes)
        except TimeoutError:
            raise RequestTimeout(
                f"the request body did not arrive within {body_timeout:g} s"
            ) from None
        # Decoding, the ORT run and encoding block: larger work stays off the event loop.
        if len(body) <= INLINE_BYTES:
            return work(body)
        return await asyncio.get_running_loop().run_in_executor(limit.executor, work, body)
