"""The inference routes' hot stack (service/api/routing.py) answers as FastAPI's whole
stack does: same statuses, bodies and headers, through the app's own middleware (API
key, CORS, observability) and error handlers, and it is the one that serves them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from service.api.routing import ServiceApp
from service.app import create_app
from service.engine.engine import Engine
from service.settings import Settings

KEY = "hot-stack-key"
ORIGIN = "https://lab.example"
SOFT = "/v1/softmax_cross_entropy_with_logits"
INFER = "/v2/models/softmax_cross_entropy_with_logits/infer"
GOOD = {"labels": [[0.25, 0.75]], "logits": [[1.0, 2.0]], "outputs": ["loss", "grad_logits"]}
V2 = {
    "inputs": [
        {"name": "labels", "shape": [1, 2], "datatype": "FP32", "data": [0.25, 0.75]},
        {"name": "logits", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]},
    ]
}
AUTH = {"Authorization": f"Bearer {KEY}"}
JSON = {"Content-Type": "application/json", **AUTH}

# (path, body, headers, status): every way the hot routes answer, errors included
CASES: dict[str, tuple[str, bytes, dict[str, str], int]] = {
    "v1 ok": (SOFT, orjson.dumps(GOOD), JSON, 200),
    "v1 with an Origin": (SOFT, orjson.dumps(GOOD), {**JSON, "Origin": ORIGIN}, 200),
    "v1 bad JSON": (SOFT, b'{"labels": [1.0,', JSON, 400),
    "v1 415": (SOFT, b"x", {**AUTH, "Content-Type": "text/plain"}, 415),
    "v1 422": (SOFT, orjson.dumps({**GOOD, "dim": 7}), JSON, 422),
    "v1 no key": (SOFT, orjson.dumps(GOOD), {"Content-Type": "application/json"}, 401),
    "v1 wrong key": (SOFT, orjson.dumps(GOOD), {**JSON, "Authorization": "Bearer no"}, 401),
    "v1 413": (SOFT, b"[" + b"1.0," * 300_000 + b"1.0]", JSON, 413),
    "v2 ok": (INFER, orjson.dumps(V2), JSON, 200),
    "v2 versioned": (INFER.replace("/infer", "/versions/1/infer"), orjson.dumps(V2), JSON, 200),
    "v2 unknown model": (INFER.replace("softmax", "nope"), orjson.dumps(V2), JSON, 404),
    "v2 bad JSON": (INFER, b"{", JSON, 400),
    "v2 unexpected": (INFER, orjson.dumps(V2), JSON, 500),  # the engine fails
}


@pytest.fixture(scope="module")
def app() -> Iterator[ServiceApp]:
    settings = Settings(api_key=SecretStr(KEY), cors_origins=[ORIGIN], max_json_bytes=1 << 20)
    app = create_app(settings)
    with TestClient(app):
        yield app


def _answer(app: ServiceApp, case: str, hot: bool, monkeypatch: pytest.MonkeyPatch) -> Any:
    path, body, headers, _ = CASES[case]
    stack = app.hot_stack
    assert stack is not None
    calls = []

    async def spy(scope: Any, receive: Any, send: Any) -> None:
        calls.append(scope["path"])
        await stack(scope, receive, send)

    with monkeypatch.context() as patch:
        patch.setattr(app, "hot_stack", spy if hot else None)
        if case == "v2 unexpected":
            patch.setattr(Engine, "softmax_cross_entropy", _fails)
        with TestClient(app, raise_server_exceptions=False) as client:
            response = client.post(path, content=body, headers=headers)
    assert calls == ([path] if hot else []), calls
    varying = {"x-request-id", "date"}
    return (
        response.status_code,
        response.content,
        sorted((k, v) for k, v in response.headers.items() if k not in varying),
    )


def _fails(*args: object, **kwargs: object) -> None:
    raise RuntimeError("injected")


@pytest.mark.parametrize("case", CASES)
def test_the_hot_stack_answers_as_fastapis_does(
    app: ServiceApp, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    hot = _answer(app, case, True, monkeypatch)
    full = _answer(app, case, False, monkeypatch)
    assert hot == full
    assert hot[0] == CASES[case][3], hot


def test_native_telemetry_takes_fastapis_stack() -> None:
    from opentelemetry.sdk.trace import TracerProvider

    app = create_app(Settings(), tracer_provider=TracerProvider())
    with TestClient(app) as client:
        response = client.post(SOFT, content=orjson.dumps(GOOD), headers=JSON)
    assert response.status_code == 200
    assert app.hot_stack is None
