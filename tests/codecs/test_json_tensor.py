"""JSON tensor codec, without HTTP."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import orjson
import pytest

from service.codecs import json_tensor
from service.engine.types import DType
from service.errors import InvalidArgument, ValueOutOfRange


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
