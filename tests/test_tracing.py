"""OpenTelemetry tracing: spans read from an in-memory exporter, against a real uvicorn
server run inside this process over real HTTP; the OTEL_* variables against servers as
users start them; and, off, no SDK at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence

import httpx
import pytest
import uvicorn
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from service.api import tracing
from service.app import create_app
from service.settings import Settings
from tests.conftest import free_port, server_log, start_server, stop_server

SOFT = "softmax_cross_entropy_with_logits"
SPARSE = "sparse_softmax_cross_entropy_with_logits"
STAGES = ["read", "parse", "queue", "decode", "compute", "encode"]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture(scope="module")
def traced() -> Iterator[tuple[str, InMemorySpanExporter]]:
    """The app with an in-memory exporter, under uvicorn in a thread of this process."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = create_app(Settings(), tracer_provider=provider)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", exporter
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        provider.shutdown()


def _trace(exporter: InMemorySpanExporter, trace_id: int, count: int) -> list[ReadableSpan]:
    """The spans of one trace, once `count` of them are finished (the stage spans end
    once the response is sent, just after the server span)."""
    deadline = time.monotonic() + 10
    while True:
        spans = [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]
        if len(spans) >= count or time.monotonic() > deadline:
            return spans
        time.sleep(0.02)


def _server_span(spans: Sequence[ReadableSpan]) -> ReadableSpan:
    (server,) = [s for s in spans if s.kind == SpanKind.SERVER]
    return server


def _children(spans: Sequence[ReadableSpan], parent: ReadableSpan) -> dict[str, ReadableSpan]:
    children = {s.name: s for s in spans if s.parent and s.parent.span_id == parent.context.span_id}
    assert all(s.kind == SpanKind.INTERNAL for s in children.values())
    return children


def test_v2_request_is_a_child_of_the_callers_trace(
    traced: tuple[str, InMemorySpanExporter],
) -> None:
    url, exporter = traced
    document = {
        "inputs": [
            {"name": "labels", "shape": [2, 3], "datatype": "FP32", "data": [0, 1, 0, 1, 0, 0]},
            {"name": "logits", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]},
        ],
        "outputs": [{"name": "loss"}, {"name": "grad_logits"}],
    }
    body = json.dumps(document).encode()
    response = httpx.post(
        f"{url}/v2/models/{SOFT}/infer",
        content=body,
        headers={"traceparent": TRACEPARENT, "tracestate": "vendor=1"},
    )
    assert response.status_code == 200
    spans = _trace(exporter, int(TRACE_ID, 16), 1 + len(STAGES))
    server = _server_span(spans)
    # The caller's span is the server span's parent, its trace the server's
    assert server.parent is not None and server.parent.is_remote
    assert server.parent.span_id == int(PARENT_ID, 16)
    assert server.context.trace_state.get("vendor") == "1"
    attributes = server.attributes or {}
    assert attributes["http.request.method"] == "POST"
    assert attributes["http.route"] == "/v2/models/{model}/infer"
    assert attributes["http.response.status_code"] == 200
    assert attributes["sce.model"] == SOFT
    # Propagated back: the response names the server span
    assert response.headers["traceparent"] == (f"00-{TRACE_ID}-{server.context.span_id:016x}-01")
    assert response.headers["tracestate"] == "vendor=1"

    children = _children(spans, server)
    assert list(children) == STAGES  # in the order they ran
    assert server.start_time is not None
    previous = server.start_time
    for name in STAGES:
        span = children[name]
        assert span.status.status_code == StatusCode.UNSET
        assert span.start_time is not None and span.end_time is not None
        assert previous <= span.start_time <= span.end_time  # one after the other
        previous = span.end_time
        assert (span.attributes or {})["sce.model"] == SOFT
    assert (children["read"].attributes or {})["sce.body.bytes"] == len(body)
    for name in ("decode", "compute"):
        tensors = children[name].attributes or {}
        assert tensors["sce.input.labels.shape"] == (2, 3)
        assert tensors["sce.input.logits.shape"] == (2, 3)
        assert tensors["sce.input.logits.dtype"] == "float32"
    for name in ("compute", "encode"):
        outputs = children[name].attributes or {}
        assert outputs["sce.output.loss.shape"] == (2,)
        assert outputs["sce.output.grad_logits.shape"] == (2, 3)
        assert "sce.output.grad_labels.shape" not in outputs


def test_v1_request_without_a_caller_starts_a_trace(
    traced: tuple[str, InMemorySpanExporter],
) -> None:
    url, exporter = traced
    pair = {"labels": [1, 0], "logits": [[2.0, -1.0], [0.3, 0.1]], "labels_dtype": "int64"}
    response = httpx.post(f"{url}/v1/{SPARSE}", json=pair)
    assert response.status_code == 200, response.text
    version, trace_id, span_id, flags = response.headers["traceparent"].split("-")
    assert version == "00" and int(flags, 16) & 1  # sampled
    assert trace_id != TRACE_ID
    spans = _trace(exporter, int(trace_id, 16), 1 + len(STAGES))
    server = _server_span(spans)
    assert server.parent is None and server.context.span_id == int(span_id, 16)
    assert (server.attributes or {})["http.route"] == f"/v1/{SPARSE}"
    children = _children(spans, server)
    assert list(children) == STAGES
    decode = children["decode"].attributes or {}
    assert decode["sce.input.labels.shape"] == (2,) and decode["sce.input.labels.dtype"] == "int64"


