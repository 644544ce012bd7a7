"""The hand-written safetensors encoder against the `safetensors` package's reader."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest
import safetensors as safetensors_package
from hypothesis import given, settings
from hypothesis import strategies as st

from service.codecs import safetensors

DTYPES = [np.float16, ml_dtypes.bfloat16, np.float32, np.float64, np.int32, np.int64]
NAMES = {
    np.dtype(np.float16): "F16",
    np.dtype(ml_dtypes.bfloat16): "BF16",
    np.dtype(np.float32): "F32",
    np.dtype(np.float64): "F64",
    np.dtype(np.int32): "I32",
    np.dtype(np.int64): "I64",
}


@settings(max_examples=60, deadline=None)
@given(
    tensors=st.dictionaries(
        st.text(min_size=1, max_size=8).filter(lambda s: s != "__metadata__"),
        st.tuples(st.sampled_from(DTYPES), st.lists(st.integers(0, 4), min_size=0, max_size=3)),
        min_size=1,
        max_size=5,
    ),
    metadata=st.one_of(st.none(), st.dictionaries(st.text(max_size=5), st.text(max_size=5))),
    seed=st.integers(0, 2**32 - 1),
)
def test_the_package_reads_what_the_encoder_writes(
    tensors: dict[str, tuple[type, list[int]]], metadata: dict[str, str] | None, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    arrays = {
        name: (rng.standard_normal(shape) * 100).astype(dtype)
        for name, (dtype, shape) in tensors.items()
    }
    buffers = safetensors.encode_buffers(arrays, metadata)
    body = b"".join(bytes(b) for b in buffers)
    assert body == safetensors.encode(arrays, metadata)
    read = dict(safetensors_package.deserialize(body))
    assert set(read) == set(arrays)
    for name, array in arrays.items():
        assert read[name]["dtype"] == NAMES[array.dtype]
        assert read[name]["shape"] == list(array.shape)
        assert bytes(read[name]["data"]) == array.tobytes()
    header_length = int.from_bytes(body[:8], "little")
    assert header_length % 8 == 0  # the data starts 8-aligned, as the package writes it
    header = json.loads(body[8 : 8 + header_length])
    assert header.get("__metadata__") == (metadata or None)
    for name, array in arrays.items():  # each tensor aligned to its item size
        assert header[name]["data_offsets"][0] % array.dtype.itemsize == 0
    decoded = safetensors.decode(body)  # and the service's own reader
    for name, array in arrays.items():
        np.testing.assert_array_equal(decoded[name], array)


def test_answers_are_sent_from_the_arrays_memory() -> None:
    loss = np.arange(6, dtype=np.float32).reshape(2, 3)
    buffers = safetensors.encode_buffers({"loss": loss, "weight_sum": np.asarray(4.0)})
    assert len(buffers) == 3  # the header, then one view per tensor
    assert isinstance(buffers[2], memoryview)
    assert np.shares_memory(np.frombuffer(buffers[2], np.uint8), loss)


def test_unsupported_dtypes_are_refused() -> None:
    with pytest.raises(Exception, match="cannot encode"):
        safetensors.encode_buffers({"x": np.zeros(2, np.complex64)})
