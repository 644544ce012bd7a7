"""Property and fuzz tests (hypothesis): decoders never fail but with a client error, and the
engine agrees with the float64 reference on arbitrary shapes, dims, dtypes and broadcasts.

Bounded for `make test`; `HYPOTHESIS_PROFILE=long` (make soak) runs many more examples.
"""

from __future__ import annotations

import json
import math
import os
import struct

import numpy as np
import pytest
import safetensors as safetensors_package
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from service.api import v2 as api_v2
from service.api.errors import status_of
from service.api.pipeline import Encoded
from service.codecs import safetensors, v2
from service.engine import engine as engine_module
from service.engine.engine import Engine
from service.engine.types import SOFT_OP, DType
from service.errors import ServiceError, UnsupportedDtype
from tests.reference import NUMPY, assert_close, softmax_xent

settings.register_profile(
    "ci", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("long", max_examples=5000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

SOFT = "softmax_cross_entropy_with_logits"
DATATYPES = ["FP16", "BF16", "FP32", "FP64", "INT32", "INT64", "BYTES", "UINT8", "fp32", ""]
ITEMSIZE = {"FP16": 2, "BF16": 2, "FP32": 4, "FP64": 8, "INT32": 4, "INT64": 8}


@pytest.fixture(scope="module")
def small_engine() -> Engine:
    return Engine(max_elements=1 << 16)


def _client_error_or_result(call) -> object:
    try:
        return call()
    except ServiceError as exc:
        assert status_of(exc) < 500, f"{type(exc).__name__}: {exc}"
        return exc


def _infer_v2(body: bytes, header_length: str | None, engine: Engine) -> Encoded:
    """A v2 request's stages, as the server runs them: parse, cost (its checks), run."""
    spec = api_v2.MODELS[SOFT]
    call = api_v2.parse(SOFT, spec, body, v2.header_length(header_length))
    api_v2.cost(engine, call)
    return api_v2.run(engine, call)


@given(body=st.binary(max_size=512), header_length=st.none() | st.integers(-5, 600).map(str))
def test_v2_decoder_takes_any_bytes(
    small_engine: Engine, body: bytes, header_length: str | None
) -> None:
    _client_error_or_result(lambda: _infer_v2(body, header_length, small_engine))


@st.composite
def v2_requests(draw: st.DrawFn) -> tuple[bytes, str]:
    """Near-valid v2 bodies: plausible headers, sizes that may or may not agree."""
    inputs, blobs = [], []
    for name in draw(st.lists(st.sampled_from(["labels", "logits", "grad_loss", "x"]), max_size=4)):
        datatype = draw(st.sampled_from(DATATYPES))
        shape = draw(st.lists(st.integers(-1, 5), max_size=4))
        entry: dict = {"name": name, "shape": shape, "datatype": datatype}
        if draw(st.booleans()):
            count = math.prod(shape)  # what a naive client computes, negative dims and all
            size = count * ITEMSIZE.get(datatype, 4) + draw(st.sampled_from([0, 0, 0, -1, 1, 4]))
            entry["parameters"] = {"binary_data_size": size}
            blobs.append(draw(st.binary(min_size=max(size, 0), max_size=max(size, 0))))
        else:
            entry["data"] = draw(
                st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), max_size=30)
            )
        inputs.append(entry)
    request: dict = {"inputs": inputs}
    if draw(st.booleans()):
        request["parameters"] = {"dim": draw(st.integers(-6, 6)), "binary_data_output": True}
    if draw(st.booleans()):
        names = st.sampled_from(["loss", "grad_logits", "grad_labels", "nope"])
        request["outputs"] = [{"name": n} for n in draw(st.lists(names, max_size=3))]
    header = json.dumps(request).encode()
    return header + b"".join(blobs), str(len(header))


