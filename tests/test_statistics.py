"""Triton's statistics extension, read with tritonclient's own call from a real server,
after a known number of good and bad requests on the v2 and the native v1 routes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.conftest import start_server, stop_server

SOFT = "softmax_cross_entropy_with_logits"
SPARSE = "sparse_softmax_cross_entropy_with_logits"
PARTS = ("queue", "compute_input", "compute_infer", "compute_output")


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """A server of its own: its counts are this module's requests only."""
    proc, url = start_server(env={"SCE_MAX_REQUEST_BYTES": "65536"})
    try:
        yield url
    finally:
        stop_server(proc)


def _client(url: str) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url.removeprefix("http://"), network_timeout=60)


def _input(name: str, array: np.ndarray, datatype: str) -> triton.InferInput:
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def _v2_soft(client: triton.InferenceServerClient, rng: np.random.Generator, classes: int) -> None:
    labels = rng.dirichlet(np.ones(3), size=4).astype(np.float32)
    logits = rng.standard_normal((4, classes)).astype(np.float32)
    client.infer(SOFT, [_input("labels", labels, "FP32"), _input("logits", logits, "FP32")])


def _v1(url: str, op: str, body: Any, **headers: str) -> int:
    response = httpx.post(f"{url}/v1/{op}", json=body, headers=headers, timeout=60)
    return response.status_code


def _stats(client: triton.InferenceServerClient, model: str, version: str = "") -> dict[str, Any]:
    answer = client.get_inference_statistics(model, version)
    assert [m["name"] for m in answer["model_stats"]] == [model]
    stat: dict[str, Any] = answer["model_stats"][0]
    return stat


def test_counts_and_durations_of_good_and_bad_requests(
    server: str, rng: np.random.Generator
) -> None:
    client = _client(server)
    before = time.time_ns() // 1_000_000
    good_v2, bad_v2, good_v1, bad_v1, sparse_good, sparse_bad = 5, 3, 4, 4, 2, 1
    for _ in range(good_v2):
        _v2_soft(client, rng, 3)
    for _ in range(bad_v2):  # 3 classes of labels against 5 of logits: 422
        with pytest.raises(InferenceServerException, match=r"broadcast|shape"):
            _v2_soft(client, rng, 5)
    pair = {"labels": [[0.0, 1.0], [0.5, 0.5]], "logits": [[2.0, -1.0], [0.3, 0.1]]}
    for _ in range(good_v1):
        assert _v1(server, SOFT, pair) == 200
    bad = [
        (_v1(server, SOFT, {"labels": [[1.0]]}), 422),  # no logits
        (_v1(server, SOFT, pair, **{"content-type": "text/plain"}), 415),  # before the body
        (_v1(server, SOFT, {**pair, "logits": [[0.0] * 20000]}), 413),  # over 64 KiB
        (_v1(server, SOFT, {**pair, "dim": 5}), 422),
    ]
    assert [got for got, _ in bad] == [want for _, want in bad]
    sparse = {"labels": [1, 0], "logits": [[2.0, -1.0], [0.3, 0.1]]}
    for _ in range(sparse_good):
        assert _v1(server, SPARSE, sparse) == 200
    assert _v1(server, SPARSE, {**sparse, "labels": [7, 0]}) == 422  # out of range
    # An unknown model is nobody's request
    assert httpx.post(f"{server}/v2/models/nope/infer", content=b"{}").status_code == 404
    after = time.time_ns() // 1_000_000

    every = client.get_inference_statistics()
    assert [m["name"] for m in every["model_stats"]] == [SOFT, SPARSE]
    soft = _stats(client, SOFT)
    assert soft == _stats(client, SOFT, "1")
    assert soft == every["model_stats"][0]
    assert soft["version"] == "1"
    assert soft["batch_stats"] == [] and soft["response_stats"] == {}
    infer = soft["inference_stats"]
    successes = good_v2 + good_v1
    assert soft["inference_count"] == soft["execution_count"] == successes
    assert infer["success"]["count"] == successes
    assert infer["fail"]["count"] == bad_v2 + bad_v1
    assert all(infer[part]["count"] == successes for part in PARTS)
    assert infer["cache_hit"] == infer["cache_miss"] == {"count": 0, "ns": 0}
    assert all(infer[part]["ns"] > 0 for part in (*PARTS, "success", "fail"))
    assert infer["success"]["ns"] >= sum(infer[part]["ns"] for part in PARTS)
    assert before <= soft["last_inference"] <= after

    sparse_stats = _stats(client, SPARSE)
    assert sparse_stats["inference_count"] == sparse_good
    assert sparse_stats["inference_stats"]["fail"]["count"] == sparse_bad
    assert before <= sparse_stats["last_inference"] <= after
    assert client.get_server_metadata()["extensions"][-1] == "statistics"


def test_unknown_model_or_version_is_refused(server: str) -> None:
    client = _client(server)
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_inference_statistics("nope")
    with pytest.raises(InferenceServerException, match="no version"):
        client.get_inference_statistics(SOFT, "2")
    response = httpx.get(f"{server}/v2/models/nope/stats")
    assert response.status_code == 404 and "error" in response.json()


def test_workers_add_up_their_counts() -> None:
    """With two workers, requests land on either; every answer gives the sum of both."""
    proc, url = start_server(env={"SCE_WORKERS": "2"})
    try:
        pair = {"labels": [[0.0, 1.0]], "logits": [[2.0, -1.0]]}
        for _ in range(24):  # a connection each, so that both workers take some
            assert _v1(url, SOFT, pair) == 200
        assert _v1(url, SOFT, {"labels": [[1.0]]}) == 422
        for _ in range(6):  # whichever worker answers
            stat = _stats(_client(url), SOFT)
            assert stat["inference_count"] == 24
            assert stat["inference_stats"]["fail"]["count"] == 1
    finally:
        stop_server(proc)
