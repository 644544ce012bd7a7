"""Backpressure and time limits around one request's body and compute."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import anyio
from fastapi import Request

from service.api.body import read_body
from service.errors import Overloaded, RequestTimeout

T = TypeVar("T")


class InFlightLimit:
    """At most `limit` requests read or compute at once in this worker; the next gets 503.

    Refusing at once (rather than queueing) keeps memory bounded and lets the client or
    the load balancer send the request to a less busy replica. Of those admitted, only
    `compute` decode, run and encode at the same time: more threads than CPUs only add
    memory (each thread's allocator arena keeps its high-water mark), not speed, since
    ONNX Runtime already spreads one run over the CPUs.
    """

    def __init__(self, limit: int, compute: int) -> None:
        self.limit = limit
        self.active = 0  # only touched on the event loop: no lock needed
        self.compute = anyio.CapacityLimiter(compute)

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
        # Decoding, the ORT run and encoding block: keep them off the event loop.
        return await anyio.to_thread.run_sync(work, body, limiter=limit.compute)
