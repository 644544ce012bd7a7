"""safetensors bodies <-> named numpy arrays, through the `safetensors` package.

The package validates the header (offsets, sizes, coverage) in Rust. Its numpy
helpers cannot read BF16 (0.8), so the raw bytes it hands back are viewed with
our own dtype table, which includes ml_dtypes' bfloat16.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import safetensors

from service.codecs import shapes
from service.engine.types import DType
from service.errors import MalformedBody, UnsupportedDtype

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


def decode(body: bytes | bytearray) -> dict[str, np.ndarray]:
    """Named arrays from a safetensors body; 400 when the body is not valid safetensors."""
    try:
        raw = bytes(body) if isinstance(body, bytearray) else body  # the binding takes bytes
        entries = safetensors.deserialize(raw)  # type: ignore[no-untyped-call]
    except Exception as exc:  # SafetensorError, and header JSON errors surfaced as others
        raise MalformedBody(f"body is not valid safetensors: {exc}") from None
    arrays: dict[str, np.ndarray] = {}
    for name, entry in entries:
        dtype = _BY_WIRE_NAME.get(entry["dtype"])
        if dtype is None:
            raise UnsupportedDtype(
                f"tensor {name!r} has dtype {entry['dtype']}; supported: "
                f"{', '.join(WIRE_NAMES.values())}"
            )
        flat = np.frombuffer(entry["data"], dtype.numpy)
        arrays[name] = shapes.reshaped(flat, entry["shape"], f"tensor {name!r}")
    return arrays


def encode(arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> bytes:
    """A safetensors body holding `arrays` (contiguous copies are made only where needed)."""
    specs = {}
    keep_alive = []  # the TensorSpecs hold raw pointers: the buffers must outlive serialize
    for name, array in arrays.items():
        dtype = DType.of(array)
        if dtype is None:
            raise UnsupportedDtype(f"cannot encode {array.dtype} as safetensors")
        contiguous = np.ascontiguousarray(array)
        keep_alive.append(contiguous)
        specs[name] = safetensors.TensorSpec(
            dtype=contiguous.dtype.name,
            shape=list(array.shape),
            data_ptr=contiguous.ctypes.data,
            data_len=contiguous.nbytes,
        )
    body: bytes = safetensors.serialize(specs, metadata=dict(metadata) if metadata else None)
    del keep_alive
    return body
