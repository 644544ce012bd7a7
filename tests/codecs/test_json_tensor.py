"""JSON tensor codec, without HTTP."""

from __future__ import annotations

import gc
import json
import math
import tracemalloc
from typing import Any

import ml_dtypes
import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.codecs import json_document, json_tensor
from service.engine.types import DType
from service.errors import InvalidArgument, ValueOutOfRange

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def bits(array: np.ndarray) -> np.ndarray:
    """The array's bytes as integers: equal bits, so -0.0 differs from 0.0."""
    return np.ascontiguousarray(array).view(f"u{array.dtype.itemsize}")


def _traced(fn: Any) -> tuple[Any, int]:
    gc.collect()
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("dtype", [DType.float16, DType.bfloat16, DType.float32, DType.float64])
def test_round_trip_keeps_values_and_non_finite(rng: np.random.Generator, dtype: DType) -> None:
    array = rng.standard_normal((3, 4)).astype(dtype.numpy)
    array[0, 0], array[1, 1], array[2, 2] = np.nan, np.inf, -np.inf
    wire = orjson.loads(json_tensor.dumps(json_tensor.encode(array)))
    assert wire["shape"] == [3, 4]
    assert wire["data"][0][0] == "NaN" and wire["data"][1][1] == "Infinity"
    assert wire["data"][2][2] == "-Infinity"
    back = json_tensor.decode(wire["data"], dtype, "x")
    np.testing.assert_array_equal(back.astype(np.float64), array.astype(np.float64))


def test_scalar_encodes_as_a_number() -> None:
    wire = orjson.loads(json_tensor.dumps(json_tensor.encode(np.array(2.5, np.float32))))
    assert wire == {"shape": [], "data": 2.5}


