"""Open Inference Protocol through the ASGI app: hand-made bodies, hostile ones included."""

from __future__ import annotations

import gzip
import zlib

import httpx
import ml_dtypes
import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from tests.reference import assert_close, random_distribution, softmax_xent

INFER = "/v2/models/softmax_cross_entropy_with_logits/infer"
SPARSE_INFER = "/v2/models/sparse_softmax_cross_entropy_with_logits/infer"


def _binary_body(
    tensors: dict[str, np.ndarray], datatype: str = "FP32", **request: object
) -> tuple[bytes, dict[str, str]]:
    inputs = [
        {
            "name": name,
            "shape": list(a.shape),
            "datatype": datatype,
            "parameters": {"binary_data_size": a.nbytes},
        }
        for name, a in tensors.items()
    ]
    header = orjson.dumps({"inputs": inputs, **request})
    body = header + b"".join(a.tobytes() for a in tensors.values())
    return body, {"Inference-Header-Content-Length": str(len(header))}


def _split_response(response) -> tuple[dict, bytes]:
    length = int(response.headers.get("inference-header-content-length", len(response.content)))
    return orjson.loads(response.content[:length]), response.content[length:]


def test_json_infer_with_fp16_and_bf16_data(client: TestClient, rng: np.random.Generator) -> None:
    for datatype, dtype, name in (
        ("FP16", np.float16, "float16"),
        ("BF16", ml_dtypes.bfloat16, "bfloat16"),
    ):
        labels = random_distribution(rng, (2, 5), -1).astype(dtype)
        logits = rng.standard_normal((2, 5)).astype(dtype)
        body = {
            "inputs": [
                {
                    "name": n,
                    "shape": [2, 5],
                    "datatype": datatype,
                    "data": a.astype(float).ravel().tolist(),
                }
                for n, a in (("labels", labels), ("logits", logits))
            ],
            "outputs": [{"name": "loss"}],
        }
        response = client.post(INFER, content=orjson.dumps(body))
        assert response.status_code == 200, response.text
        out = response.json()["outputs"][0]
        assert out["datatype"] == datatype and out["shape"] == [2]
        assert_close(np.array(out["data"]), softmax_xent(labels, logits)["loss"], name)


def test_binary_outputs_are_raw_little_endian(client: TestClient, rng: np.random.Generator) -> None:
    labels = random_distribution(rng, (3, 4), -1).astype(np.float32)
    logits = rng.standard_normal((3, 4)).astype(np.float32)
    body, headers = _binary_body(
        {"labels": labels, "logits": logits},
        outputs=[{"name": "grad_logits", "parameters": {"binary_data": True}}, {"name": "loss"}],
        id="abc",
    )
    response = client.post(INFER, content=body, headers=headers)
    assert response.status_code == 200, response.text
    header, raw = _split_response(response)
    assert header["id"] == "abc" and header["model_name"] == "softmax_cross_entropy_with_logits"
    described = {o["name"]: o for o in header["outputs"]}
    assert described["grad_logits"]["parameters"]["binary_data_size"] == 48 == len(raw)
    expected = softmax_xent(labels, logits)
    assert_close(np.frombuffer(raw, "<f4").reshape(3, 4), expected["grad_logits"], "float32")
    assert_close(np.array(described["loss"]["data"]), expected["loss"], "float32")


def test_dim_parameter(client: TestClient, rng: np.random.Generator) -> None:
    labels = random_distribution(rng, (3, 4), 0).astype(np.float64)
    logits = rng.standard_normal((3, 4))
    body, headers = _binary_body(
        {"labels": labels, "logits": logits},
        "FP64",
        parameters={"dim": 0},
        outputs=[{"name": "loss"}],
    )
    response = client.post(INFER, content=body, headers=headers)
    out = response.json()["outputs"][0]
    assert out["shape"] == [4]
    assert_close(np.array(out["data"]), softmax_xent(labels, logits, 0)["loss"], "float64")


