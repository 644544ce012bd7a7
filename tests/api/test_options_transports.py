"""Issue 13's evaluation options over every transport, against a real server.

The same calls (reduction, class and sample weights, ignore_index, label smoothing,
weight_sum, the sparse op along dim 1) go through v1 JSON, v1 safetensors, v2 JSON, v2
binary, tritonclient and sce_client (both of its transports), and are compared with
a float64 reference written here from the issue's formulas (independently of
tests/reference.py). Bad values must come back as 422s that say what was expected,
whichever way they travel; and a reduced answer is a few hundred bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from sce_client import Client, ServiceError
from tritonclient.utils import InferenceServerException

from tests.api.test_safetensors import pack, unpack

SOFT = "softmax_cross_entropy_with_logits"
SPARSE = "sparse_softmax_cross_entropy_with_logits"
V2_TYPES = {
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
    np.dtype(np.int64): "INT64",
    np.dtype(np.int32): "INT32",
}
V2_NUMPY = {wire: dtype for dtype, wire in V2_TYPES.items()}
TENSORS = ("labels", "logits", "grad_loss", "class_weights", "sample_weights")


@dataclass(frozen=True)
class Call:
    """One call of an op, whatever carries it."""

    op: str
    tensors: dict[str, np.ndarray]
    outputs: tuple[str, ...]
    dim: int = -1
    options: dict[str, Any] = field(default_factory=dict)  # reduction, label_smoothing, ...

    @property
    def dtype(self) -> str:
        return str(self.tensors["logits"].dtype)


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status, self.message = status, message


# --- the reference -----------------------------------------------------------------------


def reference(call: Call) -> dict[str, np.ndarray]:
    """loss, gradients and weight_sum in float64, from the issue's formulas.

    Labels (a one-hot of integer labels) are smoothed, y' = y (1 - eps) + eps / C; the
    per-example loss is l_n = -sum_c w_c y'_nc log p_nc, times s_n, 0 where ignored; the
    weight is s_n (soft) or s_n w_{y_n} over kept positions (sparse); sum and mean reduce.
    The gradient is taken by hand: dl_n/dx_nc = p_nc sum_k w_k y'_nk - w_c y'_nc.
    """
    t = {k: v.astype(np.float64) for k, v in call.tensors.items() if k != "labels"}
    x = np.moveaxis(t["logits"], call.dim, -1)
    classes = x.shape[-1]
    eps = call.options.get("label_smoothing", 0.0)
    ignore = call.options.get("ignore_index")
    keep = np.ones(x.shape[:-1], bool)
    if call.op == SPARSE:
        index = call.tensors["labels"].astype(np.int64)
        if ignore is not None:
            keep = index != ignore
        y = np.eye(classes)[np.where(keep, index, 0)]
    else:
        y = np.moveaxis(call.tensors["labels"].astype(np.float64), call.dim, -1)
    w = t.get("class_weights", np.ones(classes))
    s = np.broadcast_to(t.get("sample_weights", 1.0), x.shape[:-1]) * keep
    smoothed = y * (1 - eps) + eps / classes
    shifted = x - x.max(-1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    per_example = -(w * smoothed * log_p).sum(-1) * s
    grad = np.exp(log_p) * (w * smoothed).sum(-1, keepdims=True) - w * smoothed
    grad_y = -(1 - eps) * w * log_p
    weight = (s * (w * y).sum(-1)) if call.op == SPARSE else s
    weight_sum = weight.sum()
    reduction = call.options.get("reduction", "none")
    scale = t.get("grad_loss", np.ones(per_example.shape)) * s
    if reduction == "none":
        loss = per_example
    elif reduction == "sum":
        loss = per_example.sum()
    else:
        loss, scale = per_example.sum() / weight_sum, scale / weight_sum
    out = {
        "loss": np.asarray(loss),
        "grad_logits": np.moveaxis(grad * scale[..., None], -1, call.dim),
        "grad_labels": np.moveaxis(grad_y * scale[..., None], -1, call.dim),
        "weight_sum": np.asarray(weight_sum),
    }
    return {name: out[name] for name in call.outputs}


# --- the transports ----------------------------------------------------------------------


def _raise_for(response: httpx.Response) -> None:
    if response.status_code != 200:
        document = response.json()
        raise Refused(response.status_code, document.get("detail") or document.get("error"))


def _v1_json(url: str, call: Call) -> httpx.Response:
    body: dict[str, Any] = {k: v.tolist() for k, v in call.tensors.items()}
    body |= {"dtype": call.dtype, "outputs": list(call.outputs), "dim": call.dim, **call.options}
    if call.op == SPARSE:
        body["labels_dtype"] = str(call.tensors["labels"].dtype)
    return httpx.post(f"{url}/v1/{call.op}", content=orjson.dumps(body), timeout=30)


def v1_json(url: str, call: Call) -> dict[str, np.ndarray]:
    response = _v1_json(url, call)
    _raise_for(response)
    document = response.json()
    assert document["dtype"] == call.dtype
    return {
        name: np.array(document[name]["data"], np.float64).reshape(document[name]["shape"])
        for name in call.outputs
    }


def _v1_safetensors(url: str, call: Call) -> httpx.Response:
    params = {"outputs": ",".join(call.outputs), "dim": str(call.dim)}
    params |= {k: str(v) for k, v in call.options.items()}
    return httpx.post(
        f"{url}/v1/{call.op}",
        content=pack(call.tensors),
        params=params,
        headers={
            "content-type": "application/x-safetensors",
            "accept": "application/x-safetensors",
        },
        timeout=30,
    )


def v1_safetensors(url: str, call: Call) -> dict[str, np.ndarray]:
    response = _v1_safetensors(url, call)
    _raise_for(response)
    arrays, _ = unpack(response.content)
    return arrays


def _v2_response(response: httpx.Response) -> dict[str, np.ndarray]:
    _raise_for(response)
    length = int(response.headers.get("inference-header-content-length", len(response.content)))
    header, raw = orjson.loads(response.content[:length]), response.content[length:]
    result, offset = {}, 0
    for out in header["outputs"]:
        dtype = V2_NUMPY[out["datatype"]]
        if "data" in out:
            result[out["name"]] = np.array(out["data"], dtype).reshape(out["shape"])
        else:
            size = out["parameters"]["binary_data_size"]
            chunk = raw[offset : offset + size]
            result[out["name"]] = np.frombuffer(chunk, dtype).reshape(out["shape"])
            offset += size
    return result


def _v2_parameters(call: Call) -> dict[str, Any]:
    return {"dim": call.dim, **call.options}


def _v2_json(url: str, call: Call) -> httpx.Response:
    inputs = [
        {
            "name": k,
            "shape": list(v.shape),
            "datatype": V2_TYPES[v.dtype],
            "data": v.ravel().tolist(),
        }
        for k, v in call.tensors.items()
    ]
    body = {
        "inputs": inputs,
        "outputs": [{"name": o} for o in call.outputs],
        "parameters": _v2_parameters(call),
    }
    return httpx.post(f"{url}/v2/models/{call.op}/infer", content=orjson.dumps(body), timeout=30)


def v2_json(url: str, call: Call) -> dict[str, np.ndarray]:
    return _v2_response(_v2_json(url, call))


def _v2_binary(url: str, call: Call) -> httpx.Response:
    inputs = [
        {
            "name": k,
            "shape": list(v.shape),
            "datatype": V2_TYPES[v.dtype],
            "parameters": {"binary_data_size": v.nbytes},
        }
        for k, v in call.tensors.items()
    ]
    header = orjson.dumps(
        {
            "inputs": inputs,
            "outputs": [{"name": o, "parameters": {"binary_data": True}} for o in call.outputs],
            "parameters": _v2_parameters(call),
        }
    )
    return httpx.post(
        f"{url}/v2/models/{call.op}/infer",
        content=header + b"".join(v.tobytes() for v in call.tensors.values()),
        headers={"Inference-Header-Content-Length": str(len(header))},
        timeout=30,
    )


def v2_binary(url: str, call: Call) -> dict[str, np.ndarray]:
    return _v2_response(_v2_binary(url, call))


def tritonclient(url: str, call: Call) -> dict[str, np.ndarray]:
    with triton.InferenceServerClient(url.removeprefix("http://")) as client:
        inputs = []
        for name, array in call.tensors.items():
            tensor = triton.InferInput(name, list(array.shape), V2_TYPES[array.dtype])
            tensor.set_data_from_numpy(array, binary_data=True)
            inputs.append(tensor)
        outputs = [triton.InferRequestedOutput(o, binary_data=True) for o in call.outputs]
        try:
            result = client.infer(call.op, inputs, outputs=outputs, parameters=_v2_parameters(call))
        except InferenceServerException as exc:
            raise Refused(int(exc.status()), exc.message()) from None
        return {name: result.as_numpy(name) for name in call.outputs}


def _service_client(transport: str) -> Callable[[str, Call], dict[str, np.ndarray]]:
    def send(url: str, call: Call) -> dict[str, np.ndarray]:
        with Client(url, transport=transport, retries=0) as client:  # type: ignore[arg-type]
            method = (
                client.sparse_softmax_cross_entropy
                if call.op == SPARSE
                else client.softmax_cross_entropy
            )
            try:
                return method(**call.tensors, outputs=call.outputs, dim=call.dim, **call.options)
            except ServiceError as exc:
                raise Refused(exc.status, exc.message) from None

    return send


TRANSPORTS: dict[str, Callable[[str, Call], dict[str, np.ndarray]]] = {
    "v1-json": v1_json,
    "v1-safetensors": v1_safetensors,
    "v2-json": v2_json,
    "v2-binary": v2_binary,
    "tritonclient": tritonclient,
    "client-safetensors": _service_client("safetensors"),
    "client-v2": _service_client("v2"),
}


# --- the calls ---------------------------------------------------------------------------


def _distribution(rng: np.random.Generator, shape: tuple[int, ...], dim: int) -> np.ndarray:
    raw = rng.random(shape) + 1e-3
    return raw / raw.sum(axis=dim, keepdims=True)


def _calls(rng: np.random.Generator) -> dict[str, Call]:
    f32, f64 = np.float32, np.float64
    tokens = rng.integers(0, 6, (4, 5))
    tokens[0, :2] = tokens[3, 4] = -100
    nct_labels = rng.integers(0, 5, (3, 4))
    nct_labels[1, 1] = -100
    return {
        "soft mean, class weights, smoothing": Call(
            SOFT,
            {
                "labels": _distribution(rng, (4, 5), -1),
                "logits": rng.standard_normal((4, 5)) * 2,
                "class_weights": rng.random(5) + 0.5,
            },
            ("loss", "grad_logits", "grad_labels", "weight_sum"),
            options={"reduction": "mean", "label_smoothing": 0.1},
        ),
        "soft sum of sample weights along dim 0": Call(
            SOFT,
            {
                "labels": _distribution(rng, (5, 3), 0).astype(f32),
                "logits": rng.standard_normal((5, 3)).astype(f32),
                "sample_weights": rng.random(3).astype(f32),
                "grad_loss": np.array(2.0, f32),
            },
            ("loss", "grad_logits", "weight_sum"),
            dim=0,
            options={"reduction": "sum"},
        ),
        "sparse ignore_index, sample weights, per example": Call(
            SPARSE,
            {
                "labels": tokens,
                "logits": rng.standard_normal((4, 5, 6)).astype(f32),
                "sample_weights": rng.random((4, 1)).astype(f32),
            },
            ("loss", "grad_logits"),
            options={"ignore_index": -100},
        ),
        "sparse mean, ignore_index, smoothing, grad of the mean": Call(
            SPARSE,
            {
                "labels": tokens,
                "logits": rng.standard_normal((4, 5, 6)),
                "sample_weights": rng.random((4, 5)),
                "class_weights": rng.random(6) + 0.5,
                "grad_loss": np.array(0.5, f64),
            },
            ("loss", "grad_logits", "weight_sum"),
            options={"reduction": "mean", "ignore_index": -100, "label_smoothing": 0.2},
        ),
        "sparse dim 1 of [N, C, T], mean": Call(
            SPARSE,
            {
                "labels": nct_labels.astype(np.int32),
                "logits": rng.standard_normal((3, 5, 4)).astype(f32),
                "class_weights": (rng.random(5) + 0.5).astype(f32),
            },
            ("loss", "grad_logits", "weight_sum"),
            dim=1,
            options={"reduction": "mean", "ignore_index": -100},
        ),
    }


CALL_NAMES = list(_calls(np.random.default_rng(0)))


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("name", CALL_NAMES)
def test_options_match_the_reference(
    server_url: str, rng: np.random.Generator, transport: str, name: str
) -> None:
    call = _calls(rng)[name]
    got = TRANSPORTS[transport](server_url, call)
    expected = reference(call)
    assert sorted(got) == sorted(call.outputs)  # safetensors sorts its tensors by name
    tolerance = 1e-12 if call.dtype == "float64" else 2e-6
    for output, want in expected.items():
        assert got[output].shape == want.shape, output
        # the loss and gradients in the logits' dtype; weight_sum in float64 always
        dtype = "float64" if output == "weight_sum" else call.dtype
        if transport != "v1-json":  # JSON numbers carry no dtype
            assert got[output].dtype == np.dtype(dtype), output
        np.testing.assert_allclose(
            got[output], want, rtol=tolerance, atol=tolerance, err_msg=output
        )


# --- bad values ----------------------------------------------------------------------------


def _bad_calls() -> dict[str, tuple[Call, str]]:
    logits = np.zeros((2, 3), np.float32)
    labels = np.full((2, 3), 1 / 3, np.float32)
    tokens = np.array([0, 2], np.int64)

    def soft(**kwargs: Any) -> Call:
        tensors = {"labels": labels, "logits": logits, **kwargs.pop("tensors", {})}
        return Call(SOFT, tensors, kwargs.pop("outputs", ("loss",)), **kwargs)

    def sparse(**kwargs: Any) -> Call:
        tensors = {"labels": tokens, "logits": logits, **kwargs.pop("tensors", {})}
        return Call(SPARSE, tensors, kwargs.pop("outputs", ("loss",)), **kwargs)

    return {
        "eps 1.5": (soft(options={"label_smoothing": 1.5}), "label_smoothing"),
        "reduction avg": (sparse(options={"reduction": "avg"}), "reduction"),
        "ignore_index with soft labels": (
            soft(options={"ignore_index": -100}),
            "ignore_index applies to integer class labels",
        ),
        "class_weights of the wrong shape": (
            sparse(tensors={"class_weights": np.ones(2, np.float32)}),
            "class_weights must have shape [3]",
        ),
        "negative sample weight": (
            soft(tensors={"sample_weights": np.array([1.0, -1.0], np.float32)}),
            "sample_weights must be finite and >= 0",
        ),
        "weight_sum without reduction": (
            sparse(outputs=("loss", "weight_sum")),
            "ask for reduction sum or mean",
        ),
        "grad_loss not a scalar with a reduction": (
            soft(
                tensors={"grad_loss": np.ones(2, np.float32)},
                outputs=("grad_logits",),
                options={"reduction": "mean"},
            ),
            "grad_loss must be a scalar",
        ),
    }


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("name", list(_bad_calls()))
def test_bad_values_are_422_that_say_what_was_expected(
    server_url: str, transport: str, name: str
) -> None:
    call, words = _bad_calls()[name]
    if name == "ignore_index with soft labels" and transport.startswith("client"):
        with pytest.raises(TypeError, match="ignore_index"):  # not a keyword of the soft op
            TRANSPORTS[transport](server_url, call)
        return
    with pytest.raises(Refused) as info:
        TRANSPORTS[transport](server_url, call)
    assert info.value.status == 422, info.value
    assert words in info.value.message, info.value.message
    if name == "reduction avg":
        assert all(r in info.value.message for r in ("none", "sum", "mean"))


# --- what the wire carries -----------------------------------------------------------------


WIRE = {"v1-json": _v1_json, "v1-safetensors": _v1_safetensors, "v2-json": _v2_json}
WIRE["v2-binary"] = _v2_binary


@pytest.mark.parametrize("transport", WIRE)
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_a_reduced_answer_is_a_few_hundred_bytes(
    server_url: str, rng: np.random.Generator, transport: str, reduction: str
) -> None:
    tensors = {
        "labels": rng.integers(0, 1000, 256),
        "logits": rng.standard_normal((256, 1000)).astype(np.float32),
    }
    call = Call(SPARSE, tensors, ("loss", "weight_sum"), options={"reduction": reduction})
    response = WIRE[transport](server_url, call)
    assert response.status_code == 200, response.text
    assert len(response.content) < 1000, response.content


def test_v2_default_outputs_include_weight_sum_only_with_a_reduction(server_url: str) -> None:
    def infer(parameters: dict[str, Any]) -> list[str]:
        body = {
            "inputs": [
                {"name": "labels", "shape": [2], "datatype": "INT64", "data": [1, -100]},
                {"name": "logits", "shape": [2, 2], "datatype": "FP32", "data": [0, 1, 2, 3]},
            ],
            "parameters": {"ignore_index": -100, **parameters},
        }
        response = httpx.post(f"{server_url}/v2/models/{SPARSE}/infer", content=orjson.dumps(body))
        assert response.status_code == 200, response.text
        return [o["name"] for o in response.json()["outputs"]]

    assert infer({}) == ["loss", "grad_logits"]
    assert infer({"reduction": "sum"}) == ["loss", "grad_logits", "weight_sum"]


def test_v2_metadata_lists_the_options(server_url: str) -> None:
    with triton.InferenceServerClient(server_url.removeprefix("http://")) as client:
        soft, sparse = client.get_model_metadata(SOFT), client.get_model_metadata(SPARSE)
    for meta in (soft, sparse):
        names = [t["name"] for t in meta["inputs"]]
        assert names == ["labels", "logits", "grad_loss", "class_weights", "sample_weights"]
        assert meta["outputs"][-1] == {"name": "weight_sum", "datatype": "FP64", "shape": []}
        assert meta["parameters"]["reduction"] == "none"
        assert meta["parameters"]["label_smoothing"] == 0.0
        assert meta["parameters"]["dim"] == -1
    assert "ignore_index" in sparse["parameters"] and "ignore_index" not in soft["parameters"]


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("label_smoothing=nan", "decimal number"),
        ("label_smoothing=inf", "decimal number"),
        ("label_smoothing=0_1", "decimal number"),
        ("label_smoothing=%D9%A1", "decimal number"),  # an Arabic-Indic one
        ("label_smoothing=1e999", "float64"),
        ("ignore_index=-1e2", "decimal integer"),
        ("ignore_index=%2B1", "decimal integer"),
    ],
)
def test_safetensors_query_numbers_are_strict(server_url: str, query: str, words: str) -> None:
    body = pack({"labels": np.array([0]), "logits": np.zeros((1, 2), np.float32)})
    response = httpx.post(
        f"{server_url}/v1/{SPARSE}?{query}",
        content=body,
        headers={"content-type": "application/x-safetensors"},
    )
    assert response.status_code == 422, response.text
    assert words in response.json()["detail"]


@pytest.mark.parametrize(
    ("members", "words"),
    [
        ({"label_smoothing": True}, "label_smoothing: must be a JSON number in [0, 1]; got true"),
        ({"label_smoothing": "0.1"}, 'got "0.1"'),
        ({"ignore_index": -100.0}, "ignore_index must be a JSON integer; got -100.0"),
        ({"reduction": 1}, "reduction"),
        ({"class_weights": [1.0, True]}, "class_weights"),
        ({"dim": 0, "axis": 1}, "disagree"),
    ],
)
def test_v1_json_option_types_are_strict(
    server_url: str, members: dict[str, Any], words: str
) -> None:
    body = {"labels": [0], "logits": [[0.0, 1.0]], **members}
    response = httpx.post(f"{server_url}/v1/{SPARSE}", content=orjson.dumps(body))
    assert response.status_code == 422, response.text
    assert words in response.json()["detail"]


def test_v1_sparse_takes_axis_as_tensorflow_2_names_dim(server_url: str) -> None:
    body = {"labels": [[1, 0]], "logits": [[[0.0, 1.0], [2.0, 0.0]]], "axis": 1}
    response = httpx.post(f"{server_url}/v1/{SPARSE}", content=orjson.dumps(body))
    assert response.status_code == 200, response.text
    log_p = np.array([[0.0, 1.0], [2.0, 0.0]]).T  # classes along axis 1 -> rows here
    log_p = log_p - np.log(np.exp(log_p).sum(-1, keepdims=True))
    np.testing.assert_allclose(
        response.json()["loss"]["data"], [[-log_p[0, 1], -log_p[1, 0]]], rtol=1e-6
    )
