"""The hostile catalogue against a real server: every case a 4xx with a message and no
internals, and after each one the server answers a good request correctly."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import start_server, stop_server
from tests.hostile import INFER, LIMIT_BYTES, LIMIT_ELEMENTS, SOFT, Case, cases

CASES = cases()
GOOD_V1 = {"labels": [0.0, 1.0], "logits": [0.0, 0.0]}
GOOD_V2 = {
    "inputs": [
        {"name": "labels", "shape": [2], "datatype": "FP32", "data": [0.0, 1.0]},
        {"name": "logits", "shape": [2], "datatype": "FP32", "data": [0.0, 0.0]},
    ],
    "outputs": [{"name": "loss"}],
}


def test_catalogue_is_large_and_distinct() -> None:
    assert len(CASES) >= 60
    assert len({c.id for c in CASES}) == len(CASES)
    assert len({(c.path, c.body, tuple(sorted(c.headers.items()))) for c in CASES}) == len(CASES)


@pytest.fixture(scope="module")
def small_server() -> Iterator[httpx.Client]:
    proc, url = start_server(
        env={
            "SCE_MAX_REQUEST_BYTES": str(LIMIT_BYTES),
            "SCE_MAX_JSON_BYTES": str(LIMIT_BYTES),
            "SCE_MAX_ELEMENTS": str(LIMIT_ELEMENTS),
        }
    )
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            yield client
    finally:
        stop_server(proc)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_request(small_server: httpx.Client, case: Case) -> None:
    response = small_server.post(case.path, content=case.body, headers=case.headers)
    assert response.status_code == case.status, response.text
    key = "error" if case.path.startswith("/v2") else "detail"
    message = response.json()[key]
    assert case.message in message, message
    for leak in ("Traceback", 'File "', "/site-packages/", "/work/", "service/"):
        assert leak not in response.text
    good = small_server.post(SOFT, json=GOOD_V1)
    assert good.status_code == 200
    assert good.json()["loss"]["data"] == pytest.approx(0.6931472, rel=1e-6)
    good = small_server.post(INFER, json=GOOD_V2)
    assert good.json()["outputs"][0]["data"] == pytest.approx([0.6931472], rel=1e-6)
