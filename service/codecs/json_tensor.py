"""Nested JSON lists <-> numpy arrays, for the native API.

Parsing is orjson's (Rust) and the list-to-array conversion numpy's (C): no Python
loop touches individual numbers. Non-finite numbers travel as the strings
"NaN", "Infinity" and "-Infinity", since JSON has no literal for them.
"""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
import orjson

from service.engine.types import MAX_RANK, DType
from service.errors import InvalidArgument, ValueOutOfRange

NON_FINITE = ("NaN", "Infinity", "-Infinity")


def _to_float64(name: str, array: np.ndarray) -> np.ndarray:
    kind = array.dtype.kind
    if kind in "iuf":
        return array.astype(np.float64, copy=False)
    if kind == "U":
        # Mixed numbers and strings: numpy turned every element into text. Allow only
        # numbers and the three spellings of non-finite values.
        values = np.unique(array)
        for text in values:
            try:
                number = float(text)
            except ValueError:
                break
            if not np.isfinite(number) and text not in NON_FINITE:
                break
        else:
            return array.astype(np.float64)
        raise InvalidArgument(
            f"{name} holds {str(text)[:40]!r}: values must be numbers, or one of "
            f"{', '.join(NON_FINITE)} as strings"
        )
    if kind == "O":  # integers beyond int64 beside floats, or nulls and objects
        numbers = all(type(v) in (int, float) for v in array.flat)
        if numbers:
            return array.astype(np.float64)
    raise InvalidArgument(f"{name} must be a number or nested lists of numbers")


def decode(value: Any, dtype: DType, name: str) -> np.ndarray:
    """A JSON value (number or nested lists) as an array of `dtype`; 422 on anything else."""
    if isinstance(value, bool) or value is None or isinstance(value, dict):
        raise InvalidArgument(f"{name} must be a number or nested lists of numbers")
    try:
        array = np.array(value)
    except ValueError as exc:
        if "maximum number of dimension" in str(exc):
            raise InvalidArgument(f"{name} is nested deeper than {MAX_RANK} levels") from None
        raise InvalidArgument(
            f"{name} is jagged: the lists at each depth must all have the same length"
        ) from None
    if array.ndim > MAX_RANK:
        raise InvalidArgument(f"{name} is nested deeper than {MAX_RANK} levels")
    if array.dtype.kind == "b":
        raise InvalidArgument(f"{name} must hold numbers, not booleans")
    if array.size == 0:
        return np.zeros(array.shape, dtype.numpy)
    if not dtype.is_float:
        if array.dtype.kind not in "iu":
            raise InvalidArgument(f"{name} must hold integers (class indices)")
        info = np.iinfo(dtype.numpy)  # type: ignore[type-var]
        if array.min() < info.min or array.max() > info.max:
            raise ValueOutOfRange(f"{name} holds a value outside the range of {dtype.name}")
        return array.astype(dtype.numpy)
    wide = _to_float64(name, array)
    with np.errstate(over="ignore"):
        narrow = wide.astype(dtype.numpy)
    if dtype is not DType.float64:
        overflow = np.isinf(narrow) & np.isfinite(wide)
        if overflow.any():
            bad = wide[overflow].flat[0]
            # numpy's finfo does not know bfloat16; ml_dtypes' knows every float type
            largest = float(ml_dtypes.finfo(dtype.numpy).max)  # type: ignore[no-untyped-call]
            raise ValueOutOfRange(
                f"{name} holds {bad:g}, which {dtype.name} cannot represent "
                f"(largest finite {largest:g}); send a wider dtype"
            )
    return narrow


def encode(array: np.ndarray) -> dict[str, Any]:
    """``{"shape": [...], "data": nested lists}``, non-finite values as strings."""
    shape = list(array.shape)
    if array.dtype.kind == "f" and array.dtype.itemsize >= 4:
        wire = np.asarray(array, order="C")
    else:  # float16 and bfloat16 are exact in float32, which orjson writes natively
        wire = np.asarray(array, dtype=np.float32, order="C")
    if not np.isfinite(wire).all():
        text = wire.astype(object)
        text[np.isnan(wire)] = "NaN"
        text[np.isposinf(wire)] = "Infinity"
        text[np.isneginf(wire)] = "-Infinity"
        return {"shape": shape, "data": text.tolist()}
    if wire.ndim == 0:  # orjson serialises arrays of rank >= 1 only
        return {"shape": shape, "data": wire.item()}
    return {"shape": shape, "data": wire}


def dumps(document: dict[str, Any]) -> bytes:
    """A response document (which may hold numpy arrays) as JSON bytes."""
    return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
