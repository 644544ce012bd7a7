"""The native JSON API through the ASGI app: results, and every error rule."""

from __future__ import annotations

import gzip

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel

from service.schemas import InferenceRequest, LossRequest, SparseLossRequest
from tests.reference import NUMPY, assert_close, random_distribution, softmax_xent

SOFT = "/v1/softmax_cross_entropy_with_logits"
SPARSE = "/v1/sparse_softmax_cross_entropy_with_logits"
JSON = {"content-type": "application/json"}


def _post(client: TestClient, path: str, body: object, **kwargs: object):
    return client.post(path, content=orjson.dumps(body), headers=JSON, **kwargs)


@pytest.mark.parametrize("dtype", list(NUMPY))
def test_soft_returns_requested_outputs(
    client: TestClient, rng: np.random.Generator, dtype: str
) -> None:
    labels = random_distribution(rng, (3, 2, 5), 1).astype(NUMPY[dtype])
    logits = rng.standard_normal((3, 2, 5)).astype(NUMPY[dtype])
    grad_loss = rng.standard_normal((3, 5)).astype(NUMPY[dtype])
    body = {
        "labels": labels.astype(np.float64).tolist(),
        "logits": logits.astype(np.float64).tolist(),
        "axis": 1,
        "dtype": dtype,
        "outputs": ["loss", "grad_logits", "grad_labels"],
        "grad_loss": grad_loss.astype(np.float64).tolist(),
        "name": "step-1",
    }
    response = _post(client, SOFT, body)
    assert response.status_code == 200, response.text
    document = response.json()
    assert document["name"] == "step-1" and document["dtype"] == dtype
    expected = softmax_xent(labels, logits, 1, grad_loss)
    for output in ("loss", "grad_logits", "grad_labels"):
        assert document[output]["shape"] == list(expected[output].shape)
        assert_close(np.array(document[output]["data"]), expected[output], dtype, output)


def test_default_output_is_loss_only(client: TestClient) -> None:
    response = _post(client, SOFT, {"labels": [0.0, 1.0], "logits": [1.0, 2.0]})
    document = response.json()
    assert set(document) == {"name", "dtype", "loss"}
    assert document["loss"]["shape"] == []
    assert document["loss"]["data"] == pytest.approx(float(np.log1p(np.exp(-1.0))), rel=1e-6)


def test_non_finite_values_travel_as_strings(client: TestClient) -> None:
    body = {"labels": [[0.0, 1.0], [1.0, 0.0]], "logits": [["-Infinity", 0.0], ["NaN", 1.0]]}
    document = _post(client, SOFT, body).json()
    assert document["loss"]["data"] == ["NaN", "NaN"]


