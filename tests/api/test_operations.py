"""Auth, metrics, request ids, CORS, providers and thread sizing."""

from __future__ import annotations

import io
import logging
import logging.config
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson
import pytest
from fastapi.testclient import TestClient

from service import logs
from service.app import create_app
from service.engine.engine import Engine
from service.engine.sessions import cgroup_cpu_limit, usable_cpus
from service.logs import (
    ACCESS_FIELDS,
    AccessJsonFormatter,
    BatchedStreamHandler,
    SafeJsonFormatter,
    log_config,
)
from service.settings import Settings

SOFT = "/v1/softmax_cross_entropy_with_logits"
INFER = "/v2/models/softmax_cross_entropy_with_logits/infer"
BODY = {"labels": [0.0, 1.0], "logits": [0.0, 0.0]}


@pytest.fixture(scope="module")
def keyed() -> Iterator[TestClient]:
    with TestClient(create_app(Settings(api_key="s3cret-key"))) as client:
        yield client


def test_api_key_is_required_on_the_apis(keyed: TestClient) -> None:
    for response in (keyed.post(SOFT, json=BODY), keyed.get("/v2")):
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
    assert "error" in keyed.post(INFER, content=b"{}").json()
    wrong = keyed.post(SOFT, json=BODY, headers={"Authorization": "Bearer s3cret-kez"})
    assert wrong.status_code == 401 and "wrong" in wrong.json()["detail"]
    basic = keyed.post(SOFT, json=BODY, headers={"Authorization": "Basic s3cret-key"})
    assert basic.status_code == 401
    right = keyed.post(SOFT, json=BODY, headers={"Authorization": "Bearer s3cret-key"})
    assert right.status_code == 200


def test_every_api_route_needs_the_key_and_the_spec_says_so(keyed: TestClient) -> None:
    spec = keyed.app.openapi()  # type: ignore[attr-defined]
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            url = path.replace("{model}", "softmax_cross_entropy_with_logits")
            status = keyed.request(method, url).status_code
            if path.startswith(("/v1/", "/v2")) and not path.startswith("/v2/health/"):
                assert status == 401, (method, path)
                # the document's: the key, or nothing when SCE_API_KEY is unset
                assert "security" not in operation, (method, path)
            else:
                assert status == 200 and operation["security"] == [], (method, path)
    assert spec["security"] == [{"HTTPBearer": []}, {}]


def test_probes_and_metrics_stay_open_with_a_key(keyed: TestClient) -> None:
    assert keyed.get("/v2/health/live").status_code == 200
    assert keyed.get("/v2/health/ready").status_code == 200
    assert keyed.get("/metrics").status_code == 200


def test_key_is_checked_before_the_body_is_read(keyed: TestClient) -> None:
    response = keyed.post(SOFT, content=b"x" * 1024, headers={"content-type": "text/plain"})
    assert response.status_code == 401  # not 415: auth comes first


def test_metrics_show_histograms_after_a_request(client: TestClient) -> None:
    assert client.post(SOFT, json=BODY).status_code == 200
    text = client.get("/metrics").text
    route = 'route="/v1/softmax_cross_entropy_with_logits"'
    assert (
        f'sce_http_request_duration_seconds_bucket{{le="0.001",method="POST",{route},status="200"}}'
        in text
        or ("sce_http_request_duration_seconds_bucket" in text and route in text)
    )
    assert f'sce_http_requests_total{{method="POST",{route},status="200"}}' in text
    assert (
        'sce_inference_duration_seconds_count{dtype="float32",model="softmax_cross_entropy_with_logits",provider="CPUExecutionProvider"}'
        in text
    )
    assert "sce_http_request_bytes_bucket" in text and "sce_http_response_bytes_bucket" in text
    assert "sce_http_requests_in_flight" in text
    assert "\nsce_memory_budget_bytes " in text
    assert "sce_memory_held_bytes 0.0" in text  # every lease given back
    assert "sce_queue_waiting_requests 0.0" in text


def test_unmatched_routes_do_not_explode_label_cardinality(client: TestClient) -> None:
    client.get("/no/such/path/12345")
    text = client.get("/metrics").text
    # the path is in no label (a bare "12345" can be digits of a float, such as a time)
    assert "/no/such" not in text and 'route="unmatched"' in text


