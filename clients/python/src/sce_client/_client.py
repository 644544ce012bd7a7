"""`Client` (blocking) and `AsyncClient` (asyncio): the same calls, the same keywords.

Both share `_Core`: one urllib3 pool (it sends large bodies at socket speed, from the
arrays' own memory), the encoding of calls, the reading of answers into typed errors,
and the retry policy on 503. Only waiting differs: `time.sleep` or `asyncio.sleep`.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import operator
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Literal, Self, TypeVar, cast
from urllib.parse import urlencode

import numpy as np
import numpy.typing as npt
import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    MaxRetryError,
    NewConnectionError,
    ReadTimeoutError,
)

from sce_client import _wire
from sce_client._errors import (
    ConnectError,
    Error,
    ProtocolError,
    Timeout,
    TransportError,
    service_error,
)

Transport = Literal["v2", "safetensors"]
Output = Literal["loss", "grad_logits", "grad_labels", "weight_sum"]
Reduction = Literal["none", "sum", "mean"]
Result = dict[str, np.ndarray]
SOFT_OP = "softmax_cross_entropy_with_logits"
SPARSE_OP = "sparse_softmax_cross_entropy_with_logits"
READY = "/v2/health/ready"
METADATA = "/v2"
_CHUNK = 1 << 20  # answers are read into their buffer 1 MiB at a time


@dataclass(frozen=True)
class _Request:
    method: str
    path: str
    body: list[_wire.Buffer] | None
    headers: dict[str, str]
    decode: Callable[[bytearray, Mapping[str, str]], Result]


@dataclass(frozen=True)
class _Answer:
    status: int
    headers: Mapping[str, str]
    body: bytearray


def _read(response: urllib3.BaseHTTPResponse) -> bytearray:
    """The whole body in one writable buffer (the arrays decoded from it are views)."""
    length = response.headers.get("Content-Length")
    if length is None:
        return bytearray(response.read())
    body = bytearray(int(length))
    view = memoryview(body)
    done = 0
    while done < len(body):
        got = response.readinto(view[done : done + _CHUNK])
        if not got:
            raise ProtocolError(f"the answer ended after {done} of its {len(body)} bytes")
        done += got
    return body


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), None if absent."""
    if value is None:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class _Core:
    """The pool, the wire, the retry policy: everything but waiting."""

    def __init__(
        self,
        base_url: str,
        transport: Transport,
        api_key: str | None,
        timeout: float,
        connect_timeout: float,
        retries: int,
        max_retry_wait: float,
        backoff: float,
        connect_retries: int,
        max_connections: int,
    ) -> None:
        if transport not in ("v2", "safetensors"):
            raise ValueError(f"transport must be 'v2' or 'safetensors', not {transport!r}")
        self.base_url = base_url.rstrip("/")
        self.transport = transport
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.retries = retries
        self.max_retry_wait = max_retry_wait
        self.backoff = backoff
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        retry = urllib3.Retry(
            total=connect_retries,
            connect=connect_retries,
            read=0,  # a request that reached the server is not sent twice on a read error
            redirect=False,
            status=0,  # 503s are retried by _Core.delay, which honours Retry-After in bounds
            other=0,
            backoff_factor=backoff,
            allowed_methods=None,
            raise_on_status=False,
        )
        self.pool = urllib3.PoolManager(
            maxsize=max_connections,
            retries=retry,
            timeout=urllib3.Timeout(connect=connect_timeout, read=timeout),
        )

    def call(
        self,
        op: str,
        tensors: Mapping[str, npt.ArrayLike | None],
        outputs: Sequence[str],
        dim: int,
        reduction: str,
        label_smoothing: float,
        ignore_index: int | None,
        name: str | None,
    ) -> _Request:
        """The request for one call; only options that differ from the defaults travel."""
        if isinstance(outputs, str):  # "loss" would otherwise be read as four outputs
            outputs = (outputs,)
        arrays = {k: _wire.prepare(k, v) for k, v in tensors.items() if v is not None}
        parameters: _wire.Parameters = {}
        if dim != -1:
            parameters["dim"] = operator.index(dim)
        if reduction != "none":
            parameters["reduction"] = reduction
        if label_smoothing != 0:
            parameters["label_smoothing"] = float(label_smoothing)
        if ignore_index is not None:
            parameters["ignore_index"] = operator.index(ignore_index)
        if self.transport == "v2":
            body, header_length = _wire.encode_v2(arrays, outputs, parameters, name)
            headers = {_wire.V2_HEADER_LENGTH: str(header_length)}
            path = f"/v2/models/{op}/infer"

            def decode(data: bytearray, headers: Mapping[str, str]) -> Result:
                return _wire.decode_v2(data, headers.get(_wire.V2_HEADER_LENGTH))

        else:
            body = _wire.encode_safetensors(arrays)
            headers = {"Content-Type": _wire.SAFETENSORS, "Accept": _wire.SAFETENSORS}
            query = {"outputs": ",".join(outputs), **{k: str(v) for k, v in parameters.items()}}
            if name is not None:
                query["name"] = name
            path = f"/v1/{op}?{urlencode(query)}"

            def decode(data: bytearray, headers: Mapping[str, str]) -> Result:
                return _wire.decode_safetensors(data)

        # An explicit length makes urllib3 send the buffers one after the other, unchunked.
        headers["Content-Length"] = str(sum(len(b) for b in body))
        return _Request("POST", path, body, headers, decode)

    def send(self, request: _Request) -> _Answer:
        """One exchange, blocking; urllib3's errors become this package's."""
        try:
            response = self.pool.request(
                request.method,
                self.base_url + request.path,
                # any buffer goes to socket.sendall; the stubs name only bytes and str
                body=cast("list[bytes] | None", request.body),
                headers={**self.headers, **request.headers},
                preload_content=False,
                redirect=False,  # the service never redirects: a 3xx is reported, not followed
            )
            try:
                body = _read(response)
            except BaseException:
                response.close()  # a half-read connection must not go back to the pool
                raise
            response.release_conn()
        except HTTPError as exc:
            raise self._transport_error(exc) from None
        return _Answer(response.status, response.headers, body)

    def _transport_error(self, exc: HTTPError) -> TransportError:
        reason = exc.reason if isinstance(exc, MaxRetryError) and exc.reason else exc
        where = self.base_url
        if isinstance(reason, NewConnectionError):  # (a subclass of ConnectTimeoutError)
            cause = reason.__cause__
            why = getattr(cause, "strerror", None) or str(cause or reason)
            return ConnectError(f"cannot connect to {where}: {why}")
        if isinstance(reason, ConnectTimeoutError):
            return Timeout(f"cannot connect to {where}: no connection in {self.connect_timeout} s")
        if isinstance(reason, ReadTimeoutError | TimeoutError):
            return Timeout(f"{where} did not answer in {self.timeout} s")
        return ConnectError(f"connection to {where} failed: {reason}")

    def delay(self, answer: _Answer, attempt: int, waited: float) -> float | None:
        """Seconds to wait before sending again, or None to stop: only 503s are retried,
        at most `retries` times and `max_retry_wait` seconds in all, after the server's
        Retry-After (else an exponential backoff)."""
        if answer.status != 503 or attempt >= self.retries:
            return None
        delay = _retry_after(answer.headers.get("Retry-After"))
        if delay is None:
            delay = self.backoff * 2**attempt
        if waited + delay > self.max_retry_wait:
            return None  # waiting less than the server asked would only be refused again
        return delay

    def result(self, request: _Request, answer: _Answer) -> Result:
        """The arrays of a final answer, or its typed error."""
        if answer.status >= 300:
            raise service_error(answer.status, answer.body)
        try:
            return request.decode(answer.body, answer.headers)
        except Error:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ProtocolError(f"cannot read the server's answer: {exc!r}") from None

    def get(self, path: str) -> _Request:
        return _Request("GET", path, None, {}, lambda data, headers: {})

    @staticmethod
    def document(answer: _Answer) -> dict[str, Any]:
        """The JSON object of a final answer, or its typed error."""
        if answer.status >= 300:
            raise service_error(answer.status, answer.body)
        try:
            document = json.loads(answer.body)
        except ValueError:
            raise ProtocolError("the server's answer is not JSON") from None
        if not isinstance(document, dict):
            raise ProtocolError("the server's answer is not a JSON object")
        return document

    def close(self) -> None:
        self.pool.clear()