def test_sparse_returns_loss_and_grad(client: TestClient, rng: np.random.Generator) -> None:
    logits = rng.standard_normal((4, 3))
    labels = rng.integers(0, 3, size=4)
    body = {"labels": labels.tolist(), "logits": logits.tolist(), "dtype": "float64"}
    body["outputs"] = ["loss", "grad_logits"]
    document = _post(client, SPARSE, body).json()
    onehot = np.eye(3)[labels]
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    np.testing.assert_allclose(document["loss"]["data"], -(onehot * log_p).sum(-1), rtol=1e-12)
    np.testing.assert_allclose(document["grad_logits"]["data"], np.exp(log_p) - onehot, atol=1e-12)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([[0.0, 1.0], [1.0, 2.0]], "arguments must be named"),
        ("labels", "arguments must be named"),
        ({"labels": [1.0], "logits": [1.0], "_sentinel": None}, "unknown argument '_sentinel'"),
        ({"labels": [1.0], "logitz": [1.0]}, "arguments must be named"),
        ({"logits": [1.0]}, "labels"),
        ({"labels": [1.0], "logits": [1.0], "dim": 0, "axis": -1}, "disagree"),
        ({"labels": [1.0], "logits": [1.0], "dim": 1}, "out of range"),
        ({"labels": [1.0], "logits": [1.0], "dim": "last"}, "dim"),
        ({"labels": [[1.0, 0.0]], "logits": [[1.0, 0.0, 0.0]]}, "[1, 2]"),
        ({"labels": [[], []], "logits": [[], []]}, "at least one class"),
        ({"labels": 1.0, "logits": 1.0}, "rank >= 1"),
        ({"labels": [[1.0], [2.0, 3.0]], "logits": [1.0]}, "jagged"),
        ({"labels": [1.0], "logits": [1e6], "dtype": "float16"}, "cannot represent"),
        ({"labels": [1.0], "logits": [1.0], "dtype": "int8"}, "dtype"),
        ({"labels": [1.0], "logits": [1.0], "outputs": ["gradient"]}, "outputs"),
        ({"labels": [1.0], "logits": [1.0], "outputs": []}, "outputs"),
        ({"labels": [1.0], "logits": ["one"]}, "'one'"),
        (
            {
                "labels": [1.0, 0.0],
                "logits": [1.0, 0.0],
                "outputs": ["grad_logits"],
                "grad_loss": [1.0, 2.0],
            },
            "grad_loss",
        ),
    ],
)
def test_invalid_arguments_are_422_with_a_message(
    client: TestClient, body: object, message: str
) -> None:
    response = _post(client, SOFT, body)
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"labels": [0, 3], "logits": [[1.0, 2.0, 3.0]] * 2}, "[0, 3)"),
        ({"labels": [0], "logits": [[1.0, 2.0]] * 2}, "shape"),
        ({"labels": [0.5], "logits": [[1.0, 2.0]]}, "integers"),
        ({"labels": [0], "logits": [[1.0, 2.0]], "dim": 0}, "class dimension (dim 0), [2]"),
        ({"labels": [0], "logits": [[1.0, 2.0]], "axis": 2}, "out of range"),
        ({"labels": [0], "logits": [[1.0, 2.0]], "ignore_index": "-100"}, "JSON integer"),
        ({"labels": [0], "logits": [[1.0]], "outputs": ["grad_labels"]}, "outputs"),
    ],
)
def test_sparse_invalid_arguments_are_422(client: TestClient, body: object, message: str) -> None:
    response = _post(client, SPARSE, body)
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]


def test_malformed_json_is_400(client: TestClient) -> None:
    response = client.post(SOFT, content=b'{"labels": [1.0', headers=JSON)
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["detail"]


def test_bare_nan_literal_is_400(client: TestClient) -> None:
    response = client.post(SOFT, content=b'{"labels": [1.0], "logits": [NaN]}', headers=JSON)
    assert response.status_code == 400


def test_wrong_content_type_is_415(client: TestClient) -> None:
    response = client.post(SOFT, content=b"labels=1", headers={"content-type": "text/plain"})
    assert response.status_code == 415
    assert "application/json" in response.json()["detail"]


def test_body_over_limit_is_413_before_reading(client: TestClient) -> None:
    big = b"[" + b"1.0," * (2 * 1024 * 1024) + b"1.0]"
    response = client.post(SOFT, content=big, headers=JSON)
    assert response.status_code == 413
    assert "limit" in response.json()["detail"]


def test_body_over_limit_without_content_length_is_413(client: TestClient) -> None:
    def chunks():
        for _ in range(64):
            yield b" " * (128 * 1024)

    response = client.post(SOFT, content=chunks(), headers=JSON)
    assert response.status_code == 413


def test_gzip_is_not_mistaken_for_json(client: TestClient) -> None:
    body = gzip.compress(orjson.dumps({"labels": [1.0], "logits": [1.0]}))
    response = client.post(SOFT, content=body, headers=JSON)
    assert 400 <= response.status_code < 500


def test_no_traceback_in_error_bodies(client: TestClient) -> None:
    response = client.post(SOFT, content=b"\xff\xfe\x00", headers=JSON)
    assert response.status_code == 400
    assert "Traceback" not in response.text and ".py" not in response.text


def test_health(client: TestClient) -> None:
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").json() == {"ready": True}


@pytest.mark.parametrize(
    ("path", "model"),
    [
        (SOFT, LossRequest),
        (SPARSE, SparseLossRequest),
        ("/v2/models/softmax_cross_entropy_with_logits/infer", InferenceRequest),
    ],
)
def test_schema_examples_are_requests_that_succeed(
    client: TestClient, path: str, model: type[BaseModel]
) -> None:
    extra = model.model_config.get("json_schema_extra")
    assert isinstance(extra, dict)
    for example in extra["examples"]:
        sparse = any(i.get("datatype") == "INT64" for i in example.get("inputs", []))
        target = path.replace("softmax", "sparse_softmax") if sparse else path
        response = _post(client, target, example)
        assert response.status_code == 200, (example, response.text)
