"""Prometheus metrics (prometheus-client) and the ASGI middleware that records them.

With several uvicorn workers, `python -m service` points PROMETHEUS_MULTIPROC_DIR at
a private directory, so that `/metrics` adds up every worker. Its supervisor
(`service.__main__.Supervisor`) drops the live gauges of a worker that dies, so a worker
killed mid-request leaves nothing counted in flight, and the directory is removed when
the server exits.
"""

from __future__ import annotations

import logging
import os
import re
import time
from functools import lru_cache

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import logs

access_log = logging.getLogger("service.access")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BYTE_BUCKETS = tuple(float(4**k) for k in range(4, 16))  # 256 B .. 1 GiB

REQUESTS = Counter("sce_http_requests_total", "HTTP requests", ["route", "method", "status"])
LATENCY = Histogram(
    "sce_http_request_duration_seconds",
    "HTTP request latency, first byte received to last byte sent",
    ["route", "method", "status"],
    buckets=LATENCY_BUCKETS,
)
REQUEST_BYTES = Histogram(
    "sce_http_request_bytes", "HTTP request body size (as sent)", ["route"], buckets=BYTE_BUCKETS
)
RESPONSE_BYTES = Histogram(
    "sce_http_response_bytes", "HTTP response body size", ["route"], buckets=BYTE_BUCKETS
)
IN_FLIGHT = Gauge(
    "sce_http_requests_in_flight", "HTTP requests being served", multiprocess_mode="livesum"
)
MEMORY_BUDGET = Gauge(
    "sce_memory_budget_bytes",
    "Memory budget for requests (SCE_MEMORY_BUDGET)",
    multiprocess_mode="livesum",
)
MEMORY_HELD = Gauge(
    "sce_memory_held_bytes",
    "Bytes of the memory budget held by requests",
    multiprocess_mode="livesum",
)
QUEUE_WAITING = Gauge(
    "sce_queue_waiting_requests", "Requests waiting for memory", multiprocess_mode="livesum"
)
INFERENCE = Histogram(
    "sce_inference_duration_seconds",
    "Engine time per request (ONNX Runtime run and the array work around it)",
    ["model", "dtype", "provider"],
    buckets=LATENCY_BUCKETS,
)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


@lru_cache(maxsize=256)
def inference_series(model: str, dtype: str, provider: str) -> Histogram:
    """The engine-time histogram of a model, dtype and provider."""
    return INFERENCE.labels(model, dtype, provider)


@lru_cache(maxsize=1024)  # the labelled children, looked up once rather than per request
def _request_series(route: str, method: str, status: str) -> tuple[Counter, Histogram]:
    return REQUESTS.labels(route, method, status), LATENCY.labels(route, method, status)


@lru_cache(maxsize=256)
def _byte_series(route: str) -> tuple[Histogram, Histogram]:
    return REQUEST_BYTES.labels(route), RESPONSE_BYTES.labels(route)


def render() -> tuple[bytes, str]:
    """The exposition text: this process, or every worker in multiprocess mode."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


class ObservabilityMiddleware:
    """Request id, metrics and one structured access-log line per HTTP request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        given = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"")
        given = given.decode("latin-1")
        # 32 random hex digits, as uuid4().hex without building a UUID (~1.5 us)
        request_id = given if _REQUEST_ID.match(given) else os.urandom(16).hex()
        state = {"status": 500, "in": 0, "out": 0}

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["in"] += len(message.get("body", b""))
            return message

        async def tagging_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            elif message["type"] == "http.response.body":
                state["out"] += len(message.get("body", b""))
            await send(message)

        IN_FLIGHT.inc()
        try:
            await self.app(scope, counting_receive, tagging_send)
        finally:
            IN_FLIGHT.dec()
            seconds = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", "unmatched")
            status = str(state["status"])
            method = scope["method"]
            count, latency = _request_series(route, method, status)
            count.inc()
            latency.observe(seconds)
            bytes_in, bytes_out = _byte_series(route)
            bytes_in.observe(state["in"])
            bytes_out.observe(state["out"])
            if access_log.isEnabledFor(logging.INFO):  # skip building the line
                logs.access_line(
                    access_log,
                    f"{method} {scope['path']} {status}",
                    {
                        "request_id": request_id,
                        "method": method,
                        "path": scope["path"],
                        "route": route,
                        "status": state["status"],
                        "duration_ms": round(seconds * 1e3, 3),
                        "bytes_in": state["in"],
                        "bytes_out": state["out"],
                        "client": (scope.get("client") or ("", 0))[0],
                    },
                )
