"""The two binary wire formats, numpy arrays in and out, without copying the tensors.

Requests are lists of buffers (a header, then each array's own memory) that urllib3
sends one after the other under one Content-Length; answers are read into one writable
buffer and decoded as `np.frombuffer` views of it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sce_client._errors import ProtocolError

Buffer = bytes | memoryview
Parameters = dict[str, str | int | float]

V2_HEADER_LENGTH = "Inference-Header-Content-Length"
SAFETENSORS = "application/x-safetensors"

# numpy dtype -> (safetensors name, v2 datatype); one table for both formats.
_DTYPES: dict[np.dtype[Any], tuple[str, str]] = {
    np.dtype(np.float16): ("F16", "FP16"),
    np.dtype(np.float32): ("F32", "FP32"),
    np.dtype(np.float64): ("F64", "FP64"),
    np.dtype(np.int32): ("I32", "INT32"),
    np.dtype(np.int64): ("I64", "INT64"),
}
try:  # bfloat16 is optional: pip install 'sce-client[bfloat16]'
    import ml_dtypes

    _DTYPES[np.dtype(ml_dtypes.bfloat16)] = ("BF16", "BF16")
except ImportError:  # pragma: no cover - depends on the environment
    pass
_BY_SAFETENSORS = {names[0]: dtype for dtype, names in _DTYPES.items()}
_BY_V2 = {names[1]: dtype for dtype, names in _DTYPES.items()}
_NEEDS_ML_DTYPES = "bfloat16 answers need ml_dtypes: pip install 'sce-client[bfloat16]'"


def prepare(name: str, value: Any) -> np.ndarray:
    """`value` as a C-ordered little-endian array of a dtype the service takes."""
    array = np.asarray(value)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    if array.dtype not in _DTYPES:
        supported = ", ".join(str(d) for d in _DTYPES)
        raise TypeError(f"{name} has dtype {array.dtype}; the service takes {supported}")
    if not array.flags.c_contiguous:  # (np.ascontiguousarray would make a 0-d array 1-d)
        array = array.copy(order="C")
    return array


def _data(array: np.ndarray) -> memoryview:
    return memoryview(array.reshape(-1).view(np.uint8))  # type: ignore[arg-type]


def encode_safetensors(arrays: Mapping[str, np.ndarray]) -> list[Buffer]:
    """A safetensors body: 8-byte header length, JSON header padded to 8, the tensors;
    largest item sizes first so that each tensor is aligned to its own."""
    order = sorted(arrays, key=lambda n: (-arrays[n].dtype.itemsize, n))
    header: dict[str, Any] = {}
    offset = 0
    for name in order:
        array = arrays[name]
        end = offset + array.nbytes
        header[name] = {
            "dtype": _DTYPES[array.dtype][0],
            "shape": list(array.shape),
            "data_offsets": [offset, end],
        }
        offset = end
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return [len(text).to_bytes(8, "little") + text, *(_data(arrays[n]) for n in order)]


def encode_v2(
    arrays: Mapping[str, np.ndarray],
    outputs: Sequence[str],
    parameters: Parameters,
    request_id: str | None,
) -> tuple[list[Buffer], int]:
    """A v2 request with binary tensors: its buffers and the length of its JSON header."""
    document: dict[str, Any] = {} if request_id is None else {"id": request_id}
    document["inputs"] = [
        {
            "name": name,
            "shape": list(array.shape),
            "datatype": _DTYPES[array.dtype][1],
            "parameters": {"binary_data_size": array.nbytes},
        }
        for name, array in arrays.items()
    ]
    document["outputs"] = [{"name": o, "parameters": {"binary_data": True}} for o in outputs]
    if parameters:
        document["parameters"] = parameters
    header = json.dumps(document, separators=(",", ":")).encode()
    return [header, *(_data(a) for a in arrays.values())], len(header)


def _view(body: bytearray, dtype: np.dtype[Any], shape: list[int], offset: int) -> np.ndarray:
    count = math.prod(shape)
    if offset + count * dtype.itemsize > len(body):
        raise ProtocolError("the answer's tensors run past its end")
    return np.frombuffer(body, dtype, count=count, offset=offset).reshape(shape)


def _json(data: bytes | bytearray | memoryview, what: str) -> Any:
    try:
        return json.loads(bytes(data))
    except ValueError:
        raise ProtocolError(f"the answer's {what} is not JSON") from None


def decode_safetensors(body: bytearray) -> dict[str, np.ndarray]:
    """Named arrays: writable views of `body`."""
    if len(body) < 8:
        raise ProtocolError("the answer is not safetensors (shorter than its header length)")
    length = int.from_bytes(body[:8], "little")
    header = _json(memoryview(body)[8 : 8 + length], "safetensors header")
    header.pop("__metadata__", None)
    arrays = {}
    for name, entry in header.items():
        if entry["dtype"] == "BF16" and "BF16" not in _BY_SAFETENSORS:
            raise ProtocolError(_NEEDS_ML_DTYPES)
        dtype = _BY_SAFETENSORS[entry["dtype"]]
        begin = entry["data_offsets"][0]
        arrays[name] = _view(body, dtype, entry["shape"], 8 + length + begin)
    return arrays


def decode_v2(body: bytearray, header_length: str | None) -> dict[str, np.ndarray]:
    """Named arrays of a v2 answer: binary outputs are writable views of `body`."""
    length = len(body) if header_length is None else int(header_length)
    document = _json(memoryview(body)[:length], "v2 header")
    arrays = {}
    offset = length
    for out in document["outputs"]:
        if out["datatype"] == "BF16" and "BF16" not in _BY_V2:
            raise ProtocolError(_NEEDS_ML_DTYPES)
        dtype = _BY_V2[out["datatype"]]
        size = out.get("parameters", {}).get("binary_data_size")
        if size is None:  # JSON data (an answer to a client that asked for it)
            arrays[out["name"]] = np.asarray(out["data"], dtype).reshape(out["shape"])
            continue
        arrays[out["name"]] = _view(body, dtype, out["shape"], offset)
        offset += size
    return arrays