@given(request=v2_requests())
def test_v2_near_valid_requests(small_engine: Engine, request: tuple[bytes, str]) -> None:
    body, header_length = request
    result = _client_error_or_result(lambda: _infer_v2(body, header_length, small_engine))
    if not isinstance(result, ServiceError):
        header = result.buffers[
            0
        ]  # a response: its JSON header (bare NaN allowed) names the outputs
        assert json.loads(bytes(header))["model_name"] == SOFT


@given(body=st.binary(max_size=256))
def test_safetensors_decoder_takes_any_bytes(body: bytes) -> None:
    _client_error_or_result(lambda: safetensors.decode(body))


@given(
    dtype=st.sampled_from(["F32", "F64", "F16", "BF16", "I64", "U8", "BOOL", "X"]),
    shape=st.lists(st.integers(0, 1 << 40), max_size=4),
    begin=st.integers(0, 64),
    end=st.integers(0, 64),
    data=st.binary(max_size=64),
)
def test_safetensors_near_valid_headers(
    dtype: str, shape: list[int], begin: int, end: int, data: bytes
) -> None:
    header = json.dumps({"t": {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}})
    body = struct.pack("<Q", len(header)) + header.encode() + data
    result = _client_error_or_result(lambda: safetensors.decode(body))
    if isinstance(result, dict):
        assert result["t"].shape == tuple(shape)


@st.composite
def engine_cases(draw: st.DrawFn) -> tuple:
    rank = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=rank, max_size=rank)))
    dim = draw(st.integers(-rank, rank - 1))

    def squeeze(full: tuple[int, ...]) -> tuple[int, ...]:  # broadcastable variant
        kept = tuple(1 if draw(st.booleans()) and draw(st.booleans()) else d for d in full)
        return kept[draw(st.integers(0, len(kept) - 1)) :]

    labels_shape = squeeze(shape) if draw(st.booleans()) else shape
    logits_shape = squeeze(shape) if draw(st.booleans()) else shape
    dtype = draw(st.sampled_from(list(NUMPY)))
    seed = draw(st.integers(0, 2**32 - 1))
    return labels_shape, logits_shape, dim, dtype, seed


@given(case=engine_cases())
@settings(max_examples=100)
def test_engine_agrees_with_reference(small_engine: Engine, case: tuple) -> None:
    labels_shape, logits_shape, dim, dtype, seed = case
    full = np.broadcast_shapes(labels_shape, logits_shape)
    assume(-len(full) <= dim < len(full))
    rng = np.random.default_rng(seed)
    labels = rng.random(labels_shape).astype(NUMPY[dtype])
    logits = (rng.standard_normal(logits_shape) * 3).astype(NUMPY[dtype])
    outputs = ["loss", "grad_logits", "grad_labels"]
    result = small_engine.softmax_cross_entropy(
        labels=labels, logits=logits, dim=dim, outputs=outputs
    )
    expected = softmax_xent(labels, logits, dim)
    for name, array in result.items():
        assert_close(array, expected[name], dtype, name)


