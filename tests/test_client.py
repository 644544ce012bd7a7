"""service.client against the live server, and its retry and timeout behaviour."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import urllib3

from service.client import Client, ServiceError
from service.codecs import safetensors
from tests.reference import NUMPY, assert_close, random_distribution, softmax_xent

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("transport", ["safetensors", "v2"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float64"])
def test_client_round_trip(
    server_url: str, rng: np.random.Generator, transport: str, dtype: str
) -> None:
    labels = random_distribution(rng, (6, 3, 4), 1).astype(NUMPY[dtype])
    logits = rng.standard_normal((6, 3, 4)).astype(NUMPY[dtype])
    outputs = ["loss", "grad_logits", "grad_labels"]
    with Client(server_url, transport=transport) as client:  # type: ignore[arg-type]
        assert client.ready()
        got = client.softmax_cross_entropy(labels=labels, logits=logits, dim=1, outputs=outputs)
    expected = softmax_xent(labels, logits, 1)
    for name in outputs:
        assert got[name].dtype == NUMPY[dtype]
        assert_close(got[name], expected[name], dtype, name)


@pytest.mark.parametrize("transport", ["safetensors", "v2"])
def test_client_sparse_and_errors(server_url: str, transport: str) -> None:
    with Client(server_url, transport=transport) as client:  # type: ignore[arg-type]
        out = client.sparse_softmax_cross_entropy(
            labels=np.array([1, 0]), logits=np.zeros((2, 4), np.float32), outputs=["loss"]
        )
        np.testing.assert_allclose(out["loss"], [np.log(4.0)] * 2, rtol=1e-6)
        with pytest.raises(ServiceError) as info:
            client.sparse_softmax_cross_entropy(labels=np.array([7]), logits=np.zeros((1, 4)))
        assert info.value.status == 422 and "[0, 4)" in info.value.message


class _Flaky(BaseHTTPRequestHandler):
    """503 (Retry-After: 0) for the first two calls, then a valid safetensors answer."""

    calls = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).calls += 1
        if type(self).calls <= 2:
            body = b'{"detail": "busy"}'
            self.send_response(503)
            self.send_header("Retry-After", "0")
        else:
            body = safetensors.encode({"loss": np.array([0.5], np.float32)})
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _Slow(_Flaky):
    def do_POST(self) -> None:
        time.sleep(3)


@pytest.fixture
def stub() -> Iterator[tuple[ThreadingHTTPServer, str]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_client_retries_on_503(stub: tuple[ThreadingHTTPServer, str]) -> None:
    _, url = stub
    _Flaky.calls = 0
    with Client(url, retries=3, backoff=0) as client:
        out = client.softmax_cross_entropy(labels=np.zeros(2), logits=np.zeros(2))
    assert _Flaky.calls == 3 and out["loss"].tolist() == [0.5]


def test_client_gives_up_after_its_retries(stub: tuple[ThreadingHTTPServer, str]) -> None:
    _, url = stub
    _Flaky.calls = 0
    with Client(url, retries=1, backoff=0) as client, pytest.raises(ServiceError) as info:
        client.softmax_cross_entropy(labels=np.zeros(2), logits=np.zeros(2))
    assert info.value.status == 503 and _Flaky.calls == 2


def test_client_times_out(stub: tuple[ThreadingHTTPServer, str]) -> None:
    server, url = stub
    server.RequestHandlerClass = _Slow
    start = time.monotonic()
    with Client(url, timeout=0.5, retries=0) as client, pytest.raises(urllib3.exceptions.HTTPError):
        client.softmax_cross_entropy(labels=np.zeros(2), logits=np.zeros(2))
    assert time.monotonic() - start < 2.5


def _run_example(server_url: str, data: Path, *extra: str) -> tuple[dict[str, float], str]:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "evaluate.py"),
            "--url",
            server_url,
            "--data",
            str(data),
            "--samples",
            "3000",
            "--classes",
            "10",
            "--batch",
            "512",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = [line.rsplit(":", 1) for line in result.stdout.strip().splitlines()]
    return {key: float(value) for key, value in lines}, result.stderr


def test_example_evaluates_a_dataset(server_url: str, tmp_path: Path) -> None:
    data = tmp_path / "data.npz"
    reported, stderr = _run_example(server_url, data)
    arrays = np.load(data)
    expected = softmax_xent(arrays["labels"], arrays["logits"])["loss"].mean()
    assert reported["mean loss over 3000 samples"] == pytest.approx(expected, rel=1e-5)
    assert reported["perplexity"] == pytest.approx(np.exp(expected), rel=1e-5)
    assert "batch" in stderr  # the progress bar


def test_example_evaluates_integer_labels_with_padding(server_url: str, tmp_path: Path) -> None:
    data = tmp_path / "data.npz"
    reported, _ = _run_example(server_url, data, "--sparse", "--transport", "v2")
    arrays = np.load(data)
    tokens, logits = arrays["tokens"], arrays["logits"].astype(np.float64)
    kept = tokens != -100
    assert 0 < kept.sum() < len(tokens)  # the dataset holds padding
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -log_p[kept, tokens[kept]].mean()
    assert reported[f"mean loss over {kept.sum()} labelled positions"] == pytest.approx(
        expected, rel=1e-5
    )
    assert reported["perplexity"] == pytest.approx(np.exp(expected), rel=1e-5)


@pytest.mark.parametrize("transport", ["safetensors", "v2"])
def test_client_evaluation_options(server_url: str, transport: str) -> None:
    logits = np.array([[[0.0, 1.0, 2.0], [2.0, 0.0, 0.0]]], np.float32)  # [N, C, T], C = 2
    labels = np.array([[1, -100, 0]])
    with Client(server_url, transport=transport) as client:  # type: ignore[arg-type]
        out = client.sparse_softmax_cross_entropy(
            labels=labels,
            logits=logits,
            dim=1,
            ignore_index=-100,
            reduction="sum",
            grad_loss=np.array(3.0, np.float32),
            class_weights=np.array([1.0, 0.5]),  # float64 beside float32 logits: taken
            outputs=["loss", "grad_logits", "weight_sum"],
        )
        assert out["loss"].shape == () and out["loss"].dtype == np.float32
        assert out["weight_sum"].dtype == np.float64 and out["weight_sum"] == 1.5
        x = logits[0].T.astype(np.float64)  # [T, C]
        log_p = x - np.log(np.exp(x).sum(-1, keepdims=True))
        expected = -0.5 * log_p[0, 1] - 1.0 * log_p[2, 0]
        np.testing.assert_allclose(out["loss"], expected, rtol=1e-6)
        assert out["grad_logits"].shape == (1, 2, 3)
        np.testing.assert_array_equal(out["grad_logits"][0, :, 1], [0.0, 0.0])  # ignored
        soft = client.softmax_cross_entropy(
            labels=np.array([[0.0, 1.0]]),
            logits=np.array([[0.0, 0.0]]),
            reduction="mean",
            label_smoothing=0.5,
            sample_weights=np.array([2.0]),
            outputs=["loss", "weight_sum"],
        )
        np.testing.assert_allclose(soft["loss"], np.log(2.0), rtol=1e-12)
        assert soft["weight_sum"] == 2.0
        with pytest.raises(ServiceError) as info:
            client.softmax_cross_entropy(
                labels=np.ones((1, 2)), logits=np.ones((1, 2)), label_smoothing=2
            )
        assert info.value.status == 422 and "label_smoothing" in info.value.message
