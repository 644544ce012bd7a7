"""OpenTelemetry tracing: off unless the standard OTEL_* variables ask for it.

On when `OTEL_TRACES_EXPORTER` names exporters other than `none` (`otlp`, `console`, or
any installed one), or when `OTEL_EXPORTER_OTLP_ENDPOINT` /
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set (then `otlp`); `OTEL_SDK_DISABLED=true`
keeps it off. The rest is the SDK's own reading of the environment: the exporters'
entry points and their `OTEL_EXPORTER_OTLP_*` settings, `OTEL_TRACES_SAMPLER(_ARG)`,
`OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_BSP_*`, `OTEL_PROPAGATORS`.
Two choices of ours: `otlp` without `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL` means
http/protobuf (the specification's default, and what the `tracing` extra installs; the
Python SDK would pick gRPC), and the service name defaults to the server's.

Off, the SDK is never imported and a request pays for nothing here. On, FastAPI's own
telemetry makes the server span of every request (method, route, status), a child of
the caller's W3C `traceparent`/`tracestate` when sent; each inference request adds a
child span per stage (read, parse, queue, decode, compute, encode) drawn from its
timeline (service/api/stages.py), and every response carries the `traceparent` of the
server span so that a caller can link to it (there are no outgoing calls to propagate
to).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fastapi.telemetry import TelemetryConfig
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import __version__
from service.api.stages import Timeline
from service.codecs.text import bounded

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

DEFAULT_SERVICE_NAME = "softmax-cross-entropy-service"
MAX_DESCRIPTION = 200  # characters of an error message in a span's status

# (span, the mark it starts at, the mark it ends at)
STAGES = (
    ("read", "start", "read"),
    ("parse", "read", "parsed"),
    ("queue", "parsed", "queued"),
    ("decode", "queued", "decoded"),
    ("compute", "decoded", "computed"),
    ("encode", "computed", "encoded"),
)


def requested(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the OTEL_* variables ask for traces to be exported."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    names = environ.get("OTEL_TRACES_EXPORTER")
    if names is not None and names.strip():
        return names.strip().lower() != "none"
    endpoints = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    return any(environ.get(name, "").strip() for name in endpoints)


def _exporter_names(environ: Mapping[str, str]) -> list[str]:
    names = [n.strip() for n in (environ.get("OTEL_TRACES_EXPORTER") or "otlp").split(",")]
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL"
    )
    return ["otlp_proto_http" if n == "otlp" and not protocol else n for n in names if n]


def provider_from_environment(environ: Mapping[str, str] = os.environ) -> TracerProvider | None:
    """An SDK tracer provider exporting as the OTEL_* variables say, or None (off)."""
    if not requested(environ):
        return None
    try:  # the SDK only now, and only when asked for
        from opentelemetry.sdk import _configuration as sdk
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise RuntimeError(
            "the OTEL_* variables ask for tracing, but the OpenTelemetry SDK is not "
            "installed: pip install 'softmax-xent-service[tracing]'"
        ) from exc
    # The SDK's autoconfiguration helpers: exporter names -> entry points -> classes.
    names = [sdk._get_exporter_entry_point(n, "traces") for n in _exporter_names(environ)]
    exporters, _, _ = sdk._import_exporters(names, [], [])
    resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    provider = SdkTracerProvider(resource=resource)  # sampler and limits from OTEL_*
    for exporter in exporters.values():
        provider.add_span_processor(BatchSpanProcessor(exporter()))
    return provider


def fastapi_telemetry(provider: TracerProvider | None) -> TelemetryConfig | None:
    """FastAPI's `telemetry` argument: its server spans on `provider`; its metrics and
    logs stay off (Prometheus and the JSON logs cover them)."""
    if provider is None:
        return None
    return {"tracer_provider": provider, "metrics": False, "logs": False}


class StageTracer:
    """Spans of an inference request's stages, children of its server span."""

    def __init__(self, provider: TracerProvider) -> None:
        self.tracer = provider.get_tracer("service.api.stages", __version__)

    def begin(self, timeline: Timeline) -> None:
        """At the route: the server span (FastAPI's, current now) and the wall clock."""
        server = trace.get_current_span()
        if server.is_recording():
            server.set_attribute("sce.model", timeline.model)
        timeline.trace = (trace.set_span_in_context(server), time.time_ns() - timeline.start)

    def end(self, timeline: Timeline, end: int, error: BaseException | None) -> None:
        """Once the response is sent, or the request failed: a span per stage reached;
        the stage that failed ends at the failure, with the error's type and message."""
        context, offset = timeline.trace
        common: dict[str, Any] = {"sce.model": timeline.model}
        tensors: dict[str, Any] = dict(common)
        for name, (shape, dtype) in (timeline.inputs or {}).items():
            tensors[f"sce.input.{name}.shape"] = list(shape)
            tensors[f"sce.input.{name}.dtype"] = dtype
        outputs = {f"sce.output.{n}.shape": list(s) for n, s in (timeline.outputs or {}).items()}
        attributes: dict[str, dict[str, Any]] = {
            "read": {**common, "sce.body.bytes": timeline.body_bytes},  # inflated
            "decode": tensors,
            "compute": {**tensors, **outputs},
            "encode": {**common, **outputs},
        }
        for name, first, last in STAGES:
            start, stop = getattr(timeline, first), getattr(timeline, last)
            if not start or (not stop and error is None):
                return
            failed = error if not stop else None  # the stage that failed ends at the failure
            attrs = attributes.get(name, common)
            self._span(name, context, start + offset, (stop or end) + offset, attrs, failed)
            if failed is not None:
                return

    def _span(
        self,
        name: str,
        context: Any,
        start: int,
        end: int,
        attributes: dict[str, Any],
        error: BaseException | None,
    ) -> None:
        span = self.tracer.start_span(
            name, context=context, start_time=start, attributes=attributes
        )
        if error is not None:
            span.set_attribute("error.type", type(error).__name__)
            span.set_status(Status(StatusCode.ERROR, bounded(str(error), MAX_DESCRIPTION)))
        span.end(end_time=end)


class TraceResponseMiddleware:
    """Adds the current (server) span's `traceparent` (and `tracestate`) to responses."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.propagator = TraceContextTextMapPropagator()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_traced(message: Message) -> None:
            if message["type"] == "http.response.start":
                carrier: dict[str, str] = {}
                self.propagator.inject(carrier)
                if carrier:
                    message["headers"] = [
                        *message.get("headers", []),
                        *((k.encode("latin-1"), v.encode("latin-1")) for k, v in carrier.items()),
                    ]
            await send(message)

        await self.app(scope, receive, send_traced)