R = TypeVar("R")


class _Calls(Generic[R]):
    """The operations, written once: `Client` returns their results, `AsyncClient`
    coroutines of them, so that both have the same keyword-only signatures."""

    _core: _Core

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        transport: Transport = "v2",
        api_key: str | None = None,
        timeout: float = 300.0,
        connect_timeout: float = 10.0,
        retries: int = 5,
        max_retry_wait: float = 60.0,
        backoff: float = 0.5,
        connect_retries: int = 2,
        max_connections: int = 10,
    ) -> None:
        self._core = _Core(
            base_url,
            transport,
            api_key,
            timeout,
            connect_timeout,
            retries,
            max_retry_wait,
            backoff,
            connect_retries,
            max_connections,
        )

    def _run(self, request: _Request) -> R:
        raise NotImplementedError

    @property
    def base_url(self) -> str:
        return self._core.base_url

    @property
    def transport(self) -> Transport:
        return self._core.transport

    def softmax_cross_entropy(
        self,
        *,
        labels: npt.ArrayLike,
        logits: npt.ArrayLike,
        dim: int = -1,
        grad_loss: npt.ArrayLike | None = None,
        outputs: Sequence[Output] = ("loss",),
        reduction: Reduction = "none",
        label_smoothing: float = 0.0,
        class_weights: npt.ArrayLike | None = None,
        sample_weights: npt.ArrayLike | None = None,
        name: str | None = None,
    ) -> R:
        """tf.nn.softmax_cross_entropy_with_logits_v2 on the server: the requested outputs.

        `labels` and `logits` share a dtype (float16, bfloat16, float32, float64) and
        broadcast against each other; `dim` is the class dimension. `reduction` "sum" or
        "mean" makes the loss a scalar (and `grad_loss` one); the output "weight_sum"
        (float64) is then the mean's denominator. `class_weights` has shape [C],
        `sample_weights` broadcasts to the per-example loss; `label_smoothing` is eps in
        [0, 1]. Weights travel in their own float dtype. `name` tags the request.
        """
        tensors = {
            "labels": labels,
            "logits": logits,
            "grad_loss": grad_loss,
            "class_weights": class_weights,
            "sample_weights": sample_weights,
        }
        return self._run(
            self._core.call(SOFT_OP, tensors, outputs, dim, reduction, label_smoothing, None, name)
        )

    def sparse_softmax_cross_entropy(
        self,
        *,
        labels: npt.ArrayLike,
        logits: npt.ArrayLike,
        dim: int = -1,
        grad_loss: npt.ArrayLike | None = None,
        outputs: Sequence[Output] = ("loss",),
        reduction: Reduction = "none",
        label_smoothing: float = 0.0,
        class_weights: npt.ArrayLike | None = None,
        sample_weights: npt.ArrayLike | None = None,
        name: str | None = None,
        ignore_index: int | None = None,
    ) -> R:
        """tf.nn.sparse_softmax_cross_entropy_with_logits on the server, with the options
        of `softmax_cross_entropy` and `ignore_index`: a label value (e.g. -100) whose
        positions get loss 0 and zero gradients and count nowhere in the mean. `labels`
        are int32 or int64 with the logits' shape without `dim`, their class dimension."""
        tensors = {
            "labels": labels,
            "logits": logits,
            "grad_loss": grad_loss,
            "class_weights": class_weights,
            "sample_weights": sample_weights,
        }
        return self._run(
            self._core.call(
                SPARSE_OP, tensors, outputs, dim, reduction, label_smoothing, ignore_index, name
            )
        )


