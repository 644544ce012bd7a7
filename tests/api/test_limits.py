"""Limits and faults in-process: backpressure, timeouts, size bounds, ORT failures."""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

SOFT = "/v1/softmax_cross_entropy_with_logits"
INFER = "/v2/models/softmax_cross_entropy_with_logits/infer"
BODY = {"labels": [0.0, 1.0], "logits": [0.0, 0.0]}


def test_a_request_that_does_not_fit_now_waits_its_turn() -> None:
    """Ordinary load is queued, not refused: while other requests hold nearly all of a
    tiny budget, a request waits, and is answered once they give it back."""

    async def scenario() -> tuple[int, float, int]:
        app = create_app(Settings(memory_budget=16 << 20))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                budget = app.state.budget
                hog = budget.lease()
                await hog.hold(budget.total - 100)  # less than any request needs
                asyncio.get_running_loop().call_later(0.3, hog.release)
                started = time.monotonic()
                response = await client.post(SOFT, json=BODY)
                return response.status_code, time.monotonic() - started, budget.free

    status, waited, free = asyncio.run(scenario())
    assert status == 200
    assert waited >= 0.3  # it waited for the memory, and was not refused
    assert free == 16 << 20  # every lease given back


def test_a_request_that_waits_past_the_deadline_gets_503_with_retry_after() -> None:
    async def scenario() -> httpx.Response:
        app = create_app(Settings(memory_budget=16 << 20, queue_timeout=0.2, min_data_rate=0))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                hog = app.state.budget.lease()
                await hog.hold(16 << 20)
                try:
                    return await client.post(SOFT, json=BODY)
                finally:
                    hog.release()

    response = asyncio.run(scenario())
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert "SCE_QUEUE_TIMEOUT" in response.json()["detail"]


def test_work_that_could_never_fit_is_422_naming_the_setting() -> None:
    with TestClient(create_app(Settings(memory_budget=128 << 20))) as client:
        small = [[0] * 256] * 256
        body = {"labels": small, "logits": small, "outputs": ["loss", "grad_logits"]}
        assert client.post(SOFT, json=body).status_code == 200
        # an 8 MiB body whose gradients, as JSON text, would need more than 128 MiB
        zeros = [[0] * 1024] * 2048
        body = {"labels": zeros, "logits": zeros, "outputs": ["grad_logits", "grad_labels"]}
        response = client.post(SOFT, json=body)
        assert response.status_code == 422
        assert "SCE_MEMORY_BUDGET" in response.json()["detail"]


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
    assert "did not arrive within 0.3 s (SCE_BODY_TIMEOUT)" in response.json()["detail"]


def test_onnx_runtime_failure_is_503_and_the_server_recovers(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Broken:
        """ONNX Runtime's native session, failing every run (bound or plain)."""

        def __init__(self, real: object) -> None:
            self.real = real

        def __getattr__(self, name: str) -> object:
            if name in ("run", "run_with_iobinding"):
                return self.fail
            return getattr(self.real, name)

        @staticmethod
        def fail(*args: object) -> None:
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : injected fault")

    engine = client.app.state.engine  # type: ignore[attr-defined]
    engine._checks.clear()  # small calls' runs are prepared anew, on the broken sessions
    for session in engine._sessions.values():
        monkeypatch.setattr(session, "_sess", Broken(session._sess))
    # plain runs (small float32), bound ones (bfloat16), v2
    for path, body in ((SOFT, BODY), (SOFT, {**BODY, "dtype": "bfloat16"}), (INFER, None)):
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
    monkeypatch.undo()
    engine._checks.clear()
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
