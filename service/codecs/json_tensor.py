"""JSON tensors <-> numpy arrays, for both APIs' JSON.

Decoding: a `JsonTensor` from `json_document.loads` (the array's text, checked, its
numbers converted straight to numpy), or a number or small list parsed as Python
objects (written back to JSON by orjson and read the same way). Numbers follow JSON's
grammar strictly; non-finite values are the strings "NaN", "Infinity", "-Infinity"
(and, in v2 documents, the same bare literals, as Triton writes them); booleans, null
and other strings are refused.

Encoding: `encode_fragment` writes an array's nested lists as JSON text once (orjson
writes the numbers, numpy splices in the non-finite ones), wrapped in orjson.Fragment
so that a document holding it is serialised without a Python object per number.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import orjson

from service.codecs.json_document import NON_FINITE, JsonTensor, out_of_range, tensor
from service.codecs.text import quote
from service.engine.types import MAX_RANK, DType
from service.errors import InvalidArgument, MalformedBody, ValueOutOfRange

__all__ = [
    "NON_FINITE",
    "JsonTensor",
    "Pending",
    "decode",
    "dumps",
    "encode",
    "encode_fragment",
    "lazy",
]

# Non-finite values as each dialect writes them: the native API's strings, Triton's literals.
_LITERALS: Final = {
    False: (b'"NaN"', b'"Infinity"', b'"-Infinity"'),
    True: (b"NaN", b"Infinity", b"-Infinity"),
}
_NUMBERS_ONLY = "must be a number or nested lists of numbers"
#: numbers orjson writes at a time (and the splice handles): about 0.5 MB of text
ENCODE_VALUES: Final = 1 << 15


@dataclass(frozen=True)
class Pending:
    """A JSON tensor whose shape is known and whose numbers are not converted yet: the
    server converts them once the request's memory is granted."""

    tensor: JsonTensor
    dtype: DType
    name: str
    shape: tuple[int, ...]  # the tensor's own, or the one a v2 input declares for it

    def decode(self) -> np.ndarray:
        return self.tensor.decode(self.dtype, self.name).reshape(self.shape)


def lazy(value: Any, dtype: DType, name: str) -> np.ndarray | Pending:
    """A tensor member of a JSON document: a JsonTensor stays pending (422 now for what its
    structure already shows: jagged, nested too deep); anything else (a scalar, a small
    list from the document's skeleton) is decoded now."""
    if isinstance(value, JsonTensor):
        if value.problem is not None:
            raise InvalidArgument(f"{name} {value.problem}")
        return Pending(value, dtype, name, value.shape)
    return decode(value, dtype, name)


def decode(value: Any, dtype: DType, name: str) -> np.ndarray:
    """A JSON value (a JsonTensor, a number, or nested lists) as an array of `dtype`;
    422 on anything else."""
    if isinstance(value, JsonTensor):
        return value.decode(dtype, name)
    if isinstance(value, bool):
        raise InvalidArgument(f"{name} must hold numbers, not booleans")
    if isinstance(value, int | float):
        return _scalar(value, dtype, name)
    if isinstance(value, np.integer | np.floating):
        return _scalar(value.item(), dtype, name)
    if isinstance(value, str):
        if value in NON_FINITE:
            return _scalar(float(value), dtype, name)
        raise InvalidArgument(
            f"{name} holds {quote(value)}: values must be numbers, or one of "
            f"{', '.join(NON_FINITE)} as strings"
        )
    if isinstance(value, list):
        return _from_list(value, dtype, name)
    raise InvalidArgument(f"{name} {_NUMBERS_ONLY}")


def _scalar(value: int | float, dtype: DType, name: str) -> np.ndarray:
    """A rank-0 array, as np.array(value).astype(dtype) (through float64) but checked."""
    if not dtype.is_float:
        if isinstance(value, float):
            raise InvalidArgument(f"{name} must hold integers (class indices)")
        info = np.iinfo(dtype.numpy)  # type: ignore[type-var]
        if not info.min <= value <= info.max:
            raise ValueOutOfRange(f"{name} holds {value}, outside the range of {dtype.name}")
        return np.array(value, dtype.numpy)
    try:
        wide = np.array(float(value), np.float64)
    except OverflowError:  # an integer beyond float64
        wide = np.array(math.inf if value > 0 else -math.inf)
    if math.isinf(float(wide)) and not (isinstance(value, float) and math.isinf(value)):
        raise out_of_range(name, quote(value), DType.float64)
    with np.errstate(over="ignore"):
        narrow = wide.astype(dtype.numpy)
    if np.isinf(narrow) and np.isfinite(wide):
        raise out_of_range(name, f"{float(wide):g}", dtype)
    return narrow


