"""The real Triton client (tritonclient.http) against the real server, unchanged."""

from __future__ import annotations

from collections.abc import Iterator

import ml_dtypes
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.reference import assert_close, random_distribution, softmax_xent, sparse_softmax_xent

SOFT = "softmax_cross_entropy_with_logits"
SPARSE = "sparse_softmax_cross_entropy_with_logits"
DATATYPES = {
    "FP16": ("float16", np.dtype(np.float16)),
    "BF16": ("bfloat16", np.dtype(ml_dtypes.bfloat16)),
    "FP32": ("float32", np.dtype(np.float32)),
    "FP64": ("float64", np.dtype(np.float64)),
}


@pytest.fixture(scope="module")
def client(server_url: str) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(
        server_url.removeprefix("http://"), connection_timeout=60, network_timeout=120
    ) as c:
        yield c


def _input(name: str, array: np.ndarray, datatype: str, binary: bool) -> triton.InferInput:
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def test_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(SOFT) and client.is_model_ready(SPARSE)
    assert not client.is_model_ready("no_such_model")
    server = client.get_server_metadata()
    assert "binary_tensor_data" in server["extensions"]
    assert server["providers"] == ["CPUExecutionProvider"]
    meta = client.get_model_metadata(SOFT)
    outputs = ["loss", "grad_logits", "grad_labels", "weight_sum"]
    assert [t["name"] for t in meta["outputs"]] == outputs
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_model_metadata("no_such_model")


def test_model_configuration_and_repository_extensions(
    client: triton.InferenceServerClient,
) -> None:
    extensions = client.get_server_metadata()["extensions"]
    assert {"model_configuration", "model_repository"} <= set(extensions)
    for model, label_type in ((SOFT, "TYPE_FP32"), (SPARSE, "TYPE_INT64")):
        metadata = client.get_model_metadata(model)
        for version in ("", "1"):
            config = client.get_model_config(model, model_version=version)
            assert config["name"] == model and config["platform"] == "onnxruntime_onnx"
            assert config["max_batch_size"] == 0
            inputs = {t["name"]: t for t in config["input"]}
            assert list(inputs) == [t["name"] for t in metadata["inputs"]]
            assert inputs["labels"]["data_type"] == label_type
            assert not inputs["logits"]["optional"] and inputs["grad_loss"]["optional"]
            assert [t["name"] for t in config["output"]] == [t["name"] for t in metadata["outputs"]]
            assert config["instance_group"][0]["kind"] == "KIND_CPU"
            assert config["parameters"]["dim"] == {"string_value": "-1"}
        assert client.get_model_metadata(model, model_version="1") == metadata
        assert client.is_model_ready(model, model_version="1")
        assert not client.is_model_ready(model, model_version="2")
    with pytest.raises(InferenceServerException, match="no version '2'"):
        client.get_model_config(SOFT, model_version="2")
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_model_config("no_such_model")

    index = client.get_model_repository_index()
    assert index == [
        {"name": name, "version": "1", "state": "READY", "reason": ""} for name in (SOFT, SPARSE)
    ]
    client.load_model(SOFT)  # always loaded: a no-op
    with pytest.raises(InferenceServerException, match="cannot replace"):
        client.load_model(SOFT, config="{}")
    with pytest.raises(InferenceServerException, match="cannot be unloaded"):
        client.unload_model(SOFT)
    assert client.is_model_ready(SOFT)


def test_infer_on_a_versioned_url(
    client: triton.InferenceServerClient, rng: np.random.Generator
) -> None:
    labels = random_distribution(rng, (3, 4), -1).astype(np.float32)
    logits = rng.standard_normal((3, 4)).astype(np.float32)
    inputs = [_input("labels", labels, "FP32", True), _input("logits", logits, "FP32", True)]
    result = client.infer(SOFT, inputs, model_version="1")
    assert result.get_response()["model_version"] == "1"
    assert_close(result.as_numpy("loss"), softmax_xent(labels, logits)["loss"], "float32")
    with pytest.raises(InferenceServerException, match="no version '7'"):
        client.infer(SOFT, inputs, model_version="7")


# tritonclient refuses BF16 in JSON inputs (tests/api/test_v2.py sends them with httpx).
COMBINATIONS = [
    (datatype, binary_in, binary_out)
    for datatype in DATATYPES
    for binary_in in (True, False)
    for binary_out in (True, False)
    if binary_in or datatype != "BF16"
]


