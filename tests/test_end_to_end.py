"""End to end: the real server (uvicorn on a loopback port), called over HTTP with httpx."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import server_log, start_server, stop_server
from tests.reference import assert_close, random_distribution, softmax_xent

SOFT = "/v1/softmax_cross_entropy_with_logits"


def test_real_server_computes_loss_and_gradients(server_url: str, rng: np.random.Generator) -> None:
    labels = random_distribution(rng, (8, 10), -1).astype(np.float32)
    logits = rng.standard_normal((8, 10)).astype(np.float32)
    body = {
        "labels": labels.tolist(),
        "logits": logits.tolist(),
        "outputs": ["loss", "grad_logits", "grad_labels"],
    }
    response = httpx.post(server_url + SOFT, json=body, timeout=30)
    assert response.status_code == 200, response.text
    expected = softmax_xent(labels, logits)
    for name in ("loss", "grad_logits", "grad_labels"):
        assert_close(np.array(response.json()[name]["data"]), expected[name], "float32", name)


def test_bad_requests_leave_the_server_serving(server_url: str) -> None:
    with httpx.Client(base_url=server_url, timeout=30) as http:
        bad = [
            http.post(SOFT, content=b"{", headers={"content-type": "application/json"}),
            http.post(SOFT, json=[1, 2]),
            http.post(SOFT, json={"labels": [1.0, 0.0], "logits": [1.0, 2.0, 3.0]}),
            http.post(SOFT, content=b"x", headers={"content-type": "text/csv"}),
            http.get("/v1/nowhere"),
        ]
        assert [r.status_code for r in bad] == [400, 422, 422, 415, 404]
        assert all("detail" in r.json() for r in bad)
        good = http.post(SOFT, json={"labels": [0.0, 1.0], "logits": [0.0, 0.0]})
        assert good.status_code == 200
        assert good.json()["loss"]["data"] == pytest.approx(np.log(2.0), rel=1e-6)


def test_console_script_starts_the_server() -> None:
    script = shutil.which("sce-serve", path=str(Path(sys.executable).parent))
    assert script is not None, "sce-serve is not installed next to this interpreter"
    # The flag wins over SCE_PORT, which points nowhere useful. SCE_LOOP picks the loop.
    proc, url = start_server(env={"SCE_PORT": "1", "SCE_LOOP": "asyncio"}, command=[script])
    try:
        assert httpx.get(url + "/v2/health/live", timeout=10).json() == {"live": True}
        body = {"labels": [0.0, 1.0], "logits": [0.0, 0.0]}
        loss = httpx.post(url + SOFT, json=body, timeout=10).json()["loss"]["data"]
        assert loss == pytest.approx(np.log(2))
    finally:
        stop_server(proc)


def test_invalid_settings_fail_fast_with_a_message() -> None:
    with pytest.raises(RuntimeError, match="providers"):
        start_server(env={**os.environ, "SCE_PROVIDERS": "tpu"}, timeout=30)


def _access_lines(log: str, request_id: str | None = None) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    return [
        e
        for e in lines
        if e.get("logger") == "service.access" and request_id in (None, e.get("request_id"))
    ]


def test_access_logs_are_json_with_the_request_id() -> None:
    proc, url = start_server()
    try:
        response = httpx.post(
            url + SOFT,
            json={"labels": [1.0], "logits": [0.0]},
            headers={"X-Request-ID": "trace-1234"},
            timeout=30,
        )
        assert response.headers["x-request-id"] == "trace-1234"
        # Access lines are written in batches (SCE_ACCESS_LOG_FLUSH, 0.5 s): it comes while
        # the server runs, not only when it stops.
        deadline = time.monotonic() + 10
        while not _access_lines(server_log(proc), "trace-1234"):
            assert time.monotonic() < deadline, server_log(proc)[-3000:]
            time.sleep(0.1)
    finally:
        stop_server(proc)
    access = _access_lines(server_log(proc), "trace-1234")
    assert len(access) == 1
    assert (
        access[0]["status"] == 200 and access[0]["route"] == SOFT and access[0]["duration_ms"] > 0
    )


def test_text_logs_carry_the_access_lines_too() -> None:
    """SCE_LOG_JSON=false: access lines are text, batched like the JSON ones, and all
    written by the time the server has stopped."""
    proc, url = start_server(env={"SCE_LOG_JSON": "false"})
    try:
        with httpx.Client(base_url=url, timeout=30) as http:
            for _ in range(3):
                assert http.post(SOFT, json={"labels": [1.0], "logits": [0.0]}).status_code == 200
    finally:
        stop_server(proc)
    lines = [line for line in server_log(proc).splitlines() if " service.access POST " in line]
    assert len(lines) == 3, server_log(proc)[-2000:]
    assert all(line.endswith(f"POST {SOFT} 200") for line in lines)


def test_two_workers_share_one_metrics_view() -> None:
    proc, url = start_server(env={"SCE_WORKERS": "2"}, timeout=120)
    try:
        with httpx.Client(base_url=url, timeout=30) as http:
            for _ in range(20):
                assert http.post(SOFT, json={"labels": [1.0], "logits": [0.0]}).status_code == 200
            text = http.get("/metrics").text
    finally:
        stop_server(proc)
    total = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("sce_http_requests_total{") and f'route="{SOFT}"' in line
    )
    assert total == 20
    # Each worker wrote its batch of access lines when it stopped.
    assert len([e for e in _access_lines(server_log(proc)) if e["route"] == SOFT]) == 20
