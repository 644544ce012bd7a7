"""safetensors bodies <-> named numpy arrays.

Decoding is written here rather than taken from the `safetensors` package, for two
reasons measured in bench/transport.py: the package's `deserialize` takes only `bytes`
(the body arrives as a `bytearray`) and copies every tensor out, so a 256 MiB body
cost three copies; and `safetensors.numpy` 0.8 cannot read BF16. Here the header is
checked against the format's rules (the same ones the package enforces; a property
test compares the two decoders on random bodies) and tensors are `np.frombuffer`
views of the body. Encoding is written here too (`encode_buffers`), so that an answer's
tensors are sent from their own memory.

Headers are bounded before any per-tensor work (MAX_HEADER_BYTES, MAX_TENSORS): only
a handful of tensors mean anything to this service, and a header of a million entries
once cost 25 s of GIL and an 8.9 MB error. Names and metadata must be valid Unicode
(the package refuses a lone surrogate too), and messages quote names bounded.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from service.codecs import shapes
from service.codecs.text import quote, some, valid_unicode
from service.engine.types import DType
from service.errors import MalformedBody, TooLarge, UnsupportedDtype

MEDIA_TYPE = "application/x-safetensors"
WIRE_NAMES = {
    DType.float16: "F16",
    DType.bfloat16: "BF16",
    DType.float32: "F32",
    DType.float64: "F64",
    DType.int32: "I32",
    DType.int64: "I64",
}
_BY_WIRE_NAME = {wire: dtype for dtype, wire in WIRE_NAMES.items()}
# Item sizes of every safetensors dtype, so that headers naming ones we do not compute
# in are still checked for consistency before they are refused.
_ITEM_SIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}  # fmt: skip
MAX_HEADER_BYTES = 1 << 20  # the package allows 100 MB; 16 tensors need a few hundred bytes
MAX_TENSORS = 16  # labels, logits, grad_loss, class_weights, sample_weights, and room
METADATA = "__metadata__"


def _bad(reason: str) -> MalformedBody:
    return MalformedBody(f"body is not valid safetensors: {reason}")


def _header(view: memoryview) -> tuple[dict[str, Any], int]:
    if len(view) < 8:
        raise _bad("header too small")
    length = int.from_bytes(view[:8], "little")
    if length > len(view) - 8:
        raise _bad(f"header length {length} runs past the end of the body ({len(view)} bytes)")
    if length > MAX_HEADER_BYTES:
        raise TooLarge(
            f"safetensors header of {length} bytes is over this service's limit of "
            f"{MAX_HEADER_BYTES} bytes (at most {MAX_TENSORS} tensors are meaningful)"
        )
    try:  # strict UTF-8: json.loads(bytes) would pass surrogates and guess UTF-16/32
        header = json.loads(bytes(view[8 : 8 + length]).decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _bad(f"header is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except (ValueError, RecursionError) as exc:
        raise _bad(f"header is not JSON ({str(exc)[:80]})") from None
    if not isinstance(header, dict):
        raise _bad("header is not a JSON object")
    tensors = len(header) - (METADATA in header)
    if tensors > MAX_TENSORS:
        raise TooLarge(
            f"the safetensors body holds {tensors} tensors; at most {MAX_TENSORS} are accepted "
            f"(labels, logits, grad_loss, ...)"
        )
    invalid = [name for name in header if not valid_unicode(name)]
    if invalid:
        raise _bad(f"tensor names must be valid Unicode; got {some(invalid)}")
    return header, 8 + length


def _metadata(metadata: Any) -> None:
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _bad("__metadata__ must map strings to strings")
    invalid = [text for item in metadata.items() for text in item if not valid_unicode(text)]
    if invalid:
        raise _bad(f"__metadata__ must be valid Unicode; got {some(invalid)}")


def _entry(name: str, entry: Any) -> tuple[str, list[int], int, int]:
    what = f"tensor {quote(name)}"
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
        raise _bad(f"{what} needs dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    ints = (
        isinstance(shape, list)
        and isinstance(offsets, list)
        and len(offsets) == 2
        and all(type(v) is int and v >= 0 for v in [*shape, *offsets])
    )
    if not ints:
        raise _bad(f"{what} has a malformed shape or data_offsets")
    if not isinstance(dtype, str) or dtype not in _ITEM_SIZE:
        raise _bad(f"{what} has unknown dtype {quote(dtype)}")
    shapes.check_rank(shape, what)
    begin, end = offsets
    if begin > end or math.prod(shape) * _ITEM_SIZE[dtype] != end - begin:
        raise _bad(f"{what}: shape {shape} of {dtype} disagrees with its data_offsets")
    return dtype, shape, begin, end


# Python objects per byte of a JSON header, at most (an object or list of two bytes,
# "{}" or "[]", is a 56-64 byte object and a pointer): what parsing one may hold.
HEADER_OBJECT_BYTES_PER_BYTE = 40


def parse_cost(body_length: int) -> int:
    """An upper bound of what `decode` holds beyond the body: its parsed header (tensors
    are views of the body)."""
    return HEADER_OBJECT_BYTES_PER_BYTE * min(body_length, 8 + MAX_HEADER_BYTES)


def decode(body: bytes | bytearray | memoryview) -> dict[str, np.ndarray]:
    """Named arrays (views of `body`); 400 for an invalid body, 422 for a dtype we lack."""
    view = memoryview(body)
    header, start = _header(view)
    _metadata(header.pop(METADATA, {}))
    entries = {name: _entry(name, entry) for name, entry in header.items()}
    covered = 0  # tensors must tile the data section exactly, in offset order
    for _, _, begin, end in sorted(entries.values(), key=lambda e: (e[2], e[3])):
        if begin != covered:
            raise _bad("tensor data overlaps or leaves gaps")
        covered = end
    if covered != len(view) - start:
        raise _bad("the data section is not fully covered by the tensors")
    arrays: dict[str, np.ndarray] = {}
    for name, (wire, shape, begin, end) in entries.items():
        dtype = _BY_WIRE_NAME.get(wire)
        if dtype is None:
            raise UnsupportedDtype(
                f"tensor {quote(name)} has dtype {wire}; "
                f"supported: {', '.join(WIRE_NAMES.values())}"
            )
        count = (end - begin) // dtype.numpy.itemsize
        flat = np.frombuffer(body, dtype.numpy, count=count, offset=start + begin)
        arrays[name] = shapes.reshaped(flat, shape, f"tensor {quote(name)}")
    return arrays


def encode_buffers(
    arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
) -> list[bytes | memoryview]:
    """A safetensors body holding `arrays`, as buffers to send one after the other: the
    header, then each array's own memory (no copy, as v2 binary outputs are sent).

    Written by hand because the package's `serialize` copies every tensor into one
    `bytes` (a 1024 x 32000 answer with both gradients: 256 MiB more, and the copy's
    time). The format is the package's: an 8-byte little-endian header length, a JSON
    header padded with spaces to a multiple of 8, tensors in that header's offsets;
    largest item sizes first so that each tensor is aligned to its own (the package
    reads what this writes: tests/codecs/test_safetensors.py).
    """
    order = sorted(arrays, key=lambda name: (-arrays[name].dtype.itemsize, name))
    header: dict[str, Any] = {METADATA: dict(metadata)} if metadata else {}
    data: list[bytes | memoryview] = []
    offset = 0
    for name in order:
        dtype = DType.of(arrays[name])
        if dtype is None:
            raise UnsupportedDtype(f"cannot encode {arrays[name].dtype} as safetensors")
        array = arrays[name]
        if not array.flags.c_contiguous:  # (ascontiguousarray would make a 0-d array 1-d)
            array = array.copy(order="C")
        header[name] = {
            "dtype": WIRE_NAMES[dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
        data.append(memoryview(array.reshape(-1).view(np.uint8)))  # type: ignore[arg-type]
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return [len(text).to_bytes(8, "little") + text, *data]


def encode(arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> bytes:
    """A safetensors body holding `arrays`, in one piece (the client's request body)."""
    return b"".join(encode_buffers(arrays, metadata))