def test_non_finite_json_outputs_are_bare_literals(client: TestClient) -> None:
    body = {
        "inputs": [
            {"name": "labels", "shape": [2], "datatype": "FP32", "data": [0.0, 1.0]},
            {"name": "logits", "shape": [2], "datatype": "FP32", "data": [0.0, float("nan")]},
        ]
    }
    import json

    response = client.post(INFER, content=json.dumps(body))  # bare NaN, as Triton writes it
    assert response.status_code == 200, response.text
    assert b'"data":[NaN]' in response.content


def test_unknown_model_is_404_with_error(client: TestClient) -> None:
    for response in (
        client.post("/v2/models/nope/infer", content=b"{}"),
        client.get("/v2/models/nope"),
        client.get("/v2/models/nope/ready"),
    ):
        assert response.status_code == 404
        assert "unknown model" in response.json()["error"]


def test_unknown_v2_route_is_404_with_error(client: TestClient) -> None:
    response = client.get("/v2/nothing/here")
    assert response.status_code == 404 and "error" in response.json()


def test_sparse_label_out_of_range(client: TestClient) -> None:
    body = {
        "inputs": [
            {"name": "labels", "shape": [2], "datatype": "INT64", "data": [0, 9]},
            {"name": "logits", "shape": [2, 3], "datatype": "FP32", "data": [0.0] * 6},
        ]
    }
    response = client.post(SPARSE_INFER, content=orjson.dumps(body))
    assert response.status_code == 422
    assert "[0, 3)" in response.json()["error"]


def _json_request() -> bytes:
    return orjson.dumps(
        {
            "inputs": [
                {"name": "labels", "shape": [2], "datatype": "FP32", "data": [0.0, 1.0]},
                {"name": "logits", "shape": [2], "datatype": "FP32", "data": [0.0, 0.0]},
            ],
            "outputs": [{"name": "loss"}],
        }
    )


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", lambda b: zlib.compress(b, wbits=-15)),
    ],
)
def test_compressed_bodies(client: TestClient, encoding: str, compress) -> None:
    response = client.post(
        INFER, content=compress(_json_request()), headers={"Content-Encoding": encoding}
    )
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == pytest.approx([np.log(2.0)], rel=1e-6)


def test_gzip_bomb_is_413_while_inflating(client: TestClient) -> None:
    # 64 MiB of zeros squeezed into ~64 KiB; the test app's limit is 4 MiB.
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=9)
    assert len(bomb) < 200_000
    response = client.post(INFER, content=bomb, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 413
    assert "limit" in response.json()["error"]


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (gzip.compress(_json_request())[:-10], {"Content-Encoding": "gzip"}, 400),
        (b"not gzip at all", {"Content-Encoding": "gzip"}, 400),
        (_json_request(), {"Content-Encoding": "br"}, 415),
    ],
    ids=["truncated gzip", "not gzip", "brotli"],
)
def test_bad_compression_is_4xx(
    client: TestClient, body: bytes, headers: dict[str, str], status: int
) -> None:
    response = client.post(INFER, content=body, headers=headers)
    assert response.status_code == status
    assert "error" in response.json()


def test_server_and_model_metadata(client: TestClient) -> None:
    server = client.get("/v2").json()
    assert server["providers"] == ["CPUExecutionProvider"]
    model = client.get("/v2/models/sparse_softmax_cross_entropy_with_logits").json()
    assert [t["name"] for t in model["outputs"]] == ["loss", "grad_logits", "weight_sum"]
    assert model["parameters"]["ignore_index"] is None and model["parameters"]["dim"] == -1
    assert client.get("/v2/models/softmax_cross_entropy_with_logits/ready").json()["ready"]


def test_inference_routes_answer_other_methods_with_405(client: TestClient) -> None:
    for path in (
        "/v1/softmax_cross_entropy_with_logits",
        "/v1/sparse_softmax_cross_entropy_with_logits",
        "/v2/models/softmax_cross_entropy_with_logits/infer",
    ):
        response = client.get(path)
        assert response.status_code == 405 and response.headers["allow"] == "POST", path


