"""Small frictions of a first use, against a real server: `curl -d` bodies (form-urlencoded
by default) are JSON to the native API, and a 413 names its setting and, for a JSON body,
the binary transports that avoid it."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from safetensors.numpy import save

from tests.conftest import start_server, stop_server
from tests.reference import assert_close, random_distribution, softmax_xent

SOFT = "/v1/softmax_cross_entropy_with_logits"
INFER = "/v2/models/softmax_cross_entropy_with_logits/infer"
MAX_REQUEST, MAX_JSON = 64 * 1024, 16 * 1024
CURL_DEFAULT = {"content-type": "application/x-www-form-urlencoded"}  # `curl -d` without -H


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    proc, url = start_server(
        env={"SCE_MAX_REQUEST_BYTES": str(MAX_REQUEST), "SCE_MAX_JSON_BYTES": str(MAX_JSON)}
    )
    try:
        yield url
    finally:
        stop_server(proc)


def test_a_curl_d_body_is_json(url: str, rng: np.random.Generator) -> None:
    labels = random_distribution(rng, (3, 5), -1).astype(np.float32)
    logits = rng.standard_normal((3, 5)).astype(np.float32)
    body = json.dumps({"labels": labels.tolist(), "logits": logits.tolist()})
    response = httpx.post(url + SOFT, content=body, headers=CURL_DEFAULT)
    assert response.status_code == 200, response.text
    loss = np.array(response.json()["loss"]["data"], np.float32)
    assert_close(loss, softmax_xent(labels, logits)["loss"], "float32")
    # Still JSON's rules: a form body (what an HTML form sends) is a 400, not parsed as a form.
    form = httpx.post(url + SOFT, content=b"labels=1&logits=2", headers=CURL_DEFAULT)
    assert form.status_code == 400
    other = httpx.post(url + SOFT, content=body, headers={"content-type": "text/plain"})
    assert other.status_code == 415


def _tensors(rows: int) -> dict[str, np.ndarray]:
    return {
        "labels": np.full((rows, 10), 0.5, np.float32),
        "logits": np.zeros((rows, 10), np.float32),
    }


def _v2_json(rows: int) -> bytes:
    inputs = [
        {"name": n, "shape": list(a.shape), "datatype": "FP32", "data": a.ravel().tolist()}
        for n, a in _tensors(rows).items()
    ]
    return json.dumps({"inputs": inputs}).encode()


def test_413_for_json_names_its_setting_and_the_binary_transports(url: str) -> None:
    v1 = json.dumps({k: a.tolist() for k, a in _tensors(200).items()}).encode()
    assert MAX_JSON < len(v1) < MAX_REQUEST
    for path, body, key, headers in (
        (SOFT, v1, "detail", {"content-type": "application/json"}),
        (SOFT, gzip.compress(v1), "detail", {"content-encoding": "gzip"}),
        (INFER, _v2_json(200), "error", {}),
    ):
        assert len(body) < MAX_REQUEST
        response = httpx.post(url + path, content=body, headers=headers)
        assert response.status_code == 413, (path, response.text)
        message = response.json()[key]
        assert f"limit of {MAX_JSON} bytes" in message and "SCE_MAX_JSON_BYTES" in message
        assert "application/x-safetensors" in message
        assert "Inference-Header-Content-Length" in message


def test_413_for_binary_names_its_setting(url: str) -> None:
    tensors = _tensors(1000)  # 80 KB of float32
    safetensors_body = save(tensors)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": n,
                    "shape": list(a.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": a.nbytes},
                }
                for n, a in tensors.items()
            ]
        }
    ).encode()
    v2_body = header + b"".join(a.tobytes() for a in tensors.values())
    for path, body, key, headers in (
        (SOFT, safetensors_body, "detail", {"content-type": "application/x-safetensors"}),
        (INFER, v2_body, "error", {"inference-header-content-length": str(len(header))}),
    ):
        response = httpx.post(url + path, content=body, headers=headers)
        assert response.status_code == 413, (path, response.text)
        message = response.json()[key]
        assert f"limit of {MAX_REQUEST} bytes" in message and "SCE_MAX_REQUEST_BYTES" in message
        assert "x-safetensors" not in message  # already binary: nothing to switch to
    # The same binary transports carry what JSON could not.
    small = _tensors(400)
    response = httpx.post(
        url + SOFT, content=save(small), headers={"content-type": "application/x-safetensors"}
    )
    assert response.status_code == 200, response.text