def test_request_id_is_honoured_or_generated(client: TestClient) -> None:
    given = client.post(SOFT, json=BODY, headers={"X-Request-ID": "job-7.step-42"})
    assert given.headers["x-request-id"] == "job-7.step-42"
    generated = client.post(SOFT, json=BODY)
    assert len(generated.headers["x-request-id"]) == 32
    hostile = client.post(SOFT, json=BODY, headers={"X-Request-ID": "x" * 500})
    assert len(hostile.headers["x-request-id"]) == 32


def test_cors_is_off_by_default(client: TestClient) -> None:
    preflight = client.options(
        SOFT, headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in preflight.headers


def test_cors_allows_configured_origins() -> None:
    with TestClient(create_app(Settings(cors_origins=["https://ui.example"]))) as client:
        preflight = client.options(
            SOFT, headers={"Origin": "https://ui.example", "Access-Control-Request-Method": "POST"}
        )
        assert preflight.headers["access-control-allow-origin"] == "https://ui.example"
        other = client.options(
            SOFT,
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert "access-control-allow-origin" not in other.headers


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(),
    reason="this ONNX Runtime build offers CUDA: tests/test_cuda.py covers it",
)
def test_cuda_requested_without_cuda_falls_back_to_cpu_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="service.engine"):
        engine = Engine(providers="cuda")
    assert engine.providers == ["CPUExecutionProvider"]
    warnings = [r for r in caplog.records if "CUDAExecutionProvider" in r.getMessage()]
    assert len(warnings) == 1
    loss = engine.softmax_cross_entropy(labels=np.array([0.0, 1.0]), logits=np.zeros(2)).loss
    assert loss == pytest.approx(np.log(2.0))


def test_intra_op_threads_setting_is_applied() -> None:
    assert Engine(intra_op_threads=1).intra_op_threads == 1


@pytest.mark.parametrize(
    ("loop", "workers", "expected"),
    [
        ("auto", 1, "asyncio"),  # fair to many connections on one worker
        ("auto", 2, "uvloop"),  # asyncio's accept loop would feed one worker every burst
        ("uvloop", 1, "uvloop"),
        ("asyncio", 4, "asyncio"),
    ],
)
def test_the_event_loop_follows_the_workers_unless_named(
    loop: str, workers: int, expected: str
) -> None:
    assert Settings(loop=loop, workers=workers).event_loop == expected


def test_chunked_softmax_setting_reaches_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCE_CHUNKED_SOFTMAX", "true")
    with TestClient(create_app(Settings())) as client:
        engine = client.app.state.engine  # type: ignore[attr-defined]
        assert engine.chunked_softmax is True
        body = {"labels": [1.0] + [0.0] * 4095, "logits": [0.0] * 4096}
        response = client.post("/v1/softmax_cross_entropy_with_logits", json=body)
        assert response.json()["loss"]["data"] == pytest.approx(np.log(4096), rel=1e-6)
        assert any(key[-1] for key in engine._sessions)  # a chunked graph ran
    monkeypatch.delenv("SCE_CHUNKED_SOFTMAX")
    assert Settings().chunked_softmax is False  # whole rows by default


