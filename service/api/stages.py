"""When each stage of an inference request starts and ends: one record per request, read
by the statistics extension (service/api/statistics.py) and by tracing
(service/api/tracing.py), so that both report the same figures.

    start -> read -> parsed -> queued -> decoded -> computed -> encoded -> end
             body    parse     memory,   inputs     engine      response   sent (or
             read              a thread  decoded    run         encoded    failed)

The marks are `time.perf_counter_ns()` integers on one slotted object per request,
written where each stage ends: `observed` (the route), `pipeline.serve` (read, parse,
queue, the run as a whole) and `inference.compute` (decode, engine). Nothing else is
allocated per request unless tracing is on.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from fastapi import Request, Response

if TYPE_CHECKING:
    from service.api.statistics import Statistics
    from service.api.tracing import StageTracer

Endpoint = Callable[[Request], Awaitable[Response]]

now = time.perf_counter_ns


class Recorder:
    """What an application does with finished timelines: its statistics, and its tracer
    when tracing is on."""

    __slots__ = ("statistics", "tracer")

    def __init__(self, statistics: Statistics | None, tracer: StageTracer | None) -> None:
        self.statistics = statistics
        self.tracer = tracer


class Timeline:
    """The stage boundaries of one inference request (0: not reached)."""

    __slots__ = (
        "body_bytes",
        "computed",
        "decoded",
        "encoded",
        "inputs",
        "model",
        "outputs",
        "parsed",
        "queued",
        "read",
        "recorder",
        "start",
        "trace",
    )

    def __init__(self, recorder: Recorder | None, model: str) -> None:
        self.recorder = recorder
        self.model = model
        self.start = now()
        self.read = self.parsed = self.queued = 0
        self.decoded = self.computed = self.encoded = 0
        self.body_bytes = 0
        # Filled only when tracing: the span context and clock, and what the spans say.
        self.trace: Any = None
        self.inputs: dict[str, tuple[tuple[int, ...], str]] | None = None
        self.outputs: dict[str, tuple[int, ...]] | None = None
        if recorder is not None and recorder.tracer is not None:
            recorder.tracer.begin(self)

    @property
    def traced(self) -> bool:
        return self.trace is not None

    def succeeded(self) -> None:
        """The response is sent: count it, and trace it."""
        self._finish(None)

    def failed(self, error: BaseException) -> None:
        self._finish(error)

    def _finish(self, error: BaseException | None) -> None:
        end = now()
        recorder = self.recorder
        if recorder is None:
            return
        self.recorder = None  # once
        if recorder.statistics is not None:
            recorder.statistics.record(self, end, error is None)
        if recorder.tracer is not None and self.trace is not None:
            recorder.tracer.end(self, end, error)


# The timeline of the request being served: set by `observed` on the event loop, and by
# `pipeline.serve` around a run in a compute thread (threads do not inherit it).
CURRENT: ContextVar[Timeline | None] = ContextVar("sce_timeline", default=None)


OBSERVED: dict[Callable[..., Any], str | None] = {}
"""The endpoints whose requests are recorded, with their model (None: the `model` path
parameter). DirectRoute (service/api/routing.py) makes and closes the timeline in its
own frame: a wrapping coroutine cost every await of the request a frame (~5-12 us a
small request, bench/tracing.py)."""


def observed(model: str | None = None) -> Callable[[Endpoint], Endpoint]:
    """Record an inference route's requests for `model` (None: the `model` path
    parameter), whether they succeed or fail before, inside or after `pipeline.serve`."""

    def decorate(endpoint: Endpoint) -> Endpoint:
        OBSERVED[endpoint] = model
        return endpoint

    return decorate


def begin(request: Request, model: str | None) -> Timeline:
    """The timeline of a request to an observed endpoint (see OBSERVED)."""
    name = model if model is not None else request.path_params.get("model", "")
    return Timeline(getattr(request.app.state, "recorder", None), name)