@pytest.mark.parametrize(("datatype", "binary_in", "binary_out"), COMBINATIONS)
def test_infer_every_datatype(
    client: triton.InferenceServerClient,
    rng: np.random.Generator,
    datatype: str,
    binary_in: bool,
    binary_out: bool,
) -> None:
    dtype_name, dtype = DATATYPES[datatype]
    labels = random_distribution(rng, (4, 3, 5), 1).astype(dtype)
    logits = (rng.standard_normal((4, 3, 5)) * 2).astype(dtype)
    grad_loss = rng.standard_normal((4, 5)).astype(dtype)
    inputs = [
        _input("labels", labels, datatype, binary_in),
        _input("logits", logits, datatype, binary_in),
        _input("grad_loss", grad_loss, datatype, binary_in),
    ]
    names = ["loss", "grad_logits", "grad_labels"]
    outputs = [triton.InferRequestedOutput(n, binary_data=binary_out) for n in names]
    result = client.infer(SOFT, inputs, outputs=outputs, parameters={"dim": 1}, request_id="r1")
    assert result.get_response()["id"] == "r1"
    expected = softmax_xent(labels, logits, 1, grad_loss)
    for name in names:
        got = result.as_numpy(name)
        assert got.dtype == dtype, name
        assert_close(got, expected[name], dtype_name, name)


def test_infer_without_outputs_returns_all_as_binary(
    client: triton.InferenceServerClient, rng: np.random.Generator
) -> None:
    labels = random_distribution(rng, (2, 6), -1).astype(np.float32)
    logits = rng.standard_normal((2, 6)).astype(np.float32)
    inputs = [_input("labels", labels, "FP32", False), _input("logits", logits, "FP32", False)]
    result = client.infer(SOFT, inputs)
    described = result.get_response()["outputs"]
    assert [o["name"] for o in described] == ["loss", "grad_logits", "grad_labels"]
    assert all("binary_data_size" in o["parameters"] for o in described)
    assert_close(result.as_numpy("loss"), softmax_xent(labels, logits)["loss"], "float32")


@pytest.mark.parametrize("label_datatype", ["INT32", "INT64"])
@pytest.mark.parametrize("binary", [True, False])
def test_sparse_infer(
    client: triton.InferenceServerClient,
    rng: np.random.Generator,
    label_datatype: str,
    binary: bool,
) -> None:
    logits = rng.standard_normal((5, 7)).astype(np.float32)
    labels = rng.integers(0, 7, size=5).astype(label_datatype.lower())
    inputs = [
        _input("labels", labels, label_datatype, binary),
        _input("logits", logits, "FP32", binary),
    ]
    outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("loss", "grad_logits")]
    result = client.infer(SPARSE, inputs, outputs=outputs)
    expected = sparse_softmax_xent(labels, logits)
    for name in ("loss", "grad_logits"):
        assert_close(result.as_numpy(name), expected[name], "float32", name)


def test_non_finite_values_survive_json(client: triton.InferenceServerClient) -> None:
    labels = np.array([[0.0, 1.0], [1.0, 0.0]], np.float32)
    logits = np.array([[-np.inf, 0.0], [np.nan, 1.0]], np.float32)
    inputs = [_input("labels", labels, "FP32", False), _input("logits", logits, "FP32", False)]
    result = client.infer(
        SOFT, inputs, outputs=[triton.InferRequestedOutput("loss", binary_data=False)]
    )
    assert np.isnan(result.as_numpy("loss")).all()


def test_gzip_request_compression(
    client: triton.InferenceServerClient, rng: np.random.Generator
) -> None:
    labels = random_distribution(rng, (16, 10), -1).astype(np.float32)
    logits = rng.standard_normal((16, 10)).astype(np.float32)
    inputs = [_input("labels", labels, "FP32", True), _input("logits", logits, "FP32", True)]
    outputs = [triton.InferRequestedOutput("loss")]
    for algorithm in ("gzip", "deflate"):
        result = client.infer(
            SOFT, inputs, outputs=outputs, request_compression_algorithm=algorithm
        )
        assert_close(result.as_numpy("loss"), softmax_xent(labels, logits)["loss"], "float32")


def test_errors_reach_the_client_as_messages(client: triton.InferenceServerClient) -> None:
    labels = np.zeros((2, 3), np.float32)
    logits = np.zeros((2, 4), np.float32)
    inputs = [_input("labels", labels, "FP32", True), _input("logits", logits, "FP32", True)]
    with pytest.raises(InferenceServerException, match=r"\[2, 3\]"):
        client.infer(SOFT, inputs)
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.infer("no_such_model", inputs)


def test_two_64_mib_binary_inputs(
    client: triton.InferenceServerClient, rng: np.random.Generator
) -> None:
    rows, classes = 4096, 4096  # 64 MiB of FP32 each
    logits = rng.standard_normal((rows, classes), dtype=np.float32)
    labels = np.zeros((rows, classes), np.float32)
    labels[np.arange(rows), rng.integers(0, classes, rows)] = 1.0
    inputs = [_input("labels", labels, "FP32", True), _input("logits", logits, "FP32", True)]
    result = client.infer(SOFT, inputs, outputs=[triton.InferRequestedOutput("loss")])
    assert_close(result.as_numpy("loss"), softmax_xent(labels, logits)["loss"], "float32")