def test_bfloat16_is_decoded_with_ml_dtypes() -> None:
    out = json_tensor.decode([1.0, 2.0], DType.bfloat16, "x")
    assert out.dtype == np.dtype(ml_dtypes.bfloat16)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([[1.0, 2.0], [3.0]], "jagged"),
        ([1.0, [2.0]], "jagged"),
        ([1.0, "x"], "'x'"),
        ([1.0, "inf"], "'inf'"),
        ([True, False], "booleans"),
        ([1.0, None], "numbers"),
        ({"a": 1}, "numbers"),
        (None, "numbers"),
        ([[{"a": 1}]], "numbers"),
    ],
)
def test_decode_rejects_what_is_not_a_tensor(value: object, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        json_tensor.decode(value, DType.float32, "logits")


def test_decode_rejects_nesting_deeper_than_max_rank() -> None:
    value: object = 1.0
    for _ in range(70):
        value = [value]
    with pytest.raises(InvalidArgument, match="deeper"):
        json_tensor.decode(value, DType.float32, "logits")


@pytest.mark.parametrize(("dtype", "value"), [(DType.float16, 1e6), (DType.float32, 1e39)])
def test_decode_refuses_values_the_dtype_cannot_hold(dtype: DType, value: float) -> None:
    with pytest.raises(ValueOutOfRange, match="cannot represent"):
        json_tensor.decode([1.0, value], dtype, "logits")


def test_decode_integer_labels() -> None:
    assert json_tensor.decode([1, 2], DType.int32, "labels").dtype == np.int32
    with pytest.raises(InvalidArgument, match="integers"):
        json_tensor.decode([1.5], DType.int64, "labels")
    with pytest.raises(ValueOutOfRange):
        json_tensor.decode([2**40], DType.int32, "labels")


# --- Python values (small arrays left in a document's skeleton), and encoding


@pytest.mark.parametrize(
    ("value", "dtype", "want"),
    [
        (1, DType.float32, 1.0),
        (2.5, DType.float16, 2.5),
        ("NaN", DType.float64, math.nan),
        ("-Infinity", DType.float32, -math.inf),
        (3, DType.int32, 3),
        ([[1, 2]], DType.int64, [[1, 2]]),
        ([], DType.float32, []),
        ([[], []], DType.float32, [[], []]),
        ([float("nan"), 1.0], DType.float64, [math.nan, 1.0]),
        ([2**64 + 1, 1.5], DType.float64, [float(2**64 + 1), 1.5]),
    ],
)
def test_python_values_decode(value: Any, dtype: DType, want: Any) -> None:
    got = json_tensor.decode(value, dtype, "x")
    np.testing.assert_array_equal(got, np.array(want, dtype.numpy))
    assert got.dtype == dtype.numpy


@pytest.mark.parametrize(
    ("value", "dtype", "message"),
    [
        (True, DType.float32, "booleans"),
        ([1, True], DType.int64, "booleans"),
        ("1.5", DType.float32, "'1.5'"),
        (1.5, DType.int32, "integers"),
        (2**40, DType.int32, "range"),
        (10**400, DType.float64, "cannot represent"),
        (1e5, DType.float16, "cannot represent"),
        ([1, {"a": 1}], DType.float32, "numbers"),
        ({"a": 1}, DType.float32, "numbers"),
        (None, DType.float32, "numbers"),
    ],
)
def test_python_values_refused(value: Any, dtype: DType, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        json_tensor.decode(value, dtype, "x")


@PROPERTY
@given(
    data=st.data(),
    dtype=st.sampled_from([np.float16, ml_dtypes.bfloat16, np.float32, np.float64]),
    bare=st.booleans(),
)
def test_encode_fragment_round_trips(data: st.DataObject, dtype: Any, bare: bool) -> None:
    shape = tuple(data.draw(st.lists(st.integers(0, 4), max_size=3)))
    values = data.draw(
        st.lists(
            st.one_of(st.floats(width=32), st.sampled_from([math.nan, math.inf, -math.inf, -0.0])),
            min_size=math.prod(shape),
            max_size=math.prod(shape),
        )
    )
    with np.errstate(over="ignore"):
        array = np.array(values, np.float64).reshape(shape).astype(dtype)
    text = orjson.dumps(json_tensor.encode_fragment(array, bare_non_finite=bare))
    parsed = json.loads(text) if bare else orjson.loads(text)
    if not bare:
        assert b"NaN" not in text.replace(b'"NaN"', b"")
        parsed = json.loads(
            json.dumps(parsed)
            .replace('"NaN"', "NaN")
            .replace('"Infinity"', "Infinity")
            .replace('"-Infinity"', "-Infinity")
        )
    back = np.array(parsed, np.float64).reshape(shape).astype(dtype)
    # equal values, NaN payloads aside, and zeros keep their sign
    np.testing.assert_array_equal(back.astype(np.float64), array.astype(np.float64))
    number = ~np.isnan(array.astype(np.float64))
    np.testing.assert_array_equal(np.signbit(back[number]), np.signbit(array[number]))
    wire = array.astype(np.float32) if array.dtype.itemsize < 4 else array
    if array.ndim and np.isfinite(wire).all():  # finite: exactly what orjson writes
        assert text == orjson.dumps(np.ascontiguousarray(wire), option=orjson.OPT_SERIALIZE_NUMPY)


def test_encode_fragment_splices_mixed_non_finite_values_in_order() -> None:
    array = np.array([[np.nan, 1.5, np.inf], [-np.inf, np.nan, -2.0]], np.float32)
    text = orjson.dumps(json_tensor.encode_fragment(array, bare_non_finite=False))
    assert orjson.loads(text) == [["NaN", 1.5, "Infinity"], ["-Infinity", "NaN", -2.0]]
    bare = orjson.dumps(json_tensor.encode_fragment(array, bare_non_finite=True))
    assert bare.replace(b" ", b"") == b"[[NaN,1.5,Infinity],[-Infinity,NaN,-2.0]]"
    assert (
        orjson.dumps(json_tensor.encode_fragment(np.array([np.nan] * 3), bare_non_finite=False))
        == b'["NaN","NaN","NaN"]'
    )
    assert (
        orjson.dumps(json_tensor.encode_fragment(np.array(-np.inf), bare_non_finite=True))
        == b"-Infinity"
    )


def test_encoding_a_large_array_makes_no_object_per_number(rng: np.random.Generator) -> None:
    array = rng.standard_normal(1_000_000).astype(np.float32)
    array[::3] = np.nan
    array[1::7] = np.inf
    fragment, peak = _traced(lambda: json_tensor.encode_fragment(array, bare_non_finite=True))
    text = orjson.dumps(fragment)
    assert peak < 4 * len(text)  # tolist() of objects took ~40 bytes per number more
    assert json.loads(text)[1] == math.inf


def test_json_tensors_decode_through_json_tensor() -> None:
    document = json_document.loads(b'{"l": [[1, 2]], "x": ["NaN", 1.5]}', bare_non_finite=False)
    assert json_tensor.decode(document["l"], DType.int32, "l").tolist() == [[1, 2]]
    assert np.isnan(json_tensor.decode(document["x"], DType.float32, "x")[0])


@pytest.mark.parametrize("padding", [0, 20000], ids=["orjson first", "general"])
def test_small_arrays_that_are_metadata_read_as_python(padding: int) -> None:
    body = b'{"shape": [2, 3], "data": [1, 2, 3, 4, 5, 6], "x":' + b" " * padding + b"1}"
    document = json_document.loads(body, bare_non_finite=True)
    assert document["shape"].to_python() == [2, 3]
    assert document["data"].shape == (6,)


@pytest.mark.parametrize("shape", [(3, 70000), (70000, 3), (2, 2, 40000), (1, 1, 100001), (0, 5)])
def test_large_arrays_are_written_in_blocks_as_one_document(
    shape: tuple[int, ...], rng: np.random.Generator
) -> None:
    array = rng.standard_normal(shape).astype(np.float32)
    if array.size:
        array.flat[:: max(1, array.size // 7)] = np.nan
        array.flat[1 :: max(1, array.size // 5)] = -np.inf
    text = orjson.dumps(json_tensor.encode_fragment(array, bare_non_finite=False))
    if not array.size:  # nested lists cannot say (0, 5): v1 sends "shape" beside them
        assert text == b"[]"
        return
    back = json_tensor.decode(orjson.loads(text), DType.float32, "x")
    assert back.shape == shape
    np.testing.assert_array_equal(back, array)
    bare = orjson.dumps(json_tensor.encode_fragment(array, bare_non_finite=True))
    np.testing.assert_array_equal(np.array(json.loads(bare), np.float32).reshape(shape), array)


@pytest.mark.parametrize("depth", [40, 300, 1000])
def test_deep_empty_lists_left_in_the_skeleton_are_refused(depth: int) -> None:
    document = json_document.loads(
        b'{"x": ' + b"[" * depth + b"]" * depth + b"}", bare_non_finite=False
    )
    assert isinstance(document["x"], list)  # no number: orjson read it
    with pytest.raises(InvalidArgument, match="deeper"):
        json_tensor.decode(document["x"], DType.float32, "x")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (np.float32(3.9082491), b"3.9082491"),  # float32's shortest form, not float64's
        (np.float16(0.1), b"0.099975586"),  # as in arrays: float16 written via float32
        (np.float64(0.1), b"0.1"),
        (np.float32(np.nan), b'"NaN"'),
        (np.float64(-np.inf), b'"-Infinity"'),
    ],
)
def test_a_scalar_is_written_like_the_elements_of_an_array(value: np.generic, text: bytes) -> None:
    """A reduced loss is 0-d: written as one number, as it would be inside a list."""
    assert (
        orjson.dumps(json_tensor.encode_fragment(np.asarray(value), bare_non_finite=False)) == text
    )
