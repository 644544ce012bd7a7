"""Limits and faults in-process: backpressure, timeouts, size bounds, ORT failures."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api.limits import InFlightLimit
from service.app import create_app
from service.engine import sessions
from service.errors import Overloaded
from service.settings import Settings

SOFT = "/v1/softmax_cross_entropy_with_logits"
INFER = "/v2/models/softmax_cross_entropy_with_logits/infer"
BODY = {"labels": [0.0, 1.0], "logits": [0.0, 0.0]}


def test_in_flight_limit_refuses_past_the_bound() -> None:
    limit = InFlightLimit(2, compute=1)

    async def scenario() -> None:
        async with limit.slot(), limit.slot():
            with pytest.raises(Overloaded, match="SCE_MAX_IN_FLIGHT=2"):
                async with limit.slot():
                    pass
        assert limit.active == 0
        async with limit.slot():
            assert limit.active == 1

    asyncio.run(scenario())


def test_full_server_answers_503_with_retry_after() -> None:
    async def scenario() -> tuple[list[int], str | None, int]:
        app = create_app(Settings(max_in_flight=1, body_timeout=5))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                started = asyncio.Event()

                async def slow_body():  # holds its slot while the body trickles in
                    yield b'{"labels": [0.0, 1.0], '
                    started.set()
                    await asyncio.sleep(0.5)
                    yield b'"logits": [0.0, 0.0]}'

                slow = asyncio.create_task(
                    client.post(
                        SOFT, content=slow_body(), headers={"content-type": "application/json"}
                    )
                )
                await started.wait()
                busy = await client.post(SOFT, json=BODY)
                first = await slow
                after = await client.post(SOFT, json=BODY)
                return (
                    [first.status_code, busy.status_code, after.status_code],
                    busy.headers.get("retry-after"),
                    app.state.in_flight.active,
                )

    statuses, retry_after, active = asyncio.run(scenario())
    assert statuses == [200, 503, 200]
    assert retry_after == "1" and active == 0


def test_slow_body_is_408() -> None:
    async def scenario() -> httpx.Response:
        app = create_app(Settings(body_timeout=0.3))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:

                async def trickle():
                    yield b'{"labels": '
                    await asyncio.sleep(1.0)
                    yield b"[1.0]}"

                return await client.post(
                    SOFT, content=trickle(), headers={"content-type": "application/json"}
                )

    response = asyncio.run(scenario())
    assert response.status_code == 408
    assert "did not arrive within 0.3 s" in response.json()["detail"]


def test_onnx_runtime_failure_is_503_and_the_server_recovers(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = sessions.InferenceSession.run_with_iobinding

    def broken(self: object, *args: object, **kwargs: object) -> None:
        raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : injected fault")

    monkeypatch.setattr(sessions.InferenceSession, "run_with_iobinding", broken)
    for path, body in ((SOFT, BODY), (INFER, None)):
        if body is None:
            response = client.post(
                path,
                json={
                    "inputs": [
                        {"name": "labels", "shape": [2], "datatype": "FP32", "data": [0.0, 1.0]},
                        {"name": "logits", "shape": [2], "datatype": "FP32", "data": [0.0, 0.0]},
                    ]
                },
            )
            message = response.json()["error"]
        else:
            response = client.post(path, json=body)
            message = response.json()["detail"]
        assert response.status_code == 503
        assert "ONNX Runtime failed" in message and "injected" not in message
    monkeypatch.setattr(sessions.InferenceSession, "run_with_iobinding", real)
    assert client.post(SOFT, json=BODY).status_code == 200


def test_json_bodies_have_their_own_limit() -> None:
    with TestClient(create_app(Settings(max_json_bytes=2048))) as client:
        response = client.post(SOFT, json={"labels": [0.5] * 1000, "logits": [0.0] * 1000})
        assert response.status_code == 413
        small = client.post(SOFT, json=BODY)
        assert small.status_code == 200


def test_broadcast_past_max_elements_is_refused_before_allocating() -> None:
    with TestClient(create_app(Settings(max_elements=10_000))) as client:
        body = {"labels": np.zeros((200, 1)).tolist(), "logits": np.zeros((1, 200)).tolist()}
        response = client.post(SOFT, json=body)
        assert response.status_code == 422
        assert "40000 elements" in response.json()["detail"]