SOFT = "softmax_cross_entropy_with_logits"
SPARSE = "sparse_softmax_cross_entropy_with_logits"


@pytest.mark.parametrize("binary", [False, True])
def test_model_name_and_version_in_the_body(
    server_url: str, rng: np.random.Generator, binary: bool
) -> None:
    """What real clients send (KServe's puts model_name in every body): ignored when it
    agrees with the URL, a 400 that says why when it does not; other members stay refused."""
    labels = random_distribution(rng, (2, 3), -1).astype(np.float32)
    logits = rng.standard_normal((2, 3)).astype(np.float32)
    expected = softmax_xent(labels, logits)["loss"]

    def post(path: str, **members: object) -> httpx.Response:
        """The members in the JSON body, or in the JSON header of a binary one."""
        wanted = [{"name": "loss", "parameters": {"binary_data": False}}]
        if binary:
            tensors = {"labels": labels, "logits": logits}
            body, headers = _binary_body(tensors, outputs=wanted, **members)
        else:
            inputs = [
                {"name": n, "shape": [2, 3], "datatype": "FP32", "data": a.ravel().tolist()}
                for n, a in (("labels", labels), ("logits", logits))
            ]
            body, headers = orjson.dumps({"inputs": inputs, "outputs": wanted, **members}), {}
        return httpx.post(f"{server_url}{path}", content=body, headers=headers)

    base, versioned = f"/v2/models/{SOFT}", f"/v2/models/{SOFT}/versions/1"
    for path, members in (
        (base, {"model_name": SOFT}),
        (base, {"model_name": SOFT, "model_version": "1"}),
        (base, {"model_name": None, "model_version": ""}),  # null and "": not given
        (versioned, {"model_name": SOFT, "model_version": "1"}),
    ):
        response = post(f"{path}/infer", **members)
        assert response.status_code == 200, (path, members, response.text)
        document = response.json()
        assert document["model_name"] == SOFT and document["model_version"] == "1"
        (loss,) = document["outputs"]
        assert_close(np.array(loss["data"], np.float32), expected, "float32")

    for path, members, words in (
        (base, {"model_name": SPARSE}, f"model_name '{SPARSE}' in the body contradicts"),
        (base, {"model_version": "2"}, "has only version '1'"),
        (versioned, {"model_version": "3"}, "contradicts the URL's version '1'"),
    ):
        response = post(f"{path}/infer", **members)
        assert response.status_code == 400, (path, members, response.text)
        assert words in response.json()["error"]
    response = post(f"{base}/infer", model_nam=SOFT)
    assert response.status_code == 422 and "model_nam" in response.json()["error"]
    response = post(f"/v2/models/{SOFT}/versions/2/infer")
    assert response.status_code == 404 and "no version '2'" in response.json()["error"]


def test_repository_bodies_are_small_json_of_any_content_type(server_url: str) -> None:
    index = f"{server_url}/v2/repository/index"
    for body, headers in (
        (b"", {}),
        (b'{"ready": true}', {}),  # tritonclient sends no Content-Type
        (b'{"ready": false}', {"content-type": "application/json"}),
    ):
        response = httpx.post(index, content=body, headers=headers)
        assert response.status_code == 200, response.text
        assert [m["name"] for m in response.json()] == [SOFT, SPARSE]
    for body, status, words in (
        (b"{", 400, "not JSON"),
        (b'{"ready": "yes"}', 422, "ready must be a JSON boolean"),
        (b'{"readdy": true}', 422, "unknown argument 'readdy'"),
        (b" " * (64 * 1024 + 1), 413, "limit of 65536 bytes"),
    ):
        response = httpx.post(index, content=body)
        assert response.status_code == status, (body[:20], response.text)
        assert words in response.json()["error"]
    load = f"{server_url}/v2/repository/models/{SOFT}/load"
    assert httpx.post(load, content=b"{}").status_code == 200
    assert httpx.post(f"{server_url}/v2/repository/models/nope/load").status_code == 404