def test_failed_stage_is_marked(traced: tuple[str, InMemorySpanExporter]) -> None:
    url, exporter = traced
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    wrong = {"labels": [[0.0, 1.0, 0.0]], "logits": [[2.0, -1.0]]}  # 3 classes against 2
    response = httpx.post(
        f"{url}/v1/{SOFT}", json=wrong, headers={"traceparent": f"00-{trace_id}-{PARENT_ID}-01"}
    )
    assert response.status_code == 422
    spans = _trace(exporter, int(trace_id, 16), 4)
    server = _server_span(spans)
    assert (server.attributes or {})["http.response.status_code"] == 422
    children = _children(spans, server)
    # Read and parsed; planning found the shapes wrong, so the wait for memory failed
    assert list(children) == ["read", "parse", "queue"]
    failed = children["queue"]
    assert failed.status.status_code == StatusCode.ERROR
    assert "broadcast" in (failed.status.description or "")
    assert (failed.attributes or {})["error.type"] == "ShapeMismatch"


OFF_SCRIPT = """
import json, sys, threading, time
import httpx, uvicorn
from service.api import tracing
from service.app import create_app
from service.settings import Settings
from tests.conftest import free_port

app = create_app(Settings())
port = free_port()
server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
thread = threading.Thread(target=server.run, daemon=True)
thread.start()
while not server.started:
    time.sleep(0.05)
pair = {"labels": [[0.0, 1.0]], "logits": [[2.0, -1.0]]}
response = httpx.post(
    f"http://127.0.0.1:{port}/v1/softmax_cross_entropy_with_logits",
    json=pair,
    headers={"traceparent": sys.argv[1]},
)
server.should_exit = True
thread.join()
print(json.dumps({
    "status": response.status_code,
    "traceparent": response.headers.get("traceparent"),
    "sdk": sorted(m for m in sys.modules if m.startswith("opentelemetry.sdk")),
    "tracer": app.state.recorder.tracer is not None,
}))
"""


def test_off_by_default_without_the_sdk() -> None:
    """No OTEL_* variables: requests are served, no span can be made (the SDK is not
    even imported), and no traceparent is sent back."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run(
        [sys.executable, "-c", OFF_SCRIPT, TRACEPARENT],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(out.stdout.splitlines()[-1])
    assert result == {"status": 200, "traceparent": None, "sdk": [], "tracer": False}


def _console_spans(log: str) -> list[dict[str, object]]:
    """The console exporter's spans: indented JSON objects, among the log lines."""
    decoder = json.JSONDecoder()
    spans, index = [], 0
    while (index := log.find('{\n    "name"', index)) >= 0:
        span, index = decoder.raw_decode(log, index)
        spans.append(span)
    return spans


def test_variables_turn_it_on() -> None:
    """OTEL_TRACES_EXPORTER, OTEL_SERVICE_NAME and the sampler variables, as the SDK reads
    them: a parent-based sampler of ratio 0 traces what a sampled caller asks for only."""
    env = {
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_SERVICE_NAME": "sce-under-test",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }
    proc, url = start_server(env=env)
    try:
        pair = {"labels": [[0.0, 1.0]], "logits": [[2.0, -1.0]]}
        sampled = httpx.post(f"{url}/v1/{SOFT}", json=pair, headers={"traceparent": TRACEPARENT})
        unsampled = httpx.post(f"{url}/v1/{SOFT}", json=pair)
        assert sampled.status_code == unsampled.status_code == 200
        assert sampled.headers["traceparent"].startswith(f"00-{TRACE_ID}-")
        assert sampled.headers["traceparent"].endswith("-01")
        flags = unsampled.headers["traceparent"].rsplit("-", 1)[1]
        assert not int(flags, 16) & 1  # ratio 0: not sampled
        deadline = time.monotonic() + 10
        while len(spans := _console_spans(server_log(proc))) < 1 + len(STAGES):
            assert time.monotonic() < deadline, server_log(proc)[-3000:]
            time.sleep(0.1)
        time.sleep(0.3)  # anything else would have been exported by now
        spans = _console_spans(server_log(proc))
        assert sorted(str(s["name"]) for s in spans) == sorted([*STAGES, f"POST /v1/{SOFT}"])
        for span in spans:
            context = span["context"]
            assert isinstance(context, dict) and context["trace_id"] == f"0x{TRACE_ID}"
            resource = span["resource"]
            assert isinstance(resource, dict)
            assert resource["attributes"]["service.name"] == "sce-under-test"
    finally:
        stop_server(proc)


def test_sdk_disabled_wins() -> None:
    env = {"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}
    proc, url = start_server(env=env)
    try:
        pair = {"labels": [[0.0, 1.0]], "logits": [[2.0, -1.0]]}
        response = httpx.post(f"{url}/v1/{SOFT}", json=pair, headers={"traceparent": TRACEPARENT})
        assert response.status_code == 200
        assert "traceparent" not in response.headers
        time.sleep(0.3)
        assert _console_spans(server_log(proc)) == []
    finally:
        stop_server(proc)


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"}, False),
    ],
)
def test_which_variables_turn_it_on(environ: dict[str, str], on: bool) -> None:
    assert tracing.requested(environ) is on
    assert (tracing.provider_from_environment(environ) is not None) is on


def test_otlp_means_http_unless_a_protocol_is_named() -> None:
    assert tracing._exporter_names({}) == ["otlp_proto_http"]
    assert tracing._exporter_names({"OTEL_TRACES_EXPORTER": "otlp, console"}) == [
        "otlp_proto_http",
        "console",
    ]
    grpc = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    assert tracing._exporter_names(grpc) == ["otlp"]  # the SDK maps it (gRPC)