class Client(_Calls[Result]):
    """Calls the service and blocks; thread-safe (one connection pool, shared).

    `retries` 503 answers are sent again after the server's Retry-After (else
    `backoff` * 2**n seconds), `max_retry_wait` seconds in all at most; then
    `Unavailable`. A connection refused is tried `connect_retries` more times.
    """

    def _answer(self, request: _Request) -> _Answer:
        waited = 0.0
        attempt = 0
        while True:
            answer = self._core.send(request)
            delay = self._core.delay(answer, attempt, waited)
            if delay is None:
                return answer
            time.sleep(delay)
            waited += delay
            attempt += 1

    def _run(self, request: _Request) -> Result:
        return self._core.result(request, self._answer(request))

    def ready(self) -> bool:
        """True when the server answers its readiness probe with 200."""
        try:
            return self._core.send(self._core.get(READY)).status == 200
        except TransportError:
            return False

    def metadata(self) -> dict[str, Any]:
        """The server's metadata (`GET /v2`: name, version, providers); raises this
        package's errors, so it also checks that the server is there."""
        return self._core.document(self._answer(self._core.get(METADATA)))

    def close(self) -> None:
        """Close pooled connections."""
        self._core.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClient(_Calls[Coroutine[Any, Any, Result]]):
    """The same calls as `Client`, awaited: `await client.softmax_cross_entropy(...)`.

    urllib3 is blocking and there is no asyncio HTTP client within numpy and urllib3, so
    each exchange runs in the loop's default thread pool (`asyncio.to_thread`) on one
    shared, thread-safe connection pool: socket I/O releases the GIL, so the event loop
    stays free and concurrent calls overlap (up to `max_connections` connections).
    Waits between retries are `asyncio.sleep`, which holds no thread. (Encoding runs on
    the loop: it copies nothing but arrays that are not C-contiguous.) A cancelled call
    stops waiting at once; its exchange, already in a thread, runs to its end.
    """

    async def _answer(self, request: _Request) -> _Answer:
        waited = 0.0
        attempt = 0
        while True:
            answer = await asyncio.to_thread(self._core.send, request)
            delay = self._core.delay(answer, attempt, waited)
            if delay is None:
                return answer
            await asyncio.sleep(delay)
            waited += delay
            attempt += 1

    async def _call(self, request: _Request) -> Result:
        # decoding makes views, O(header); errors are O(message): fine on the loop
        return self._core.result(request, await self._answer(request))

    def _run(self, request: _Request) -> Coroutine[Any, Any, Result]:
        return self._call(request)

    async def ready(self) -> bool:
        """True when the server answers its readiness probe with 200."""
        try:
            answer = await asyncio.to_thread(self._core.send, self._core.get(READY))
        except TransportError:
            return False
        return answer.status == 200

    async def metadata(self) -> dict[str, Any]:
        """The server's metadata (`GET /v2`: name, version, providers); raises this
        package's errors, so it also checks that the server is there."""
        return self._core.document(await self._answer(self._core.get(METADATA)))

    async def aclose(self) -> None:
        """Close pooled connections."""
        self._core.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
