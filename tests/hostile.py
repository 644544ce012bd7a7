"""The hostile-request catalogue: bad requests across v1 JSON, safetensors and v2.

Each case names what it sends and what must come back (a 4xx and words of the message).
The server under test runs with small limits (see tests/test_hostile.py).
"""

from __future__ import annotations

import gzip
import json
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

SOFT = "/v1/softmax_cross_entropy_with_logits"
SPARSE = "/v1/sparse_softmax_cross_entropy_with_logits"
INFER = "/v2/models/softmax_cross_entropy_with_logits/infer"
JSON = {"content-type": "application/json"}
ST = {"content-type": "application/x-safetensors"}
LIMIT_BYTES = 8 * 1024 * 1024
LIMIT_ELEMENTS = 1 << 20


@dataclass(frozen=True)
class Case:
    id: str
    path: str
    body: bytes
    status: int
    message: str
    headers: dict[str, str] = field(default_factory=dict)


def _j(document: object) -> bytes:
    return json.dumps(document).encode()


def _soft(**members: object) -> bytes:
    return _j({"labels": [0.0, 1.0], "logits": [0.0, 0.0], **members})


def _safetensors(header: Mapping[str, object], data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _st(tensors: dict[str, np.ndarray]) -> bytes:
    header, offset = {}, 0
    names = {np.dtype(np.float32): "F32", np.dtype(np.float64): "F64", np.dtype(np.int8): "I8"}
    names[np.dtype(np.int64)] = "I64"
    for name, array in tensors.items():
        header[name] = {
            "dtype": names[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
    return _safetensors(header, b"".join(a.tobytes() for a in tensors.values()))


def _v2(inputs: list[dict[str, object]], **request: object) -> bytes:
    return _j({"inputs": inputs, **request})


def _t(name: str = "labels", **fields: object) -> dict[str, object]:
    return {"name": name, "shape": [2], "datatype": "FP32", "data": [0.0, 1.0], **fields}


def _v2_binary(declared: int, actual: int, shape: list[int]) -> tuple[bytes, dict[str, str]]:
    header = _v2(
        [
            {
                "name": "labels",
                "shape": shape,
                "datatype": "FP32",
                "parameters": {"binary_data_size": declared},
            },
            _t("logits"),
        ]
    )
    return header + b"\0" * actual, {"Inference-Header-Content-Length": str(len(header))}


def _nested(depth: int) -> object:
    value: object = 1.0
    for _ in range(depth):
        value = [value]
    return value


def cases() -> list[Case]:
    a = np.ones((2, 3), np.float32)
    good_st = _st({"labels": a, "logits": a})
    sparse_st = _st({"labels": np.zeros(2, np.int64), "logits": a})
    bomb = gzip.compress(b"0" * (4 * LIMIT_BYTES), compresslevel=9)
    v2_bin_short, h_short = _v2_binary(8, 4, [2])
    v2_bin_long, h_long = _v2_binary(8, 16, [2])
    v2_bin_huge, h_huge = _v2_binary(1 << 34, 16, [1 << 32])
    v2_bin_lie, h_lie = _v2_binary(12, 12, [2])
    big_dim = 1 << 11
    return [
        # --- v1 JSON: shape of the body
        Case("v1 positional array", SOFT, b"[[0, 1], [1, 2]]", 422, "must be named", JSON),
        Case("v1 positional string", SOFT, b'"labels"', 422, "must be named", JSON),
        Case("v1 bare number", SOFT, b"42", 422, "must be named", JSON),
        Case("v1 null body", SOFT, b"null", 422, "must be named", JSON),
        Case("v1 empty body", SOFT, b"", 400, "JSON", JSON),
        Case("v1 whitespace body", SOFT, b"   ", 400, "JSON", JSON),
        Case(
            "v1 truncated JSON", SOFT, b'{"labels": [0.0, 1.0], "logits": [0.0', 400, "JSON", JSON
        ),
        Case("v1 trailing garbage", SOFT, _soft() + b"}", 400, "JSON", JSON),
        Case("v1 non-UTF-8 body", SOFT, b'{"labels": "\xff\xfe"}', 400, "JSON", JSON),
        Case("v1 UTF-16 body", SOFT, _soft().decode().encode("utf-16"), 400, "JSON", JSON),
        Case("v1 JSON nested 2000 deep", SOFT, b"[" * 2000 + b"]" * 2000, 400, "JSON", JSON),
        # --- v1 JSON: members
        Case("v1 _sentinel member", SOFT, _soft(_sentinel=1), 422, "_sentinel", JSON),
        Case(
            "v1 misspelt member",
            SOFT,
            _j({"labels": [1.0], "logit": [1.0]}),
            422,
            "must be named",
            JSON,
        ),
        Case("v1 missing labels", SOFT, _j({"logits": [1.0]}), 422, "labels", JSON),
        Case("v1 missing everything", SOFT, b"{}", 422, "labels", JSON),
        Case("v1 dim and axis disagree", SOFT, _soft(dim=0, axis=-1), 422, "disagree", JSON),
        Case("v1 dim out of range", SOFT, _soft(dim=3), 422, "out of range", JSON),
        Case("v1 dim very negative", SOFT, _soft(dim=-(2**62)), 422, "out of range", JSON),
        Case("v1 dim a float", SOFT, _soft(dim=0.5), 422, "dim", JSON),
        Case("v1 dim huge int", SOFT, _soft(dim=10**30), 422, "dim", JSON),
        Case("v1 unknown dtype", SOFT, _soft(dtype="float8"), 422, "dtype", JSON),
        Case("v1 dtype int32 for soft", SOFT, _soft(dtype="int32"), 422, "dtype", JSON),
        Case("v1 outputs not a list", SOFT, _soft(outputs="loss"), 422, "outputs", JSON),
        Case("v1 unknown output", SOFT, _soft(outputs=["probs"]), 422, "outputs", JSON),
        Case("v1 name not a string", SOFT, _soft(name=["x"]), 422, "name", JSON),
        Case("v1 name too long", SOFT, _soft(name="x" * 1000), 422, "name", JSON),
        # --- v1 JSON: tensors
        Case(
            "v1 jagged",
            SOFT,
            _j({"labels": [[1.0], [1.0, 0.0]], "logits": [1.0]}),
            422,
            "jagged",
            JSON,
        ),
        Case(
            "v1 nested 100 deep",
            SOFT,
            _j({"labels": _nested(100), "logits": [1.0]}),
            422,
            "deeper",
            JSON,
        ),
        Case(
            "v1 nested 40 deep",
            SOFT,
            _j({"labels": _nested(40), "logits": [1.0]}),
            422,
            "deeper",
            JSON,
        ),
        Case("v1 scalar tensors", SOFT, _j({"labels": 1.0, "logits": 1.0}), 422, "rank >= 1", JSON),
        Case("v1 string tensor", SOFT, _j({"labels": "abc", "logits": [1.0]}), 422, "'abc'", JSON),
        Case(
            "v1 object in tensor",
            SOFT,
            _j({"labels": [{"a": 1}], "logits": [1.0]}),
            422,
            "numbers",
            JSON,
        ),
        Case(
            "v1 null in tensor",
            SOFT,
            _j({"labels": [None, 1.0], "logits": [1.0, 1.0]}),
            422,
            "numbers",
            JSON,
        ),
        Case(
            "v1 booleans",
            SOFT,
            _j({"labels": [True, False], "logits": [1.0, 1.0]}),
            422,
            "booleans",
            JSON,
        ),
        Case(
            "v1 NaN spelt nan",
            SOFT,
            _j({"labels": [0.0, 1.0], "logits": ["nan", 0.0]}),
            422,
            "'nan'",
            JSON,
        ),
        Case(
            "v1 Infinity spelt inf",
            SOFT,
            _j({"labels": [0.0, 1.0], "logits": ["inf", 0.0]}),
            422,
            "'inf'",
            JSON,
        ),
        Case(
            "v1 Infinity spelt +Infinity",
            SOFT,
            _j({"labels": [0.0, 1.0], "logits": ["+Infinity", 0.0]}),
            422,
            "'+Infinity'",
            JSON,
        ),
        Case(
            "v1 bare NaN literal",
            SOFT,
            b'{"labels": [0.0, 1.0], "logits": [NaN, 0.0]}',
            400,
            "JSON",
            JSON,
        ),
        Case(
            "v1 number too big for a double",
            SOFT,
            b'{"labels": [0.0, 1.0], "logits": [1e400, 0.0]}',
            422,
            "cannot represent",
            JSON,
        ),
        Case(
            "v1 1e6 as float16",
            SOFT,
            _soft(logits=[1e6, 0.0], dtype="float16"),
            422,
            "cannot represent",
            JSON,
        ),
        Case("v1 1e39 as float32", SOFT, _soft(logits=[1e39, 0.0]), 422, "cannot represent", JSON),
        Case(
            "v1 1e39 as bfloat16",
            SOFT,
            _soft(logits=[1e39, 0.0], dtype="bfloat16"),
            422,
            "cannot represent",
            JSON,
        ),
        Case(
            "v1 int beyond int64 as float16",
            SOFT,
            _soft(logits=[10**30, 0.0], dtype="float16"),
            422,
            "cannot represent",
            JSON,
        ),
        Case(
            "v1 int beyond a double",
            SOFT,
            _soft(logits=[10**400, 0.0]),
            422,
            "cannot represent",
            JSON,
        ),
        Case(
            "v1 shapes do not broadcast",
            SOFT,
            _j({"labels": [0.0, 1.0], "logits": [1.0, 2.0, 3.0]}),
            422,
            "broadcast",
            JSON,
        ),
        Case(
            "v1 zero classes",
            SOFT,
            _j({"labels": [[], []], "logits": [[], []]}),
            422,
            "at least one class",
            JSON,
        ),
        Case(
            "v1 broadcast blows past max elements",
            SOFT,
            _j({"labels": [[0.0]] * big_dim, "logits": [[0.0] * big_dim]}),
            422,
            "limit",
            JSON,
        ),
        Case(
            "v1 grad_loss wrong shape",
            SOFT,
            _soft(outputs=["grad_logits"], grad_loss=[1.0, 2.0]),
            422,
            "grad_loss",
            JSON,
        ),
        Case("v1 grad_loss without a gradient", SOFT, _soft(grad_loss=1.0), 422, "grad_loss", JSON),
        Case(
            "v1 sparse label out of range",
            SPARSE,
            _j({"labels": [5], "logits": [[0.0, 1.0]]}),
            422,
            "[0, 2)",
            JSON,
        ),
        Case(
            "v1 sparse negative label",
            SPARSE,
            _j({"labels": [-1], "logits": [[0.0, 1.0]]}),
            422,
            "[0, 2)",
            JSON,
        ),
        Case(
            "v1 sparse float labels",
            SPARSE,
            _j({"labels": [0.5], "logits": [[0.0, 1.0]]}),
            422,
            "integers",
            JSON,
        ),
        Case(
            "v1 sparse label beyond int32",
            SPARSE,
            _j({"labels": [2**40], "logits": [[0.0]], "labels_dtype": "int32"}),
            422,
            "int32",
            JSON,
        ),
        Case(
            "v1 sparse dim disagreeing with its labels",
            SPARSE,
            _j({"labels": [0], "logits": [[0.0, 0.0]], "dim": 0}),
            422,
            "class dimension (dim 0)",
            JSON,
        ),
        Case(
            "v1 sparse dim out of range",
            SPARSE,
            _j({"labels": [0], "logits": [[0.0]], "dim": 5}),
            422,
            "out of range",
            JSON,
        ),
        # --- v1 transport
        Case("v1 text/plain", SOFT, _soft(), 415, "not supported", {"content-type": "text/plain"}),
        Case(  # read as JSON (what `curl -d` sends), so a real form body is bad JSON
            "v1 form encoded",
            SOFT,
            b"labels=1",
            400,
            "not valid JSON",
            {"content-type": "application/x-www-form-urlencoded"},
        ),
        Case("v1 query arguments with JSON", SOFT + "?dim=0", _soft(), 422, "safetensors", JSON),
        Case("v1 body over the JSON limit", SOFT, b" " * (LIMIT_BYTES + 1), 413, "limit", JSON),
        Case("v1 gzip bomb", SOFT, bomb, 413, "limit", {**JSON, "content-encoding": "gzip"}),
        Case(
            "v1 truncated gzip",
            SOFT,
            gzip.compress(_soft())[:-8],
            400,
            "gzip",
            {**JSON, "content-encoding": "gzip"},
        ),
        Case(
            "v1 deflate that is not",
            SOFT,
            b"\x78\x9cnot deflate",
            400,
            "deflate",
            {**JSON, "content-encoding": "deflate"},
        ),
        Case(
            "v1 brotli", SOFT, _soft(), 415, "Content-Encoding", {**JSON, "content-encoding": "br"}
        ),
        # --- safetensors
        Case("st truncated", SOFT, good_st[:-3], 400, "safetensors", ST),
        Case(
            "st header length past the end",
            SOFT,
            struct.pack("<Q", 1 << 40) + good_st[8:],
            400,
            "safetensors",
            ST,
        ),
        Case("st body of 3 bytes", SOFT, b"\x01\x02\x03", 400, "safetensors", ST),
        Case("st empty body", SOFT, b"", 400, "safetensors", ST),
        Case("st header not JSON", SOFT, struct.pack("<Q", 4) + b"{{{{", 400, "safetensors", ST),
        Case(
            "st header not UTF-8",
            SOFT,
            struct.pack("<Q", 4) + b"\xff\xfe\xfd\xfc",
            400,
            "safetensors",
            ST,
        ),
        Case(
            "st offsets past the data",
            SOFT,
            _safetensors(
                {"labels": {"dtype": "F32", "shape": [2], "data_offsets": [0, 800]}}, b"\0" * 8
            ),
            400,
            "safetensors",
            ST,
        ),
        Case(
            "st shape disagrees with offsets",
            SOFT,
            _safetensors(
                {"labels": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8
            ),
            400,
            "safetensors",
            ST,
        ),
        Case(
            "st shape product overflows",
            SOFT,
            _safetensors(
                {"labels": {"dtype": "F32", "shape": [1 << 40, 1 << 40], "data_offsets": [0, 8]}},
                b"\0" * 8,
            ),
            400,
            "safetensors",
            ST,
        ),
        Case(
            "st unsupported dtype",
            SOFT,
            _st({"labels": a.astype(np.int8), "logits": a.astype(np.int8)}),
            422,
            "I8",
            ST,
        ),
        Case(
            "st mixed dtypes",
            SOFT,
            _st({"labels": a, "logits": a.astype(np.float64)}),
            422,
            "share one dtype",
            ST,
        ),
        Case(
            "st unknown tensor", SOFT, _st({"labels": a, "logits": a, "bias": a}), 422, "bias", ST
        ),
        Case("st missing logits", SOFT, _st({"labels": a}), 422, "logits", ST),
        Case("st bad outputs query", SOFT + "?outputs=loss,probs", good_st, 422, "outputs", ST),
        Case("st dim not an int", SOFT + "?dim=last", good_st, 422, "dim", ST),
        Case("st name too long", SOFT + "?name=" + "n" * 257, good_st, 422, "name", ST),
        Case("st sparse dim out of range", SPARSE + "?dim=2", sparse_st, 422, "out of range", ST),
        Case("st label_smoothing nan", SOFT + "?label_smoothing=nan", good_st, 422, "decimal", ST),
        Case(
            "st ignore_index a float", SPARSE + "?ignore_index=1.5", sparse_st, 422, "integer", ST
        ),
        # --- v2
        Case("v2 empty body", INFER, b"", 400, "empty"),
        Case("v2 not JSON", INFER, b"\x00garbage", 400, "JSON"),
        Case("v2 positional body", INFER, b"[1, 2]", 422, "inference request"),
        Case("v2 no inputs", INFER, b'{"inputs": []}', 422, "inputs"),
        Case("v2 inputs not a list", INFER, b'{"inputs": {"labels": 1}}', 422, "inputs"),
        Case(
            "v2 unknown request member",
            INFER,
            _v2([_t(), _t("logits")], priority=1),
            422,
            "priority",
        ),
        Case("v2 binary shorter than declared", INFER, v2_bin_short, 400, "past the end", h_short),
        Case("v2 binary longer than declared", INFER, v2_bin_long, 400, "not claimed", h_long),
        Case("v2 4 GB declared over 16 bytes", INFER, v2_bin_huge, 400, "past the end", h_huge),
        Case("v2 size disagrees with shape", INFER, v2_bin_lie, 400, "needs 8", h_lie),
        Case(
            "v2 header length past the end",
            INFER,
            _v2([_t(), _t("logits")]),
            400,
            "outside",
            {"Inference-Header-Content-Length": "99999"},
        ),
        Case(
            "v2 header length negative",
            INFER,
            _v2([_t(), _t("logits")]),
            400,
            "ASCII digits",
            {"Inference-Header-Content-Length": "-5"},
        ),
        Case(
            "v2 header length not a number",
            INFER,
            _v2([_t(), _t("logits")]),
            400,
            "ASCII digits",
            {"Inference-Header-Content-Length": "0x10"},
        ),
        Case(
            "v2 negative binary size",
            INFER,
            _v2([_t(parameters={"binary_data_size": -4}, data=None), _t("logits")]),
            422,
            "binary_data_size",
        ),
        Case("v2 negative shape", INFER, _v2([_t(shape=[-2]), _t("logits")]), 422, "negative"),
        Case(
            "v2 shape product overflows int64",
            INFER,
            _v2([_t(shape=[1 << 62, 1 << 62]), _t("logits")]),
            422,
            "too large",
        ),
        Case(
            "v2 a million tiny dimensions",
            INFER,
            _v2([_t(shape=[1] * 1_000_000), _t("logits")]),
            422,
            "rank",
        ),
        Case("v2 shape not integers", INFER, _v2([_t(shape=["two"]), _t("logits")]), 422, "shape"),
        Case(
            "v2 datatype mismatch",
            INFER,
            _v2([_t(), _t("logits", datatype="FP64")]),
            422,
            "share one dtype",
        ),
        Case(
            "v2 BYTES datatype",
            INFER,
            _v2([_t(datatype="BYTES", data=["a", "b"]), _t("logits")]),
            422,
            "BYTES",
        ),
        Case(
            "v2 BOOL datatype",
            INFER,
            _v2([_t(datatype="BOOL", data=[True, False]), _t("logits")]),
            422,
            "BOOL",
        ),
        Case("v2 unknown input", INFER, _v2([_t(), _t("logits"), _t("weights")]), 422, "weights"),
        Case("v2 duplicate input", INFER, _v2([_t(), _t(), _t("logits")]), 422, "twice"),
        Case("v2 missing logits", INFER, _v2([_t()]), 422, "logits"),
        Case(
            "v2 data count vs shape",
            INFER,
            _v2([_t(data=[1.0, 2.0, 3.0]), _t("logits")]),
            422,
            "3 values",
        ),
        Case(
            "v2 data and binary both",
            INFER,
            _v2([_t(parameters={"binary_data_size": 8}), _t("logits")]),
            422,
            "both",
        ),
        Case(
            "v2 neither data nor binary", INFER, _v2([_t(data=None), _t("logits")]), 422, "neither"
        ),
        Case(
            "v2 unknown output",
            INFER,
            _v2([_t(), _t("logits")], outputs=[{"name": "probs"}]),
            422,
            "probs",
        ),
        Case(
            "v2 dim out of range",
            INFER,
            _v2([_t(), _t("logits")], parameters={"dim": 7}),
            422,
            "out of range",
        ),
        Case(
            "v2 dim a string", INFER, _v2([_t(), _t("logits")], parameters={"dim": "x"}), 422, "dim"
        ),
        Case(
            "v2 FP16 overflow",
            INFER,
            _v2([_t(datatype="FP16"), _t("logits", datatype="FP16", data=[1e6, 0.0])]),
            422,
            "cannot represent",
        ),
        Case(
            "v2 NaN as a string spelt wrong",
            INFER,
            _v2([_t(), _t("logits", data=["nan", 0.0])]),
            422,
            "'nan'",
        ),
        Case(
            "v2 unknown model",
            "/v2/models/resnet50/infer",
            _v2([_t(), _t("logits")]),
            404,
            "unknown model",
        ),
        Case("v2 body over the limit", INFER, b" " * (LIMIT_BYTES + 1), 413, "limit"),
        Case(
            "v2 deflate bomb",
            INFER,
            zlib.compress(b"\0" * (4 * LIMIT_BYTES), 9),
            413,
            "limit",
            {"content-encoding": "deflate"},
        ),
        Case("v2 gzip bomb", INFER, bomb, 413, "limit", {"content-encoding": "gzip"}),
        *_strict_cases(),
    ]


def _with_nan(document: bytes) -> bytes:
    """A v2 body whose logits hold a bare NaN (as tritonclient writes it), which takes the
    header parser's slow path (Python's json) rather than orjson."""
    return document.replace(
        b'"logits", "shape": [2], "datatype": "FP32", "data": [0.0, 1.0]',
        b'"logits", "shape": [2], "datatype": "FP32", "data": [NaN, 1.0]',
    )


def _header_length(body: bytes, text: str) -> dict[str, str]:
    return {"Inference-Header-Content-Length": text.format(len(body))}


def _safetensors_edited(header: dict[str, object], data: bytes, old: bytes, new: bytes) -> bytes:
    """A safetensors body whose JSON header has `old` replaced by `new` (the length kept
    right): for what json.dumps would not write, such as an escaped lone surrogate."""
    raw = json.dumps(header).encode().replace(old, new)
    return struct.pack("<Q", len(raw)) + raw + data


def _tensors(count: int) -> bytes:
    """A safetensors body of `count` one-float tensors (the first two labels and logits)."""
    names = ["labels", "logits", *(f"t{i}" for i in range(count - 2))]
    return _st({name: np.zeros(1, np.float32) for name in names})


def _strict_cases() -> list[Case]:
    """Inputs are strict: integers are JSON integers (no true, "-1" or -1.0), text integers
    are ASCII digits, strings are valid Unicode (no lone surrogate), headers are bounded."""
    good = _v2([_t(), _t("logits")])
    surrogate = b'"\\ud800"'
    st_entry = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
    st_pair = {"labels": st_entry, "logits": {**st_entry, "data_offsets": [4, 8]}}
    big_int = b"1" + b"0" * 400
    return [
        # --- integers are JSON integers
        Case(
            "v1 dim true", SOFT, _soft(dim=True), 422, "dim must be a JSON integer; got true", JSON
        ),
        Case("v1 dim a numeric string", SOFT, _soft(dim="-1"), 422, "JSON integer", JSON),
        Case("v1 dim -1.0", SOFT, _soft(dim=-1.0), 422, "JSON integer; got -1.0", JSON),
        Case("v1 axis false", SOFT, _soft(axis=False), 422, "axis must be a JSON integer", JSON),
        Case(
            "v2 dim true",
            INFER,
            _v2([_t(), _t("logits")], parameters={"dim": True}),
            422,
            "dim must be a JSON integer; got true",
        ),
        Case(
            "v2 dim a numeric string",
            INFER,
            _v2([_t(), _t("logits")], parameters={"dim": "-1"}),
            422,
            "JSON integer",
        ),
        Case(
            "v2 dim -1.0",
            INFER,
            _v2([_t(), _t("logits")], parameters={"dim": -1.0}),
            422,
            "JSON integer; got -1.0",
        ),
        Case(
            "v2 label_smoothing true",
            INFER,
            _v2([_t(), _t("logits")], parameters={"label_smoothing": True}),
            422,
            "label_smoothing",
        ),
        Case(
            "v2 ignore_index a numeric string",
            INFER,
            _v2([_t(), _t("logits")], parameters={"ignore_index": "-100"}),
            422,
            "ignore_index must be a JSON integer",
        ),
        Case(
            "v2 reduction unknown",
            INFER,
            _v2([_t(), _t("logits")], parameters={"reduction": "avg"}),
            422,
            "reduction must be one of none, sum, mean",
        ),
        Case(
            "v1 label_smoothing a string",
            SOFT,
            _soft(label_smoothing="0.1"),
            422,
            "must be a JSON number",
            JSON,
        ),
        Case(
            "v2 axis a numeric string",
            INFER,
            _v2([_t(), _t("logits")], parameters={"axis": "0"}),
            422,
            "axis must be a JSON",
        ),
        Case(
            "v2 binary_data_size a float",
            INFER,
            _v2([_t(parameters={"binary_data_size": 8.0}, data=None), _t("logits")]),
            422,
            "binary_data_size must be a JSON integer; got 8.0",
        ),
        Case(
            "v2 binary_data_size a string",
            INFER,
            _v2([_t(parameters={"binary_data_size": "8"}, data=None), _t("logits")]),
            422,
            "binary_data_size must be a JSON integer",
        ),
        Case(
            "v2 binary_data_size true",
            INFER,
            _v2([_t(parameters={"binary_data_size": True}, data=None), _t("logits")]),
            422,
            "binary_data_size must be a JSON integer; got true",
        ),
        Case(
            "v2 binary_data_output a string",
            INFER,
            _v2([_t(), _t("logits")], parameters={"binary_data_output": "true"}),
            422,
            "must be a JSON boolean",
        ),
        Case(
            "v2 shape of numeric strings",
            INFER,
            _v2([_t(shape=["2"]), _t("logits")]),
            422,
            "shape.0 must be a JSON integer",
        ),
        Case(
            "v2 shape of floats",
            INFER,
            _v2([_t(shape=[2.0]), _t("logits")]),
            422,
            "JSON integer; got 2.0",
        ),
        Case(
            "v2 shape of a million strings",
            INFER,
            _v2([_t(shape=["x"] * 1_000_000), _t("logits")]),
            422,
            "outside arrays of numbers",
        ),
        Case(
            "v2 header length with a plus",
            INFER,
            good,
            400,
            "ASCII digits",
            _header_length(good, "+{}"),
        ),
        Case(
            "v2 header length with underscores",
            INFER,
            good,
            400,
            "ASCII digits",
            {"Inference-Header-Content-Length": "1_0"},
        ),
        Case(
            "v2 header length 8.0", INFER, good, 400, "ASCII digits", _header_length(good, "{}.0")
        ),
        Case(
            "v2 header length of 40 digits",
            INFER,
            good,
            400,
            "at most 18 digits",
            {"Inference-Header-Content-Length": "1" * 40},
        ),
        Case("st query dim with a plus", SOFT + "?dim=%2B1", _tensors(2), 422, "ASCII digits", ST),
        Case(
            "st query dim with underscores",
            SOFT + "?dim=-0_1",
            _tensors(2),
            422,
            "ASCII digits",
            ST,
        ),
        Case(
            "st query dim in Arabic-Indic digits",
            SOFT + "?dim=%D9%A1",
            _tensors(2),
            422,
            "ASCII digits",
            ST,
        ),
        Case("st query axis with spaces", SOFT + "?axis=+1+", _tensors(2), 422, "ASCII digits", ST),
        # --- strings are valid Unicode
        Case(
            "v1 name a lone surrogate",
            SOFT,
            _soft()[:-1] + b', "name": ' + surrogate + b"}",
            400,
            "JSON",
            JSON,
        ),
        Case(
            "v2 id a lone surrogate", INFER, b'{"id": ' + surrogate + b", " + good[1:], 400, "JSON"
        ),
        Case(
            "v2 id a lone surrogate, NaN data",
            INFER,
            _with_nan(b'{"id": ' + surrogate + b", " + good[1:]),
            400,
            "surrogate",
        ),
        Case(
            "v2 input name a lone surrogate, NaN data",
            INFER,
            _with_nan(good.replace(b'"labels"', surrogate)),
            400,
            "surrogate",
        ),
        Case(
            "v2 output name a lone surrogate, NaN data",
            INFER,
            _with_nan(good[:-1] + b', "outputs": [{"name": ' + surrogate + b"}]}"),
            400,
            "surrogate",
        ),
        Case(
            "v2 parameter key a lone surrogate, NaN data",
            INFER,
            _with_nan(good[:-1] + b', "parameters": {' + surrogate + b": 1}}"),
            400,
            "surrogate",
        ),
        Case(
            "v2 UTF-16 header, NaN data",
            INFER,
            _with_nan(good).decode().encode("utf-16"),
            400,
            "JSON",
        ),
        Case(
            "v2 401-digit integer",
            INFER,
            good.replace(b"[0.0, 1.0]", b"[0, " + big_int + b"]", 1),
            422,
            "cannot represent",
        ),
        Case(
            "v2 401-digit integer, NaN data",
            INFER,
            _with_nan(good.replace(b"[0.0, 1.0]", b"[0, " + big_int + b"]", 1)),
            422,
            "cannot represent",
        ),
        Case(
            "st tensor name a lone surrogate",
            SOFT,
            _safetensors_edited(
                {**st_pair, "X": {**st_entry, "data_offsets": [8, 12]}},
                bytes(12),
                b'"X"',
                surrogate,
            ),
            400,
            "valid Unicode",
            ST,
        ),
        Case(
            "st tensor name a UTF-8-encoded surrogate",
            SOFT,
            _safetensors_edited(
                {**st_pair, "X": {**st_entry, "data_offsets": [8, 12]}},
                bytes(12),
                b'"X"',
                b'"\xed\xa0\x80"',
            ),
            400,
            "UTF-8",
            ST,
        ),
        Case(
            "st metadata value a lone surrogate",
            SOFT,
            _safetensors_edited(
                {**st_pair, "__metadata__": {"k": "X"}}, bytes(8), b'"X"', surrogate
            ),
            400,
            "valid Unicode",
            ST,
        ),
        Case(
            "st metadata key a lone surrogate",
            SOFT,
            _safetensors_edited(
                {**st_pair, "__metadata__": {"X": "v"}}, bytes(8), b'"X"', surrogate
            ),
            400,
            "valid Unicode",
            ST,
        ),
        # --- headers are bounded
        Case("st 17 tensors", SOFT, _tensors(17), 422, "at most 16", ST),
        Case("st 15000 tensors", SOFT, _tensors(15_000), 422, "at most 16", ST),
        Case(
            "st header over 1 MiB",
            SOFT,
            _safetensors({**st_pair, "__metadata__": {"pad": "x" * (1 << 20)}}, bytes(8)),
            422,
            "limit of 1048576 bytes",
            ST,
        ),
        Case(
            "st dtype a list",
            SOFT,
            _safetensors({**st_pair, "logits": {**st_entry, "dtype": ["F32"]}}, bytes(8)),
            400,
            "unknown dtype",
            ST,
        ),
        Case(
            "v1 a thousand unknown members",
            SOFT,
            _soft(**{f"m{i}": 0 for i in range(1000)}),
            422,
            "and 997 more",
            JSON,
        ),
        Case(
            "v2 a thousand unknown members of an input",
            INFER,
            _v2([{**_t(), **{f"m{i}": 0 for i in range(1000)}}, _t("logits")]),
            422,
            "and 997 more",
        ),
    ]
