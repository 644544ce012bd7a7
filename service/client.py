"""A Python client for evaluation jobs: numpy in, numpy out.

Tensors travel as safetensors (native API) or as v2 binary tensors (Open Inference
Protocol). urllib3 carries them: it sends large bodies at socket speed (httpx is
~10x slower for 100 MB bodies), pools connections, retries on 503 with the server's
Retry-After, and takes connect/read timeouts.

    with Client("http://127.0.0.1:8000") as client:
        out = client.softmax_cross_entropy(labels=y, logits=x, outputs=["loss", "grad_logits"])
        out["loss"], out["grad_logits"]
        # an evaluation batch: the summed loss and its weight, to combine batches exactly
        out = client.sparse_softmax_cross_entropy(
            labels=tokens, logits=x, ignore_index=-100, reduction="sum",
            outputs=["loss", "weight_sum"],
        )
"""

from __future__ import annotations

import dataclasses
import json
import operator
from collections.abc import Sequence
from types import TracebackType
from typing import Literal, Self
from urllib.parse import urlencode

import numpy as np
import urllib3

from service.codecs import safetensors, v2
from service.engine.types import DEFAULT_OPTIONS, SOFT_OP, SPARSE_OP, DType, Options

Transport = Literal["safetensors", "v2"]


class ServiceError(Exception):
    """The service answered with an error status; `status` and `message` say which."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class Client:
    """Calls the service; thread-safe (one connection pool, shared)."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        transport: Transport = "safetensors",
        api_key: str | None = None,
        timeout: float = 300.0,
        connect_timeout: float = 10.0,
        retries: int = 5,
        backoff: float = 0.2,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.transport = transport
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        retry = urllib3.Retry(
            total=retries,
            connect=retries,
            read=0,  # a request that reached the server is not sent twice on a read error
            status=retries,
            status_forcelist=(503,),
            allowed_methods=None,  # POST too: the service's operations have no side effects
            backoff_factor=backoff,
            respect_retry_after_header=True,
            raise_on_status=False,
        )
        self._pool = urllib3.PoolManager(
            retries=retry, timeout=urllib3.Timeout(connect=connect_timeout, read=timeout)
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close pooled connections."""
        self._pool.clear()

    def ready(self) -> bool:
        """True when the server answers its readiness probe with 200."""
        try:
            return self._request("GET", "/v2/health/ready").status == 200
        except (ServiceError, urllib3.exceptions.HTTPError):
            return False

    def softmax_cross_entropy(
        self,
        *,
        labels: np.ndarray,
        logits: np.ndarray,
        dim: int = -1,
        grad_loss: np.ndarray | None = None,
        outputs: Sequence[str] = ("loss",),
        reduction: str = "none",
        label_smoothing: float = 0.0,
        class_weights: np.ndarray | None = None,
        sample_weights: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """tf.nn.softmax_cross_entropy_with_logits_v2 on the server; the requested outputs.

        `reduction` "sum" or "mean" makes the loss a scalar (and `grad_loss` one); the output
        "weight_sum" (float64) is then the mean's denominator. `class_weights` has shape [C],
        `sample_weights` broadcasts to the per-example loss; `label_smoothing` is eps in
        [0, 1]. Weights are sent in their own float dtype.
        """
        optional = {
            "grad_loss": grad_loss,
            "class_weights": class_weights,
            "sample_weights": sample_weights,
        }
        options = Options(reduction, float(label_smoothing))
        return self._call(SOFT_OP, labels, logits, optional, outputs, dim, options)

    def sparse_softmax_cross_entropy(
        self,
        *,
        labels: np.ndarray,
        logits: np.ndarray,
        dim: int = -1,
        grad_loss: np.ndarray | None = None,
        outputs: Sequence[str] = ("loss",),
        reduction: str = "none",
        label_smoothing: float = 0.0,
        class_weights: np.ndarray | None = None,
        sample_weights: np.ndarray | None = None,
        ignore_index: int | None = None,
    ) -> dict[str, np.ndarray]:
        """tf.nn.sparse_softmax_cross_entropy_with_logits on the server, with the options of
        `softmax_cross_entropy` and `ignore_index`: a label value (e.g. -100) whose positions
        get loss 0 and zero gradients and count nowhere in the mean. `dim` is the class
        dimension of the logits (labels have their shape without it)."""
        optional = {
            "grad_loss": grad_loss,
            "class_weights": class_weights,
            "sample_weights": sample_weights,
        }
        index = None if ignore_index is None else operator.index(ignore_index)
        options = Options(reduction, float(label_smoothing), index)
        return self._call(SPARSE_OP, labels, logits, optional, outputs, dim, options)

    def _call(
        self,
        model: str,
        labels: np.ndarray,
        logits: np.ndarray,
        optional: dict[str, np.ndarray | None],
        outputs: Sequence[str],
        dim: int,
        options: Options,
    ) -> dict[str, np.ndarray]:
        tensors = {"labels": labels, "logits": logits, **optional}
        # C order; np.ascontiguousarray would make a scalar (grad_loss of a reduction) 1-d
        arrays = {n: np.asarray(a, order="C") for n, a in tensors.items() if a is not None}
        # Only what differs from the defaults travels, so that plain calls stay as they were.
        parameters: dict[str, str | float | int] = {} if dim == -1 else {"dim": dim}
        for field in dataclasses.fields(Options):
            value = getattr(options, field.name)
            if value != getattr(DEFAULT_OPTIONS, field.name):
                parameters[field.name] = value
        if self.transport == "v2":
            return self._call_v2(model, arrays, outputs, parameters)
        fields = {"outputs": ",".join(outputs), **{k: str(v) for k, v in parameters.items()}}
        response = self._request(
            "POST",
            f"/v1/{model}",
            body=safetensors.encode(arrays),
            headers={"Content-Type": safetensors.MEDIA_TYPE, "Accept": safetensors.MEDIA_TYPE},
            fields=fields,
        )
        return safetensors.decode(response.data)

    def _call_v2(
        self,
        model: str,
        arrays: dict[str, np.ndarray],
        outputs: Sequence[str],
        parameters: dict[str, str | float | int],
    ) -> dict[str, np.ndarray]:
        inputs = []
        for name, array in arrays.items():
            dtype = DType.of(array)
            if dtype is None:
                raise TypeError(f"{name} has dtype {array.dtype}, which the service does not take")
            inputs.append(
                {
                    "name": name,
                    "shape": list(array.shape),
                    "datatype": v2.WIRE_NAMES[dtype],
                    "parameters": {"binary_data_size": array.nbytes},
                }
            )
        request = {
            "inputs": inputs,
            "outputs": [{"name": o, "parameters": {"binary_data": True}} for o in outputs],
            **({"parameters": parameters} if parameters else {}),
        }
        header = json.dumps(request).encode()
        body = b"".join([header, *(a.reshape(-1).view(np.uint8).data for a in arrays.values())])
        response = self._request(
            "POST",
            f"/v2/models/{model}/infer",
            body=body,
            headers={v2.HEADER_LENGTH: str(len(header))},
        )
        length = int(response.headers.get(v2.HEADER_LENGTH, len(response.data)))
        described = json.loads(response.data[:length])
        data = memoryview(response.data)[length:]
        result: dict[str, np.ndarray] = {}
        offset = 0
        for out in described["outputs"]:
            dtype = v2.DATATYPES[out["datatype"]]
            size = out["parameters"]["binary_data_size"]
            chunk = data[offset : offset + size]
            result[out["name"]] = np.frombuffer(chunk, dtype.numpy).reshape(out["shape"])
            offset += size
        return result

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        fields: dict[str, str] | None = None,
    ) -> urllib3.BaseHTTPResponse:
        url = self.base_url + path
        if fields:
            url += "?" + urlencode(fields)
        response = self._pool.request(
            method, url, body=body, headers={**self._headers, **(headers or {})}
        )
        if response.status >= 400:
            try:
                document = json.loads(response.data)
                message = document.get("detail") or document.get("error") or str(document)
            except ValueError:
                message = response.data[:200].decode("utf-8", "replace")
            raise ServiceError(response.status, message)
        return response
