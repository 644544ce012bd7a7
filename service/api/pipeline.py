"""The stages of an inference request, each inside the worker's memory budget.

read the body (held as it arrives) -> parse (cost bounded by the body's size) -> plan
(the cost of the rest, from shapes and dtypes) -> run (decode values, compute, encode)
-> send (the response is held until its last byte is written). Between stages the
request's lease moves to what the next one needs, waiting its turn when that is more.

The event loop does only bounded work: parsing runs inline only for small bodies, and
running only when the work (elements after broadcasting) is small too; anything whose
cost grows with the request runs in the compute pool.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

from fastapi import Request

from service.api.admission import BodyPace
from service.api.body import Body, read_body
from service.api.deps import Runtime
from service.api.responses import BuffersResponse
from service.api.stages import CURRENT, Timeline, now

Call = TypeVar("Call")

# Bodies up to this size are parsed on the event loop, and their work run there when it
# is small too: that takes less time (~0.1-0.5 ms) than handing it to a thread and back
# (bench/http.py), and bounds what the loop does to well under a millisecond.
INLINE_BYTES = 64 * 1024
INLINE_ELEMENTS = 64 * 1024


@dataclass(frozen=True)
class Cost:
    """What running a parsed request will hold beyond its body, and how much work it is."""

    bytes: int
    elements: int


@dataclass(frozen=True)
class Encoded:
    """A response's bytes, as buffers sent one after the other."""

    buffers: list[bytes | memoryview]
    media_type: str
    headers: dict[str, str] = field(default_factory=dict)


async def serve(
    request: Request,
    env: Runtime,
    *,
    limit: int,
    parse: Callable[[Body], Call],
    parse_cost: Callable[[int], int],
    cost: Callable[[Call], Cost],
    run: Callable[[Call], Encoded],
) -> BuffersResponse:
    """Read, parse, plan, run; the response gives the lease back once it is sent."""
    settings = env.settings
    # The stage marks (service/api/stages.py); a route that is not `observed` counts nothing.
    timeline = CURRENT.get() or Timeline(None, "")
    lease = env.budget.lease()
    try:
        pace = BodyPace(settings.body_timeout, settings.min_data_rate)
        body = await read_body(request, limit, pace=pace, lease=lease)
        size = timeline.body_bytes = len(body)
        timeline.read = now()
        small = size <= INLINE_BYTES
        await lease.hold(size + parse_cost(size))
        parsing = partial(parse, body)
        del body  # from here the parsed call holds what it needs of it
        call = parsing() if small else await env.pool.run(parsing)
        timeline.parsed = now()
        del parsing
        need = cost(call)
        await lease.hold(size + need.bytes)
        running = partial(_run, run, call, timeline)
        del call
        inline = small and need.elements <= INLINE_ELEMENTS
        encoded = running() if inline else await env.pool.run(running)
        del running
        await lease.hold(sum(len(b) for b in encoded.buffers))  # what is left: the response
    except BaseException:
        lease.release()
        raise

    def done() -> None:
        lease.release()
        timeline.succeeded()

    return BuffersResponse(
        encoded.buffers, media_type=encoded.media_type, headers=encoded.headers, done=done
    )


def _run(run: Callable[[Call], Encoded], call: Call, timeline: Timeline) -> Encoded:
    """`run`, marked: from here on the wait (memory, a compute thread) is over; the
    timeline is made current in a compute thread too, for `inference.compute`'s marks."""
    timeline.queued = now()
    token = CURRENT.set(timeline)
    try:
        encoded = run(call)
    finally:
        CURRENT.reset(token)
    timeline.encoded = now()
    return encoded
