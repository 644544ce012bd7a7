"""safetensors on the native API: round trips, and lying or truncated bodies."""

from __future__ import annotations

import json
import struct

import ml_dtypes
import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.reference import assert_close, random_distribution, softmax_xent

SOFT = "/v1/softmax_cross_entropy_with_logits"
SPARSE = "/v1/sparse_softmax_cross_entropy_with_logits"
ST = "application/x-safetensors"
WIRE = {
    "F32": np.float32,
    "F64": np.float64,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
}
NAMES = {np.dtype(v): k for k, v in WIRE.items()}


def pack(tensors: dict[str, np.ndarray], header_extra: dict | None = None) -> bytes:
    """A safetensors body, written by hand (independent of the service's codec)."""
    header: dict = dict(header_extra or {})
    offset = 0
    for name, array in tensors.items():
        header[name] = {
            "dtype": NAMES[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"".join(a.tobytes() for a in tensors.values())


def unpack(body: bytes) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a safetensors body by hand (safetensors.numpy 0.8 cannot read BF16)."""
    (length,) = struct.unpack("<Q", body[:8])
    header = json.loads(body[8 : 8 + length])
    data = body[8 + length :]
    metadata = header.pop("__metadata__", {})
    arrays = {
        name: np.frombuffer(data[s:e], WIRE[entry["dtype"]]).reshape(entry["shape"])
        for name, entry in header.items()
        for s, e in [entry["data_offsets"]]
    }
    return arrays, metadata


@pytest.mark.parametrize(
    ("dtype", "name"), [(np.float32, "float32"), (ml_dtypes.bfloat16, "bfloat16")]
)
def test_round_trip(client: TestClient, rng: np.random.Generator, dtype: type, name: str) -> None:
    labels = random_distribution(rng, (4, 6), 0).astype(dtype)
    logits = rng.standard_normal((4, 6)).astype(dtype)
    grad_loss = rng.standard_normal(6).astype(dtype)
    response = client.post(
        SOFT,
        content=pack({"labels": labels, "logits": logits, "grad_loss": grad_loss}),
        params={"dim": 0, "outputs": "loss,grad_logits,grad_labels", "name": "st"},
        headers={"content-type": ST, "accept": ST},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == ST
    arrays, metadata = unpack(response.content)
    assert metadata == {"name": "st", "dtype": name}
    expected = softmax_xent(labels, logits, 0, grad_loss)
    for output in ("loss", "grad_logits", "grad_labels"):
        assert arrays[output].dtype == np.dtype(dtype)
        assert_close(arrays[output], expected[output], name, output)


def test_safetensors_in_json_out(client: TestClient) -> None:
    a = np.array([[0.0, 1.0]], np.float32)
    response = client.post(
        SOFT, content=pack({"labels": a, "logits": a}), headers={"content-type": ST}
    )
    assert response.json()["loss"]["shape"] == [1]


def test_json_in_safetensors_out(client: TestClient) -> None:
    response = client.post(
        SOFT,
        json={"labels": [0.0, 1.0], "logits": [0.0, 0.0], "dtype": "float64"},
        headers={"accept": ST},
    )
    arrays, _ = unpack(response.content)
    assert arrays["loss"].dtype == np.float64
    assert arrays["loss"].shape == () and arrays["loss"] == pytest.approx(np.log(2.0))


def test_sparse_safetensors(client: TestClient, rng: np.random.Generator) -> None:
    logits = rng.standard_normal((3, 4)).astype(np.float32)
    labels = np.array([0, 3, 1], np.int32)
    response = client.post(
        SPARSE,
        content=pack({"labels": labels, "logits": logits}),
        headers={"content-type": ST, "accept": ST},
    )
    arrays, _ = unpack(response.content)
    log_p = logits - np.log(np.exp(logits.astype(np.float64)).sum(-1, keepdims=True))
    assert_close(arrays["loss"], -log_p[np.arange(3), labels], "float32")


def _bad_bodies() -> list[tuple[str, bytes, int, str]]:
    a = np.ones((2, 3), np.float32)
    good = pack({"labels": a, "logits": a})
    lying = bytearray(good)
    lying[:8] = struct.pack("<Q", 10**9)
    offsets = pack({"labels": a, "logits": a}).replace(b"[24, 48]", b"[24, 96]")
    return [
        ("truncated body", good[:-5], 400, "safetensors"),
        ("header length past the end", bytes(lying), 400, "safetensors"),
        ("too short for a header", b"\x01\x02", 400, "safetensors"),
        ("header not JSON", struct.pack("<Q", 8) + b"notjson!", 400, "safetensors"),
        ("offsets past the data", offsets, 400, "safetensors"),
        ("unknown tensor", pack({"labels": a, "logits": a, "weights": a}), 422, "weights"),
        ("missing logits", pack({"labels": a}), 422, "logits"),
        (
            "unsupported dtype",
            pack({"labels": a, "logits": a}).replace(b'"F32"', b'"U8" '),
            400,
            "",
        ),
        (
            "mixed dtypes",
            pack({"labels": a, "logits": a.astype(np.float64)}),
            422,
            "share one dtype",
        ),
    ]


@pytest.mark.parametrize(
    ("body", "status", "message"), [c[1:] for c in _bad_bodies()], ids=[c[0] for c in _bad_bodies()]
)
def test_bad_safetensors_bodies(client: TestClient, body: bytes, status: int, message: str) -> None:
    response = client.post(SOFT, content=body, headers={"content-type": ST})
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


def test_query_arguments_with_json_body_are_refused(client: TestClient) -> None:
    response = client.post(SOFT, json={"labels": [1.0], "logits": [1.0]}, params={"dim": 0})
    assert response.status_code == 422
    assert "safetensors" in response.json()["detail"]


def test_reduced_outputs_mix_dtypes_and_scalars(client: TestClient) -> None:
    """A reduced loss (0-d, the logits' dtype) beside weight_sum (0-d, F64) in one body."""
    a = np.array([[0.0, 1.0], [1.0, 0.0]], ml_dtypes.bfloat16)
    response = client.post(
        SOFT,
        content=pack(
            {"labels": a, "logits": a, "sample_weights": np.array([1.0, 3.0], np.float32)}
        ),
        params={"reduction": "sum", "outputs": "loss,weight_sum"},
        headers={"content-type": ST, "accept": ST},
    )
    assert response.status_code == 200, response.text
    arrays, metadata = unpack(response.content)
    assert metadata["dtype"] == "bfloat16"
    assert arrays["loss"].shape == () and arrays["loss"].dtype == np.dtype(ml_dtypes.bfloat16)
    assert arrays["weight_sum"].shape == () and arrays["weight_sum"].dtype == np.float64
    assert float(arrays["weight_sum"]) == 4.0
    assert float(arrays["loss"]) == pytest.approx(4 * np.log1p(np.exp(-1.0)), rel=1e-2)