@given(
    case=engine_cases(),
    block_bytes=st.sampled_from([1, 8, 24, 100, 4096]),
    outputs=st.lists(
        st.sampled_from(["loss", "grad_logits", "grad_labels"]), min_size=1, unique=True
    ),
    with_grad_loss=st.booleans(),
)
@settings(max_examples=150)
def test_engine_in_blocks_agrees_with_reference_and_plan(
    small_engine: Engine, case: tuple, block_bytes: int, outputs: list[str], with_grad_loss: bool
) -> None:
    """Blocks made tiny, so that these small shapes take many of them (rows, ranges of the
    dims after the class dim, gathers of partly broadcast inputs); the plan counts the
    bytes the call returns."""
    labels_shape, logits_shape, dim, dtype, seed = case
    full = np.broadcast_shapes(labels_shape, logits_shape)
    assume(-len(full) <= dim < len(full))
    rng = np.random.default_rng(seed)
    labels = rng.random(labels_shape).astype(NUMPY[dtype])
    logits = (rng.standard_normal(logits_shape) * 3).astype(NUMPY[dtype])
    grad_loss = None
    if with_grad_loss and outputs != ["loss"]:
        axis = dim % len(full)
        grad_loss = rng.standard_normal(full[:axis] + full[axis + 1 :]).astype(NUMPY[dtype])
    saved = engine_module.BLOCK_BYTES
    engine_module.BLOCK_BYTES = block_bytes
    try:
        plan = small_engine.plan(
            SOFT_OP,
            labels=(labels.shape, DType[dtype]),
            logits=(logits.shape, DType[dtype]),
            grad_loss=None if grad_loss is None else (grad_loss.shape, DType[dtype]),
            outputs=outputs,
            dim=dim,
        )
        result = small_engine.softmax_cross_entropy(
            labels=labels, logits=logits, dim=dim, grad_loss=grad_loss, outputs=outputs
        )
    finally:
        engine_module.BLOCK_BYTES = saved
    expected = softmax_xent(labels, logits, dim, grad_loss)
    assert {name for name, _ in result.items()} == set(outputs)
    for name, array in result.items():
        assert array.dtype == NUMPY[dtype]
        assert_close(array, expected[name], dtype, name)
    assert plan.output_bytes == sum(array.nbytes for _, array in result.items())
    assert plan.elements == math.prod(full)


@st.composite
def safetensors_bodies(draw: st.DrawFn) -> bytes:
    """Bodies near the format: consistent tensors, then perturbed in one of many ways."""
    dtypes = ["F32", "F64", "F16", "BF16", "I32", "I64", "U8", "BOOL", "F8_E4M3"]
    sizes = {"F32": 4, "F64": 8, "F16": 2, "BF16": 2, "I32": 4, "I64": 8, "U8": 1, "BOOL": 1}
    header: dict = {}
    offset = 0
    for name in draw(st.lists(st.sampled_from(["a", "b", "c"]), unique=True, max_size=3)):
        dtype = draw(st.sampled_from(dtypes))
        shape = draw(st.lists(st.integers(0, 4), max_size=3))
        size = math.prod(shape) * sizes.get(dtype, 1)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    if draw(st.booleans()):
        header["__metadata__"] = draw(
            st.dictionaries(st.text(max_size=3), st.text(max_size=3) | st.integers(), max_size=2)
        )
    if header and draw(st.booleans()):  # one perturbation of one field
        name = draw(st.sampled_from(sorted(header)))
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets", "extra"]))
        if name != "__metadata__":
            header[name][field] = draw(
                st.sampled_from([None, -1, "x", [1, 2, 3], [0], [2, 1], [0, 10**6], "F32"])
            )
    raw = json.dumps(header).encode()
    raw += b" " * draw(st.integers(0, 8))
    data = bytes(max(0, offset + draw(st.sampled_from([0, 0, 0, 1, -1]))))
    length = len(raw) + draw(st.sampled_from([0, 0, 0, 0, 1, -1, 10**9]))
    return struct.pack("<Q", max(length, 0)) + raw + data


def _accepts(decode, body: bytes) -> bool:
    try:
        decode(body)
    except UnsupportedDtype:  # structurally valid, a dtype this service does not compute in
        return True
    except Exception:
        return False
    return True


@given(body=safetensors_bodies() | st.binary(max_size=64))
@settings(max_examples=400)
def test_safetensors_decoder_agrees_with_the_package(body: bytes) -> None:
    ours = _accepts(safetensors.decode, body)
    theirs = _accepts(safetensors_package.deserialize, body)
    assert ours == theirs, f"ours accepts: {ours}, the package accepts: {theirs}"
    if ours and theirs:
        try:
            arrays = safetensors.decode(body)
        except UnsupportedDtype:
            return
        for name, entry in safetensors_package.deserialize(body):
            assert arrays[name].tobytes() == bytes(entry["data"])
            assert list(arrays[name].shape) == entry["shape"]
