"""Open Inference Protocol (KServe v2 / Triton) tensors, with the binary data extension.

A body is a JSON header, optionally followed by raw little-endian row-major tensor
bytes; `Inference-Header-Content-Length` says where the header ends. Every declared
size and shape is checked against the bytes actually present before anything is
allocated, and binary inputs are `np.frombuffer` views of the body.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import orjson

from service.codecs import json_tensor, shapes
from service.codecs.text import ascii_int, quote
from service.engine.types import DType
from service.errors import InvalidArgument, MalformedBody, UnsupportedDtype

HEADER_LENGTH = "inference-header-content-length"
DATATYPES = {
    "FP16": DType.float16,
    "BF16": DType.bfloat16,
    "FP32": DType.float32,
    "FP64": DType.float64,
    "INT32": DType.int32,
    "INT64": DType.int64,
}
WIRE_NAMES = {dtype: wire for wire, dtype in DATATYPES.items()}

Body = bytes | bytearray | memoryview


def header_length(value: str | None) -> int | None:
    """The `Inference-Header-Content-Length` header: None, or a plain decimal integer."""
    if value is None:
        return None
    return ascii_int(value, "Inference-Header-Content-Length", error=MalformedBody)


def split(body: Body, length: int | None) -> tuple[memoryview, memoryview]:
    """The JSON header and the binary section of a request body."""
    view = memoryview(body)
    if length is None:
        return view, view[len(view) :]
    if length > len(view):
        raise MalformedBody(
            f"Inference-Header-Content-Length {length} is outside the body of {len(view)} bytes"
        )
    return view[:length], view[length:]


def datatype(name: str, wire: str) -> DType:
    """The DType for a v2 datatype name; 422 for the ones this model does not take."""
    dtype = DATATYPES.get(wire)
    if dtype is None:
        raise UnsupportedDtype(
            f"input {quote(name)} has datatype {quote(wire)}; supported: {', '.join(DATATYPES)}"
        )
    return dtype


class BinaryReader:
    """Hands out consecutive slices of the binary section, refusing to run past its end."""

    def __init__(self, data: memoryview) -> None:
        self._data = data
        self._offset = 0

    def take(self, name: str, size: int) -> memoryview:
        end = self._offset + size
        if end > len(self._data):
            raise MalformedBody(
                f"binary data of input {quote(name)} ({size} bytes at offset {self._offset}) runs "
                f"past the end of the body ({len(self._data)} bytes of binary data)"
            )
        chunk = self._data[self._offset : end]
        self._offset = end
        return chunk

    def finish(self) -> None:
        left = len(self._data) - self._offset
        if left:
            raise MalformedBody(f"{left} bytes of binary data are not claimed by any input")


def decode_input(
    *,
    name: str,
    shape: Sequence[int],
    wire_datatype: str,
    data: Any,
    binary_data_size: Any,
    reader: BinaryReader,
) -> np.ndarray | json_tensor.Pending:
    """One input tensor, from its slice of the binary section (a view), or its JSON `data`
    (pending when it came as a JsonTensor: its numbers wait for the request's memory)."""
    dtype = datatype(name, wire_datatype)
    what = f"input {quote(name)}"
    shapes.check(shape, what)
    count = math.prod(shape)  # Python ints: no overflow, whatever the header claims
    if binary_data_size is not None:
        if data is not None:
            raise InvalidArgument(f"{what} has both data and binary_data_size")
        if not isinstance(binary_data_size, int) or isinstance(binary_data_size, bool):
            raise MalformedBody(f"binary_data_size of {what} must be a JSON integer")
        needed = count * dtype.numpy.itemsize
        if binary_data_size != needed:
            raise MalformedBody(
                f"{what} declares {binary_data_size} bytes but shape {list(shape)} of "
                f"{wire_datatype} needs {needed}"
            )
        chunk = reader.take(name, binary_data_size)
        return np.frombuffer(chunk, dtype.numpy).reshape(shape)
    if data is None:
        raise InvalidArgument(f"{what} has neither data nor binary_data_size")
    tensor = json_tensor.lazy(data, dtype, what)
    given = math.prod(tensor.shape)
    if given != count:
        raise InvalidArgument(f"{what} has {given} values but shape {list(shape)} needs {count}")
    if isinstance(tensor, json_tensor.Pending):
        return replace(tensor, shape=tuple(shape))
    return tensor.reshape(shape)


@dataclass(frozen=True)
class OutputTensor:
    name: str
    array: np.ndarray
    binary: bool


def encode_response(
    *, model_name: str, request_id: str | None, outputs: Sequence[OutputTensor]
) -> tuple[list[bytes | memoryview], int | None]:
    """Response chunks (JSON header, then each binary output's bytes) and the header length.

    The header length is None when there is no binary output.
    """
    described: list[dict[str, Any]] = []
    chunks: list[bytes | memoryview] = []
    for out in outputs:
        entry: dict[str, Any] = {
            "name": out.name,
            "datatype": WIRE_NAMES[DType.of(out.array) or DType.float32],
            "shape": list(out.array.shape),
        }
        if out.binary:
            raw = np.ascontiguousarray(out.array)
            entry["parameters"] = {"binary_data_size": raw.nbytes}
            chunks.append(memoryview(raw.reshape(-1).view(np.uint8)))  # type: ignore[arg-type]
        else:  # flat, non-finite values bare as Triton writes them (its client reads them)
            flat = out.array.reshape(-1)
            entry["data"] = json_tensor.encode_fragment(flat, bare_non_finite=True)
        described.append(entry)
    document: dict[str, Any] = {"model_name": model_name, "model_version": "1"}
    if request_id is not None:
        document["id"] = request_id
    document["outputs"] = described
    header = orjson.dumps(document)
    if not chunks:
        return [header], None
    return [header, *chunks], len(header)