def _from_list(value: list[Any], dtype: DType, name: str) -> np.ndarray:
    """Nested Python lists (as orjson.loads made them) through the same strict reader."""
    try:
        text = orjson.dumps(value, default=_fragment_of)
        bare = False
        if b"null" in text:  # orjson writes float("nan") and inf as null; json keeps them
            text, bare = json.dumps(value, default=_fragment_text).encode(), True
    except (TypeError, ValueError):  # integers beyond 64 bits: json writes them
        try:
            text, bare = json.dumps(value, default=_fragment_text).encode(), True
        except (TypeError, ValueError):
            raise InvalidArgument(f"{name} {_NUMBERS_ONLY}") from None
        except RecursionError:  # orjson writes 255 levels at most, json about 1000
            raise InvalidArgument(f"{name} is nested deeper than {MAX_RANK} levels") from None
    try:
        return tensor(text, bare_non_finite=bare).decode(dtype, name)
    except MalformedBody:  # valid JSON by construction: objects, not numbers
        raise InvalidArgument(f"{name} {_NUMBERS_ONLY}") from None


def _fragment_of(value: Any) -> orjson.Fragment:
    if isinstance(value, JsonTensor):
        return orjson.Fragment(value.text())
    raise TypeError


def _fragment_text(value: Any) -> Any:
    if isinstance(value, JsonTensor):  # in a list beside objects: refused anyway
        return {}
    raise TypeError


# --- encoding ----------------------------------------------------------------------


def _wire(array: np.ndarray) -> np.ndarray:
    """float32 and float64 as they are; float16 and bfloat16 (exact in float32) and
    anything else that is not an integer as float32; C order, which orjson needs."""
    if array.dtype.kind in "iu" or (array.dtype.kind == "f" and array.dtype.itemsize >= 4):
        return np.asarray(array, order="C")
    return np.asarray(array, dtype=np.float32, order="C")


def encode_fragment(array: np.ndarray, *, bare_non_finite: bool) -> orjson.Fragment:
    """The nested lists of `array` as JSON text (a number for rank 0), pre-serialised.

    Non-finite values are the strings "NaN", "Infinity", "-Infinity", or with
    `bare_non_finite` the bare literals that Triton writes. orjson writes the numbers
    (null for non-finite ones: the k-th null is the k-th non-finite value in C order,
    which numpy then writes over), so no Python object is made per number.
    """
    wire = _wire(array)
    literals = _LITERALS[bare_non_finite]
    if wire.ndim == 0:  # as a one-element list, unwrapped: float32 keeps its shortest form
        return orjson.Fragment(_json_block(wire.reshape(1), literals)[1:-1])
    return orjson.Fragment(_json_of(wire, literals))


def _json_of(wire: np.ndarray, literals: tuple[bytes, ...]) -> bytes:
    """The JSON text of `wire`, written by orjson in blocks of about ENCODE_VALUES
    numbers (orjson's own buffer peaks at ~4x its output), then joined: peak memory
    about twice the text."""
    return b"".join(_json_pieces(wire, literals))


def _json_pieces(wire: np.ndarray, literals: tuple[bytes, ...]) -> Iterator[bytes]:
    if wire.size <= ENCODE_VALUES:
        yield _json_block(wire, literals)
        return
    row = wire[0].size
    yield b"["
    if row > ENCODE_VALUES // 2:  # few rows, each large: one at a time
        for i in range(wire.shape[0]):
            if i:
                yield b","
            yield from _json_pieces(wire[i], literals)
    else:
        step = ENCODE_VALUES // row
        for i in range(0, wire.shape[0], step):
            if i:
                yield b","
            yield _json_block(wire[i : i + step], literals)[1:-1]
    yield b"]"


def _json_block(wire: np.ndarray, literals: tuple[bytes, ...]) -> bytes:
    """orjson's text of `wire`, its k-th ``null`` replaced by the literal of the k-th
    non-finite value (orjson writes them all as null)."""
    text = orjson.dumps(wire, option=orjson.OPT_SERIALIZE_NUMPY)
    if wire.dtype.kind != "f" or b"null" not in text:
        return text
    flat = wire.reshape(-1)
    odd = flat[~np.isfinite(flat)]
    kinds = (odd > 0).view(np.uint8) + 2 * (odd < 0).view(np.uint8)  # NaN 0, inf 1, -inf 2
    present = np.flatnonzero(np.bincount(kinds, minlength=3)).tolist()
    if len(present) == 1:  # all NaN, or all one infinity: one C-speed replace
        return text.replace(b"null", literals[present[0]])
    # Mixed: every null widened to a field as wide as the longest literal (the blanks
    # are JSON whitespace), then each field written with its value's literal; "n"
    # appears in orjson's numbers only in null.
    width = max(len(literal) for literal in literals)
    out = np.frombuffer(text.replace(b"null", b"null".ljust(width)), np.uint8).copy()
    starts = np.flatnonzero(out == ord("n"))
    chosen = np.array([list(literal.ljust(width)) for literal in literals], np.uint8)[kinds]
    for j in range(width):
        out[starts + j] = chosen[:, j]
    return out.tobytes()


def encode(array: np.ndarray) -> dict[str, Any]:
    """``{"shape": [...], "data": nested lists}`` (the native API), non-finite values as
    strings; `data` is an orjson.Fragment, for `dumps`."""
    return {"shape": list(array.shape), "data": encode_fragment(array, bare_non_finite=False)}


def dumps(document: dict[str, Any]) -> bytes:
    """A response document (which may hold numpy arrays and fragments) as JSON bytes."""
    return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
