"""The client that openapi-python-client generates from openapi/openapi.json, in use (README,
"Clients"): JSON and safetensors, numpy in and out. tests/test_openapi.py generates the
client, type-checks this file against it with mypy --strict, and runs it on a live server.

    openapi-python-client generate --path openapi/openapi.json \\
        --config openapi/client-config.yaml --meta none --output-path sce_openapi_client
    python openapi/client_example.py http://127.0.0.1:8000
"""

from __future__ import annotations

import io
import sys
from typing import Any

import numpy as np
from safetensors.numpy import load, save
from sce_openapi_client import AuthenticatedClient, Client
from sce_openapi_client.api.native import (
    softmax_cross_entropy_with_logits,
    softmax_cross_entropy_with_logits_safetensors,
)
from sce_openapi_client.models import (
    LossRequest,
    LossRequestDtype,
    LossRequestOutputsItem,
    LossResponse,
    TensorOut,
)
from sce_openapi_client.types import File, Unset

NON_FINITE = {np.inf: "Infinity", -np.inf: "-Infinity"}


def tensor(array: np.ndarray) -> Any:
    """A numpy array as the spec's Tensor: nested lists, with NaN and the infinities as the
    strings "NaN", "Infinity", "-Infinity" (JSON has no literal for them, and httpx
    refuses to write Python's). `array.tolist()` alone does for finite arrays."""
    if np.isfinite(array).all():
        return array.tolist()
    values = array.astype(object)
    values[np.isnan(array)] = "NaN"
    for number, text in NON_FINITE.items():
        values[array == number] = text
    return values.tolist()


def array(output: TensorOut | Unset | None) -> np.ndarray:
    """A requested output as float64 (numpy reads the strings "NaN", "Infinity" too)."""
    if not isinstance(output, TensorOut):
        raise RuntimeError("the answer lacks an output that was asked for")
    return np.asarray(output.data, dtype=np.float64)


def evaluate(
    client: Client | AuthenticatedClient, labels: np.ndarray, logits: np.ndarray
) -> dict[str, np.ndarray]:
    """Loss and grad_logits of float64 arrays, once over JSON and once over safetensors."""
    answer = softmax_cross_entropy_with_logits.sync(
        client=client,
        body=LossRequest(
            labels=tensor(labels),
            logits=tensor(logits),
            dtype=LossRequestDtype.FLOAT64,
            outputs=[LossRequestOutputsItem.LOSS, LossRequestOutputsItem.GRAD_LOGITS],
        ),
    )
    if not isinstance(answer, LossResponse):  # an ErrorDetail (4xx/5xx) or None
        raise RuntimeError(f"refused: {answer}")

    binary = softmax_cross_entropy_with_logits_safetensors.sync(
        client=client,
        body=File(payload=io.BytesIO(save({"labels": labels, "logits": logits}))),
        outputs="loss,grad_logits",
    )
    if not isinstance(binary, File):
        raise RuntimeError(f"refused: {binary}")
    outputs = load(binary.payload.read())
    return {
        "loss": array(answer.loss),
        "grad_logits": array(answer.grad_logits),
        "safetensors_loss": outputs["loss"],
        "safetensors_grad_logits": outputs["grad_logits"],
    }


def main(url: str) -> None:
    rng = np.random.default_rng(0)
    labels = rng.dirichlet(np.ones(5), size=3)
    logits = rng.standard_normal((3, 5))
    # AuthenticatedClient(base_url=url, token=key) where the server has SCE_API_KEY
    with Client(base_url=url) as client:
        for name, values in evaluate(client, labels, logits).items():
            print(name, values.tolist())


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000")
