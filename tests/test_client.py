"""sce_client (clients/python) against the live server: both transports, every dtype and
option, typed errors, retries on 503, timeouts, the asyncio client and the dataset helper."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from sce_client import (
    AsyncClient,
    BadRequest,
    Client,
    ConnectError,
    Error,
    PayloadTooLarge,
    ProtocolError,
    ServiceError,
    Timeout,
    Unauthorized,
    Unavailable,
    evaluate,
    evaluate_async,
)

from service.codecs import safetensors
from tests.conftest import free_port, start_server, stop_server
from tests.reference import (
    NUMPY,
    assert_close,
    random_distribution,
    softmax_xent,
    sparse_softmax_xent,
    xent_with_options,
)

TRANSPORTS = ["v2", "safetensors"]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
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
    assert set(got) == set(outputs)
    for name in outputs:
        assert got[name].dtype == NUMPY[dtype]
        assert got[name].flags.writeable  # views of the client's own buffer, not of bytes
        assert_close(got[name], expected[name], dtype, name)


def test_client_defaults_to_v2_binary() -> None:
    assert Client().transport == AsyncClient().transport == "v2"


def test_client_reads_server_metadata(server_url: str) -> None:
    with Client(server_url) as client:
        metadata = client.metadata()
    assert metadata["name"] and "binary_tensor_data" in metadata["extensions"]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("label_dtype", [np.int32, np.int64])
def test_client_sparse(
    server_url: str, rng: np.random.Generator, transport: str, label_dtype: type
) -> None:
    labels = rng.integers(0, 7, (5, 3)).astype(label_dtype)
    logits = rng.standard_normal((5, 3, 7)).astype(np.float32)
    with Client(server_url, transport=transport) as client:  # type: ignore[arg-type]
        got = client.sparse_softmax_cross_entropy(
            labels=labels, logits=logits, outputs=["loss", "grad_logits"]
        )
    expected = sparse_softmax_xent(labels, logits)
    for name in ("loss", "grad_logits"):
        assert_close(got[name], expected[name], "float32", name)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_client_evaluation_options(
    server_url: str, rng: np.random.Generator, transport: str
) -> None:
    logits = rng.standard_normal((4, 6, 3))  # [N, C, T], classes along dim 1
    labels = rng.integers(0, 6, (4, 3))
    labels[0, 1] = labels[2, 2] = -100
    options = {
        "dim": 1,
        "ignore_index": -100,
        "reduction": "mean",
        "label_smoothing": 0.1,
        "class_weights": rng.random(6) + 0.5,
        "sample_weights": rng.random((4, 3)) + 0.5,
        "grad_loss": np.array(3.0),
    }
    outputs = ["loss", "grad_logits", "weight_sum"]
    with Client(server_url, transport=transport) as client:  # type: ignore[arg-type]
        got = client.sparse_softmax_cross_entropy(
            labels=labels, logits=logits, outputs=outputs, name="options-1", **options
        )
    expected = xent_with_options(labels, logits, sparse=True, **options)  # type: ignore[arg-type]
    assert got["loss"].shape == () and got["weight_sum"].dtype == np.float64
    for name in outputs:
        assert_close(got[name], expected[name], "float64", name)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_client_raises_bad_request_with_the_servers_words(server_url: str, transport: str) -> None:
    with Client(server_url, transport=transport) as client:  # type: ignore[arg-type]
        with pytest.raises(BadRequest) as info:
            client.sparse_softmax_cross_entropy(labels=np.array([7]), logits=np.zeros((1, 4)))
        assert info.value.status == 422 and "[0, 4)" in info.value.message
        with pytest.raises(BadRequest, match="label_smoothing"):
            client.softmax_cross_entropy(
                labels=np.ones((1, 2)), logits=np.ones((1, 2)), label_smoothing=2
            )
        with pytest.raises(TypeError, match="complex128"):  # refused before sending
            client.softmax_cross_entropy(labels=np.ones(2, complex), logits=np.ones(2, complex))


@pytest.fixture(scope="module")
def guarded_url() -> Iterator[str]:
    """A server with an API key and a 64 KiB body limit."""
    proc, url = start_server(env={"SCE_API_KEY": "sesame", "SCE_MAX_REQUEST_BYTES": "65536"})
    try:
        yield url
    finally:
        stop_server(proc)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_client_raises_unauthorized_and_payload_too_large(guarded_url: str, transport: str) -> None:
    small, large = np.zeros((2, 3), np.float32), np.zeros((100, 100), np.float32)
    with Client(guarded_url, transport=transport) as client:  # type: ignore[arg-type]
        with pytest.raises(Unauthorized) as info:
            client.softmax_cross_entropy(labels=small, logits=small)
        assert info.value.status == 401 and info.value.message
    with Client(guarded_url, transport=transport, api_key="sesame") as client:  # type: ignore[arg-type]
        assert client.softmax_cross_entropy(labels=small, logits=small)["loss"].shape == (2,)
        with pytest.raises(PayloadTooLarge) as too_large:
            client.softmax_cross_entropy(labels=large, logits=large)
        assert too_large.value.status == 413 and "65536" in too_large.value.message


class _Flaky(BaseHTTPRequestHandler):
    """503 with `retry_after` for the first `busy` calls, then a safetensors answer."""

    calls = 0
    busy = 2
    retry_after: str | None = "0"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        cls = type(self)
        cls.calls += 1
        if cls.calls <= cls.busy:
            body = b'{"detail": "the queue is full"}'
            self.send_response(503)
            if cls.retry_after is not None:
                self.send_header("Retry-After", cls.retry_after)
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


class _Garbled(_Flaky):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", "12")
        self.end_headers()
        self.wfile.write(b"\x08" + b"\x00" * 7 + b"not ")


@pytest.fixture
def stub() -> Iterator[tuple[ThreadingHTTPServer, str]]:
    _Flaky.calls, _Flaky.busy, _Flaky.retry_after = 0, 2, "0"
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _call(client: Client) -> dict[str, np.ndarray]:
    return client.softmax_cross_entropy(labels=np.zeros(2), logits=np.zeros(2))


def test_client_retries_on_503(stub: tuple[ThreadingHTTPServer, str]) -> None:
    _, url = stub
    with Client(url, transport="safetensors", retries=3) as client:
        assert _call(client)["loss"].tolist() == [0.5]
    assert _Flaky.calls == 3


def test_client_waits_as_retry_after_says(stub: tuple[ThreadingHTTPServer, str]) -> None:
    _, url = stub
    _Flaky.busy, _Flaky.retry_after = 1, "1"
    start = time.monotonic()
    with Client(url, transport="safetensors", backoff=0) as client:
        assert _call(client)["loss"].tolist() == [0.5]
    assert _Flaky.calls == 2 and time.monotonic() - start >= 1.0


def test_client_gives_up_after_its_retries(stub: tuple[ThreadingHTTPServer, str]) -> None:
    _, url = stub
    with Client(url, transport="safetensors", retries=1) as client:
        with pytest.raises(Unavailable) as info:
            _call(client)
    assert info.value.status == 503 and info.value.message == "the queue is full"
    assert _Flaky.calls == 2


def test_client_does_not_wait_past_max_retry_wait(stub: tuple[ThreadingHTTPServer, str]) -> None:
    _, url = stub
    _Flaky.retry_after = "30"
    start = time.monotonic()
    with Client(url, transport="safetensors", max_retry_wait=5) as client:
        with pytest.raises(Unavailable):
            _call(client)
    assert _Flaky.calls == 1 and time.monotonic() - start < 2


def test_client_backs_off_without_retry_after(stub: tuple[ThreadingHTTPServer, str]) -> None:
    _, url = stub
    _Flaky.retry_after = None
    start = time.monotonic()
    with Client(url, transport="safetensors", backoff=0.2) as client:
        assert _call(client)["loss"].tolist() == [0.5]
    assert time.monotonic() - start >= 0.2 + 0.4


def test_async_client_retries_on_503(stub: tuple[ThreadingHTTPServer, str]) -> None:
    _, url = stub

    async def main() -> dict[str, np.ndarray]:
        async with AsyncClient(url, transport="safetensors") as client:
            return await client.softmax_cross_entropy(labels=np.zeros(2), logits=np.zeros(2))

    assert asyncio.run(main())["loss"].tolist() == [0.5] and _Flaky.calls == 3


def test_client_times_out(stub: tuple[ThreadingHTTPServer, str]) -> None:
    server, url = stub
    server.RequestHandlerClass = _Slow
    start = time.monotonic()
    with Client(url, timeout=0.5) as client, pytest.raises(Timeout) as info:
        _call(client)
    assert time.monotonic() - start < 2.5
    assert isinstance(info.value, TimeoutError) and "0.5 s" in str(info.value)


def test_client_reports_an_answer_it_cannot_read(stub: tuple[ThreadingHTTPServer, str]) -> None:
    server, url = stub
    server.RequestHandlerClass = _Garbled
    with Client(url, transport="safetensors") as client, pytest.raises(ProtocolError):
        _call(client)


def test_client_unreachable_is_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with Client(url) as client:
        assert not client.ready()
        with pytest.raises(ConnectError) as info:
            _call(client)
    assert isinstance(info.value, ConnectionError) and isinstance(info.value, Error)
    assert str(info.value) == f"cannot connect to {url}: Connection refused"

    async def main() -> None:
        async with AsyncClient(url) as client:
            assert not await client.ready()
            with pytest.raises(ConnectError, match="Connection refused"):
                await client.metadata()

    asyncio.run(main())


def test_async_client_has_the_same_calls() -> None:
    for name in ("softmax_cross_entropy", "sparse_softmax_cross_entropy"):
        sync, awaited = (inspect.signature(getattr(c, name)) for c in (Client, AsyncClient))
        assert sync.parameters == awaited.parameters
        assert all(p.kind is p.KEYWORD_ONLY for p in list(sync.parameters.values())[1:])
    sync_init, async_init = inspect.signature(Client), inspect.signature(AsyncClient)
    assert sync_init.parameters == async_init.parameters


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_async_client_concurrent_calls(
    server_url: str, rng: np.random.Generator, transport: str
) -> None:
    batches = [
        (random_distribution(rng, (8, 5), -1), rng.standard_normal((8, 5))) for _ in range(6)
    ]

    async def main() -> list[dict[str, np.ndarray]]:
        async with AsyncClient(server_url, transport=transport) as client:  # type: ignore[arg-type]
            assert await client.ready()
            calls = [
                client.softmax_cross_entropy(labels=y, logits=x, outputs=["loss", "grad_logits"])
                for y, x in batches
            ]
            results = await asyncio.gather(*calls)
            with pytest.raises(ServiceError) as info:
                await client.softmax_cross_entropy(labels=np.ones((2, 3)), logits=np.ones((3, 2)))
            assert info.value.status == 422
            return results

    for (labels, logits), got in zip(batches, asyncio.run(main()), strict=True):
        expected = softmax_xent(labels, logits)
        assert_close(got["loss"], expected["loss"], "float64", "loss")
        assert_close(got["grad_logits"], expected["grad_logits"], "float64", "grad_logits")


def _batches(values: np.ndarray, size: int) -> list[np.ndarray]:
    return [values[i : i + size] for i in range(0, len(values), size)]


def test_evaluate_is_one_call_on_the_whole_dataset(
    server_url: str, rng: np.random.Generator, capsys: pytest.CaptureFixture[str]
) -> None:
    logits = rng.standard_normal((1000, 9)) * 3
    labels = rng.integers(0, 9, 1000)
    labels[rng.random(1000) < 0.2] = -100
    with Client(server_url) as client:
        whole = client.sparse_softmax_cross_entropy(
            labels=labels, logits=logits, ignore_index=-100, reduction="mean"
        )
        batches = list(zip(_batches(labels, 128), _batches(logits, 128), strict=True))
        result = evaluate(client, batches, sparse=True, ignore_index=-100)
    assert result.batches == 8 and result.weight_sum == (labels != -100).sum()
    assert result.mean == pytest.approx(float(whole["loss"]), rel=1e-13)
    assert "8/8" in capsys.readouterr().err  # tqdm's bar (installed by make test)


def test_evaluate_takes_sample_weights_and_stays_quiet(
    server_url: str, rng: np.random.Generator, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = random_distribution(rng, (300, 4), -1)
    logits = rng.standard_normal((300, 4))
    weights = rng.random(300)
    expected = xent_with_options(labels, logits, sparse=False, sample_weights=weights)
    batches = [
        {"labels": y, "logits": x, "sample_weights": w}
        for y, x, w in zip(*(_batches(a, 70) for a in (labels, logits, weights)), strict=True)
    ]
    with Client(server_url, transport="safetensors") as client:
        result = evaluate(client, iter(batches), progress=False)
    assert result.batches == 5
    assert result.weight_sum == pytest.approx(weights.sum(), rel=1e-13)
    assert result.loss_sum == pytest.approx(expected["loss"].sum(), rel=1e-12)
    assert capsys.readouterr().err == ""


def test_evaluate_async_equals_evaluate(server_url: str, rng: np.random.Generator) -> None:
    labels = random_distribution(rng, (500, 6), -1).astype(np.float32)
    logits = rng.standard_normal((500, 6)).astype(np.float32)
    batches = list(zip(_batches(labels, 64), _batches(logits, 64), strict=True))

    async def main() -> float:
        async with AsyncClient(server_url) as client:
            result = await evaluate_async(client, batches, progress=False, concurrency=3)
            return result.mean

    with Client(server_url) as client:
        expected = evaluate(client, batches, progress=False).mean
    # the same per-batch sums, added exactly: equal whatever order they came back in
    assert asyncio.run(main()) == expected
    reference = softmax_xent(labels, logits)["loss"].mean()
    assert expected == pytest.approx(reference, rel=1e-6)