@pytest.mark.parametrize(
    ("files", "limit"),
    [
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_cgroup_cpu_quota(tmp_path: Path, files: dict[str, str], limit: float | None) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_limit(tmp_path) == limit


def test_thread_count_follows_the_quota_not_the_host(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a CPU
    assert usable_cpus(tmp_path) == 1


def test_access_log_setting_turns_only_the_access_lines_off() -> None:
    access, root = logging.getLogger("service.access"), logging.getLogger()
    saved = access.level, root.level, root.handlers[:], access.handlers[:], access.propagate
    try:
        logging.config.dictConfig(log_config("info", True, access=False))
        assert not access.isEnabledFor(logging.INFO)
        assert logging.getLogger("service").isEnabledFor(logging.INFO)
        logging.config.dictConfig(log_config("info", True))
        assert access.isEnabledFor(logging.INFO)
    finally:
        access.setLevel(saved[0])
        root.setLevel(saved[1])
        root.handlers[:] = saved[2]
        access.handlers[:], access.propagate = saved[3], saved[4]


def _record(message: str) -> logging.LogRecord:
    return logging.makeLogRecord({"msg": message, "levelno": logging.INFO})


def test_batched_lines_wait_for_the_interval_the_size_or_the_flush() -> None:
    stream = io.StringIO()
    handler = BatchedStreamHandler(stream, interval=0.3)
    try:
        for k in range(3):
            handler.handle(_record(f"line {k}"))
        assert stream.getvalue() == ""  # batched, not written one by one
        deadline = time.monotonic() + 5
        while not stream.getvalue():
            assert time.monotonic() < deadline, "the batch was not written after its interval"
            time.sleep(0.05)
        assert stream.getvalue() == "line 0\nline 1\nline 2\n"
        long = "x" * (BatchedStreamHandler.BATCH_BYTES // 2)
        handler.handle(_record(long))
        handler.handle(_record(long))  # the batch is full: written at once
        assert stream.getvalue().endswith(f"{long}\n{long}\n")
        handler.handle(_record("last"))
        handler.flush()  # as logging.shutdown does at exit
        assert stream.getvalue().endswith("last\n")
        handler.handle(_record("at close"))
    finally:
        handler.close()
    assert stream.getvalue().endswith("at close\n")
    idle = BatchedStreamHandler(io.StringIO(), interval=0.3)
    idle.close()
    idle.flusher.join(timeout=5)
    assert not idle.flusher.is_alive()  # closing ends the thread, even with no batch due


def test_the_access_flush_setting_picks_the_access_handler() -> None:
    for json in (True, False):
        batched = log_config("info", json, access_flush=0.5)
        assert batched["handlers"]["access"]["class"] == "service.logs.BatchedStreamHandler"
        assert batched["handlers"]["access"]["interval"] == 0.5
        assert batched["loggers"]["service.access"]["handlers"] == ["access"]
        assert batched["handlers"]["default"]["class"] == "logging.StreamHandler"
        each = log_config("info", json, access_flush=0)
        assert each["handlers"].get("access", {}).get("class", "logging.StreamHandler") == (
            "logging.StreamHandler"
        )


@pytest.mark.parametrize("path", ["/v1/x", "/v1/x\udcff"], ids=["plain", "lone-surrogate"])
def test_access_lines_are_what_the_general_json_formatter_writes(path: str) -> None:
    """The access logger's own formatter (logs.AccessJsonFormatter) writes the very line
    the formatter of every other record (python-json-logger's) would."""
    options = dict(log_config("info", True)["formatters"]["default"])
    general = SafeJsonFormatter(**{k: v for k, v in options.items() if k != "()"})
    fields = {name: f"{name}-value" for name in ACCESS_FIELDS} | {"path": path, "status": 404}
    record = logging.getLogger("service.access").makeRecord(
        "service.access", logging.INFO, "", 0, "%s %s %s", ("GET", path, 404), None, extra=fields
    )
    line = AccessJsonFormatter().format(record)
    assert line == general.format(record)
    assert list(orjson.loads(line))[4:] == list(ACCESS_FIELDS)


@pytest.mark.parametrize("path", ["/v1/x", "/v1/x\udcff"], ids=["plain", "lone-surrogate"])
def test_access_lines_past_the_logging_module_are_the_logging_modules_lines(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """logs.access_line writes, for the service's own configuration, the very line that
    the logging module would; with a filter anywhere it goes through the module."""
    monkeypatch.setattr(time, "time", lambda: 1764170000.0421)  # the same time both ways
    logger = logging.getLogger("test.access_line")
    stream = io.StringIO()
    handler = BatchedStreamHandler(stream, interval=60)
    handler.setFormatter(AccessJsonFormatter())
    logger.handlers[:], logger.propagate, logger.level = [handler], False, logging.INFO
    fields = {name: f"{name}-value" for name in ACCESS_FIELDS} | {"path": path, "status": 404}
    try:
        logs.access_line(logger, f"GET {path} 404", fields)  # past the module
        logger.info("%s", f"GET {path} 404", extra=fields)  # through it
        handler.flush()
        direct, through = stream.getvalue().splitlines()
        assert direct == through
        assert orjson.loads(direct)["time"].endswith(",042")
        logger.addFilter(lambda record: False)  # a configuration that is not the service's
        logs.access_line(logger, "GET /dropped 404", fields)
        handler.flush()
        assert "/dropped" not in stream.getvalue()
    finally:
        logger.handlers[:], logger.filters[:] = [], []
        handler.close()
