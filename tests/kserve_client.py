"""Runs KServe's own REST client against a live server; run by tests/test_kserve_client.py
with the Python of .venv-kserve (kserve's pins clash with the service's: protobuf).

    python tests/kserve_client.py URL INPUTS.npz OUTPUTS.npz

Reads the inputs, sends them with `kserve.InferenceRESTClient` (protocol v2) as JSON and
as binary tensors, and writes what the client decoded, plus the status and message of a
request whose body names another model than its URL, for the test to judge.
"""

from __future__ import annotations

import asyncio
import sys

import httpx
import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput

SOFT = "softmax_cross_entropy_with_logits"
SPARSE = "sparse_softmax_cross_entropy_with_logits"
DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}


def request(
    model: str, tensors: dict[str, np.ndarray], outputs: list[str], binary: bool
) -> InferRequest:
    inputs = []
    for name, array in tensors.items():
        tensor = InferInput(name, list(array.shape), DATATYPES[array.dtype])
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    wanted = [RequestedOutput(name, {"binary_data": binary}) for name in outputs]
    return InferRequest(
        model_name=model, infer_inputs=inputs, request_outputs=wanted, parameters={"dim": -1}
    )


async def main(url: str, source: str, target: str) -> None:
    given = dict(np.load(source))
    soft = {k: given[k] for k in ("labels", "logits", "grad_loss")}
    sparse = {"labels": given["sparse_labels"], "logits": given["sparse_logits"]}
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
    found: dict[str, np.ndarray] = {}
    for transport, binary in (("json", False), ("binary", True)):
        for model, tensors, outputs in (
            (SOFT, soft, ["loss", "grad_logits", "grad_labels"]),
            (SPARSE, sparse, ["loss", "grad_logits"]),
        ):
            headers: dict[str, str] = {}
            result = await client.infer(
                url,
                request(model, tensors, outputs, binary),
                model_name=model,
                response_headers=headers,
            )
            # The response really was binary (a header length) when binary was asked for.
            found[f"{transport}/{model}/binary"] = np.array(
                "inference-header-content-length" in headers
            )
            for output in result.outputs:
                found[f"{transport}/{model}/{output.name}"] = output.as_numpy()
    try:  # the body names the sparse model, the URL the soft one
        await client.infer(url, request(SPARSE, sparse, ["loss"], False), model_name=SOFT)
    except httpx.HTTPStatusError as exc:
        found["mismatch/status"] = np.array(exc.response.status_code)
        found["mismatch/message"] = np.array(str(exc))
    np.savez(target, **found)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
