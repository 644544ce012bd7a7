"""JSON documents with numeric arrays decoded straight to numpy, against orjson + numpy.

The reference is what the service did before (orjson.loads, then np.array and a cast
through float64), made strict: numbers only, "NaN"-like strings, regular shapes. Random
documents are written token by token, with whitespace everywhere, numbers in every
spelling JSON allows and strings that hold brackets, quotes and commas around them.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import time
import tracemalloc
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.codecs import json_document, json_tensor
from service.codecs.json_document import JsonTensor, loads, parse_cost
from service.engine.types import MAX_RANK, DType
from service.errors import InvalidArgument, MalformedBody, TooLarge, ValueOutOfRange

NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
NUMBER = r"-?(0|[1-9][0-9]{0,30})(\.[0-9]{1,25})?([eE][+-]?[0-9]{1,3})?"
WS = st.text(alphabet=" \t\n\r", max_size=3)
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Refused(Exception):
    pass


# --- the reference ------------------------------------------------------------------


def reference(value: Any, dtype: DType) -> np.ndarray:
    """What orjson.loads + np.array(...).astype(dtype) gives, refusing what the service
    refuses (Refused): anything but numbers and "NaN"-like strings, jagged lists,
    fractions for integers, values the dtype cannot hold."""

    def check(v: Any) -> Any:
        if isinstance(v, list):
            return [check(x) for x in v]
        if isinstance(v, bool) or v is None or isinstance(v, dict):
            raise Refused
        if isinstance(v, str):
            if v not in NON_FINITE:
                raise Refused
            if not dtype.is_float:
                raise Refused
            return NON_FINITE[v]
        if isinstance(v, float) and not dtype.is_float:
            raise Refused
        return v

    plain = check(value)
    try:
        array = np.array(plain)
    except (ValueError, OverflowError):
        raise Refused from None
    if array.ndim > MAX_RANK or array.dtype.kind not in "iufO":
        raise Refused
    if not dtype.is_float:
        flat = [int(v) for v in array.reshape(-1).tolist()]
        info = np.iinfo(dtype.numpy)  # type: ignore[type-var]
        if any(not info.min <= v <= info.max for v in flat):
            raise Refused
        return np.array(flat, np.int64).astype(dtype.numpy).reshape(array.shape)
    try:
        wide = array.astype(np.float64)
    except OverflowError:
        raise Refused from None
    with np.errstate(over="ignore"):
        narrow = wide.astype(dtype.numpy)
    if (np.isinf(narrow) & np.isfinite(wide)).any():
        raise Refused
    return narrow


def bits(array: np.ndarray) -> np.ndarray:
    """The array's bytes as integers: equal bits, so -0.0 differs from 0.0."""
    return np.ascontiguousarray(array).view(f"u{array.dtype.itemsize}")


def ours(value: Any, dtype: DType) -> np.ndarray:
    try:
        return json_tensor.decode(value, dtype, "x")
    except InvalidArgument as exc:
        raise Refused from exc


MODES = ("small", "regex", "fast")


@contextlib.contextmanager
def reading(mode: str) -> Iterator[None]:
    """Documents read the way `mode` says, so that the random documents of each test
    exercise all three and compare them with the same reference: "small" as shipped
    (orjson first for small documents), "regex" the general way (a regular expression
    checks short arrays), "fast" the general way with numpy's check for every array,
    in blocks of a few bytes (what crosses from block to block)."""
    with pytest.MonkeyPatch.context() as patch:
        if mode != "small":
            patch.setattr(json_document, "SMALL_BODY", -1)
        if mode == "fast":
            patch.setattr(json_document, "FAST_MIN", 0)
            patch.setattr(json_document, "BLOCK", 24)
            patch.setattr(json_document, "FAST_PIECE", 8)
            patch.setattr(json_document, "SCAN_PIECE", 16)
        yield


def outcome(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except Refused:
        return Refused


# --- writing documents ----------------------------------------------------------------


@st.composite
def number_text(draw: st.DrawFn, integers: bool) -> str:
    """A JSON number in one of its spellings."""
    if integers:
        return draw(
            st.one_of(
                st.integers(-(2**70), 2**70).map(str),
                st.from_regex(r"-?(0|[1-9][0-9]{0,20})", fullmatch=True),
                st.sampled_from(["-0", "0", "9223372036854775807", "-9223372036854775808"]),
                st.sampled_from(["9223372036854775808", "2147483648", "-2147483649"]),
            )
        )
    value = draw(
        st.floats(allow_nan=False, allow_infinity=False, width=draw(st.sampled_from([16, 32, 64])))
    )
    digits = draw(st.integers(1, 25))
    return draw(
        st.one_of(
            st.just(repr(value)),
            st.just(f"{value:.{digits}g}"),
            st.just(f"{value:.{digits}e}"),
            st.just(f"{value:.{digits}E}".replace("E+", "E")),
            st.from_regex(NUMBER, fullmatch=True),
            st.sampled_from(
                [
                    "-0",
                    "-0.0",
                    "0e0",
                    "1E+05",
                    "5e-324",
                    "1e308",
                    "1.7976931348623157e308",
                    "65504",
                    "65520",
                ]
            ),
        )
    )


@st.composite
def tensor_tokens(draw: st.DrawFn, integers: bool, bare: bool) -> tuple[Any, Any]:
    """(nested lists of token texts, the same as Python values for the reference)."""
    rank = draw(st.integers(0, 4))
    shape = draw(st.lists(st.integers(0, 3), min_size=rank, max_size=rank))

    def token() -> tuple[str, Any]:
        if not integers and draw(st.integers(0, 9)) == 0:
            name = draw(st.sampled_from(sorted(NON_FINITE)))
            return (name if bare and draw(st.booleans()) else f'"{name}"'), name
        text = draw(number_text(integers))
        return text, text

    def build(dims: list[int]) -> tuple[Any, Any]:
        if not dims:
            return token()
        items = [build(dims[1:]) for _ in range(dims[0])]
        return [t for t, _ in items], [v for _, v in items]

    return build(shape)


def write(tokens: Any, ws: Any) -> str:
    if isinstance(tokens, list):
        inner = ",".join(f"{ws()}{write(t, ws)}{ws()}" for t in tokens)
        return f"[{inner}{ws() if not tokens else ''}]"
    return str(tokens)


def python_value(values: Any) -> Any:
    """Token texts as orjson would read them (Decimal for fractions: exact)."""
    if isinstance(values, list):
        return [python_value(v) for v in values]
    if values in NON_FINITE:
        return values
    if any(c in values for c in ".eE"):
        number = float(Decimal(values))  # correctly rounded; orjson refuses infinity
        return "beyond float64" if math.isinf(number) else number
    return int(values)


# json.dumps escapes quotes, backslashes and control characters, and writes the rest
# as \uXXXX (surrogate pairs beyond the BMP)
STRINGS = st.text(
    alphabet=st.sampled_from(list('[]{},:"\\ab \t\n/\u00e9\u4e2d\U0001f600')), max_size=8
)


@st.composite
def skeleton(draw: st.DrawFn) -> Any:
    """Members around the tensor: strings that hold brackets, quotes and commas, numbers,
    literals, nested objects, arrays of strings, empty arrays."""
    leaf = st.one_of(
        STRINGS,
        st.integers(-(10**6), 10**6),
        st.floats(allow_nan=False, allow_infinity=False),
        st.sampled_from([True, False, None]),
        st.lists(STRINGS, max_size=3),
        st.just([]),
        st.just([[]]),
    )
    return draw(
        st.dictionaries(
            STRINGS,
            st.recursive(leaf, lambda c: st.dictionaries(STRINGS, c, max_size=3), max_leaves=6),
            max_size=4,
        )
    )


def dumps_spaced(value: Any, ws: Any) -> str:
    """JSON of a skeleton value with random whitespace (strings escaped by json)."""
    if isinstance(value, dict):
        members = ",".join(
            f"{ws()}{json.dumps(k)}{ws()}:{ws()}{dumps_spaced(v, ws)}{ws()}"
            for k, v in value.items()
        )
        return "{" + members + "}"
    if isinstance(value, list):
        return "[" + ",".join(f"{ws()}{dumps_spaced(v, ws)}{ws()}" for v in value) + "]"
    return json.dumps(value)


# --- properties: valid documents -------------------------------------------------------


@PROPERTY
@given(
    data=st.data(),
    dtype=st.sampled_from(list(DType)),
    where=st.sampled_from(["top", "member", "nested", "in-array"]),
    mode=st.sampled_from(MODES),
)
def test_random_documents_decode_as_orjson_and_numpy_do(
    data: st.DataObject, dtype: DType, where: str, mode: str
) -> None:
    ws = lambda: data.draw(WS)  # noqa: E731
    tokens, values = data.draw(
        tensor_tokens(integers=not dtype.is_float and data.draw(st.integers(0, 5)) > 0, bare=False)
    )
    text = write(tokens, ws)
    extra = data.draw(skeleton())
    extra.pop("t", None)
    others = dumps_spaced(extra, ws)[1:-1]
    sep = "," if extra else ""
    document = {
        "top": f"{ws()}{text}{ws()}",
        "member": f'{{{others}{sep}{ws()}"t"{ws()}:{ws()}{text}}}',
        "nested": f'{{"o":{{{others}{sep}"t":{text}}},"outputs":["loss","grad_logits"]}}',
        "in-array": f'[{{"t":{text}}},{{{others}}}]',
    }[where].encode()
    try:
        parsed = orjson.loads(document)
    except orjson.JSONDecodeError:
        parsed = None  # a number beyond float64, which orjson refuses
        if not isinstance(tokens, list):  # a lone number is no tensor: orjson reads it
            with pytest.raises(MalformedBody, match="infinity"):
                loads(document, bare_non_finite=False)
            return
    with reading(mode):
        mine = loads(document, bare_non_finite=False)
    path = {"top": [], "member": ["t"], "nested": ["o", "t"], "in-array": [0, "t"]}[where]
    value_mine, value_theirs = mine, parsed
    for key in path:
        value_mine = value_mine[key]
        value_theirs = value_theirs[key] if parsed is not None else None
    if parsed is not None:
        assert _without(mine, path) == _without(parsed, path)
        theirs_value = value_theirs
    else:
        theirs_value = python_value(values)
    if isinstance(value_mine, JsonTensor):
        expected_shape = (
            np.array(python_value(values), dtype=object).shape if values != [] else (0,)
        )
        if value_mine.problem is None:
            assert value_mine.shape == expected_shape
    want = outcome(reference, theirs_value, dtype)
    with reading(mode):
        got = outcome(ours, value_mine, dtype)
    if want is Refused or got is Refused:
        assert want is got, (document, want, got)
    else:
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_array_equal(bits(got), bits(want))


def _without(document: Any, path: list[Any]) -> Any:
    """`document` with the value at `path` replaced by a marker (to compare the rest)."""
    if not path:
        return "<tensor>"
    copy = list(document) if isinstance(document, list) else dict(document)
    copy[path[0]] = _without(document[path[0]], path[1:])
    return copy


@PROPERTY
@given(
    data=st.data(),
    dtype=st.sampled_from([DType.float16, DType.float32, DType.float64]),
    mode=st.sampled_from(MODES),
)
def test_bare_non_finite_literals_when_asked(data: st.DataObject, dtype: DType, mode: str) -> None:
    tokens, values = data.draw(tensor_tokens(integers=False, bare=True))
    if not isinstance(tokens, list):
        return
    text = write(tokens, lambda: data.draw(WS))
    document = f'{{"data": {text}}}'.encode()
    with reading(mode):
        got = outcome(ours, loads(document, bare_non_finite=True)["data"], dtype)
        want = outcome(reference, python_value(values), dtype)
        if want is Refused or got is Refused:
            assert want is got
        else:
            np.testing.assert_array_equal(bits(got), bits(want))
        if any(token in NON_FINITE for token in _flat(tokens)):  # a bare literal
            with pytest.raises(MalformedBody, match="JSON"):
                loads(document, bare_non_finite=False)


def _flat(nested: Any) -> list[Any]:
    if isinstance(nested, list):
        return [x for item in nested for x in _flat(item)]
    return [nested]


NESTED = st.recursive(
    st.integers(-3, 3) | st.sampled_from([1.5, "NaN"]),
    lambda inner: st.lists(inner, max_size=3),
    max_leaves=12,
)


@PROPERTY
@given(value=st.lists(NESTED, max_size=4), spaced=st.booleans(), mode=st.sampled_from(MODES))
def test_ragged_lists_are_refused_as_numpy_refuses_them(
    value: list[Any], spaced: bool, mode: str
) -> None:
    body = json.dumps({"x": value}, separators=(", ", ": ") if spaced else (",", ":")).encode()
    with reading(mode):
        loaded = loads(body, bare_non_finite=False)["x"]
    for dtype in (DType.float64, DType.int64):
        want = outcome(reference, value, dtype)
        with reading(mode):
            got = outcome(ours, loaded, dtype)
        if want is Refused or got is Refused:
            assert want is got, (body, want, got)
        else:
            assert got.shape == want.shape
            np.testing.assert_array_equal(got, want)


# --- properties: hostile documents ----------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid document with a few bytes inserted, deleted or replaced."""
    tokens, _ = draw(tensor_tokens(integers=False, bare=False))
    text = write(tokens, lambda: draw(WS))
    document = bytearray(
        f'{{"name": "a[\\"1,2\\"]", "labels": {text}, "outputs": ["loss"]}}'.encode()
    )
    alphabet = st.sampled_from(list(b'[]{},:"\\0123456789-+.eE ntfrueal\t\x00\xff\xc3'))
    first = document.index(b"[")  # most mutations fall in the tensor
    for _ in range(draw(st.integers(1, 3))):
        inside = draw(st.integers(0, 4)) > 0
        at = draw(
            st.integers(first, first + len(text)) if inside else st.integers(0, len(document))
        )
        at = min(at, len(document))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        if action == "insert":
            document[at:at] = bytes([draw(alphabet)])
        elif at < len(document):
            if action == "delete":
                del document[at]
            else:
                document[at] = draw(alphabet)
    return bytes(document)


def _decode_all(document: Any, dtype: DType) -> Any:
    """Every JsonTensor of a loaded document decoded (Refused if one is refused)."""
    if isinstance(document, JsonTensor):
        return ours(document, dtype).tolist()
    if isinstance(document, dict):
        return {k: _decode_all(v, dtype) for k, v in document.items()}
    if isinstance(document, list):
        return [_decode_all(v, dtype) for v in document]
    return document


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=mutated(), mode=st.sampled_from(MODES))
def test_hostile_documents_are_refused_as_orjson_refuses_them(document: bytes, mode: str) -> None:
    with reading(mode):
        _hostile(document)


@pytest.mark.parametrize(
    "string",
    [b'"\\ud800"', b'"\\udc00\\ud800"', b'"-Infinity\xff"', b'"\xed\xa0\x80"', b'"\xc0\xaf"'],
    ids=["lone-high-escape", "reversed-pair", "invalid-byte", "surrogate-bytes", "overlong"],
)
@pytest.mark.parametrize("mode", MODES)
def test_a_string_orjson_refuses_in_a_tensor_is_400(string: bytes, mode: str) -> None:
    """Found by the test above: such a string among numbers was a 422 (not a number)
    where orjson, and so the service elsewhere, says 400 (not JSON)."""
    document = b'{"name": "x", "labels": [[0.5, ' + string + b', 1.0]], "outputs": ["loss"]}'
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(document)
    with reading(mode):
        _hostile(document)
    for fine in (b'"\\ud83d\\ude00"', '"é😀"'.encode(), b'"\\\\ud800"'):
        orjson.loads(fine)
        with reading(mode), pytest.raises(Refused):  # a string, not a number: 422
            _decode_all(loads(document.replace(string, fine), bare_non_finite=False), DType.float64)


def _hostile(document: bytes) -> None:
    try:
        theirs = orjson.loads(document)
    except orjson.JSONDecodeError as exc:
        if "infinity" in str(exc):
            return  # a number beyond float64: orjson says 400, the service 422
        with pytest.raises(MalformedBody):
            _decode_all(loads(document, bare_non_finite=False), DType.float64)
        return
    mine = outcome(_decode_all, loads(document, bare_non_finite=False), DType.float64)

    def strict(value: Any, top: bool = True) -> Any:
        """orjson's document with each member's numeric array through the reference."""
        if isinstance(value, dict):
            return {k: strict(v, True) for k, v in value.items()}
        if isinstance(value, list) and top and _numeric(value):
            return reference(value, DType.float64).tolist()
        if isinstance(value, list):
            return [strict(v, False) for v in value]
        return value

    want = outcome(strict, theirs)
    if want is Refused or mine is Refused:
        assert want is mine, (document, want, mine)
    else:
        assert json.dumps(mine, allow_nan=True) == json.dumps(want, allow_nan=True)


@PROPERTY
@given(
    data=st.data(),
    junk=st.lists(st.sampled_from(list(' \t,[]-+.eE0"N')), min_size=1, max_size=2).map("".join),
    mode=st.sampled_from(MODES),
)
def test_bytes_put_among_numbers_break_them_as_orjson_says(
    data: st.DataObject, junk: str, mode: str
) -> None:
    numbers = data.draw(st.lists(number_text(integers=False), min_size=1, max_size=12))
    i = data.draw(st.integers(0, len(numbers) - 1))
    at = data.draw(st.integers(0, len(numbers[i])))
    numbers[i] = numbers[i][:at] + junk + numbers[i][at:]
    sep = data.draw(st.sampled_from([",", ", ", " ,"]))
    body = ("[" + sep.join(numbers) + "]").encode()
    with reading(mode):
        _hostile(body)


def _numeric(value: list[Any]) -> bool:
    """What the service takes for a tensor: no object inside, and a number or a
    non-finite string (or another scalar that is no string) somewhere."""
    flat: list[Any] = []
    stack: list[Any] = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, list):
            stack.extend(v)
        else:
            flat.append(v)
    if any(isinstance(v, dict) for v in flat):
        return False
    return any(not isinstance(v, str) or v in NON_FINITE for v in flat)


@pytest.mark.parametrize(
    ("body", "error", "message"),
    [
        (b'{"labels": [1, 2', MalformedBody, "not closed"),
        (b'{"labels": [1, 2]]}', MalformedBody, "JSON"),
        (b'{"labels": [[1, 2]}', MalformedBody, "JSON"),
        (b'{"labels": [1, 2,]}', MalformedBody, "JSON"),
        (b'{"labels": [,1]}', MalformedBody, "JSON"),
        (b'{"labels": [1,,2]}', MalformedBody, "JSON"),
        (b'{"labels": [01]}', MalformedBody, "JSON"),
        (b'{"labels": [-01]}', MalformedBody, "JSON"),
        (b'{"labels": [+1]}', MalformedBody, "JSON"),
        (b'{"labels": [1.]}', MalformedBody, "JSON"),
        (b'{"labels": [.5]}', MalformedBody, "JSON"),
        (b'{"labels": [1e]}', MalformedBody, "JSON"),
        (b'{"labels": [1.2.3]}', MalformedBody, "JSON"),
        (b'{"labels": [1e2e3]}', MalformedBody, "JSON"),
        (b'{"labels": [0x10]}', MalformedBody, "JSON"),
        (b'{"labels": [1_0]}', MalformedBody, "JSON"),
        (b'{"labels": [1 2]}', MalformedBody, "JSON"),
        (b'{"labels": [1 .5]}', MalformedBody, "JSON"),
        (b'{"labels": [1. 5]}', MalformedBody, "JSON"),
        (b'{"labels": [- 1]}', MalformedBody, "JSON"),
        (b'{"labels": [1e 5]}', MalformedBody, "JSON"),
        (b'{"labels": [[1] [2]]}', MalformedBody, "JSON"),
        (b'{"labels": [[1],,[2]]}', MalformedBody, "JSON"),
        (b'{"labels": [[1,]]}', MalformedBody, "JSON"),
        (b'{"labels": [ , ]}', MalformedBody, "JSON"),
        (b'{"labels": ["NaN" 1]}', MalformedBody, "JSON"),
        (b'{"labels": ["NaN"1]}', MalformedBody, "JSON"),
        (b'{"labels": [1"NaN"]}', MalformedBody, "JSON"),
        (b'{"labels": [-"NaN"]}', MalformedBody, "JSON"),
        (b'{"labels": [NaN]}', MalformedBody, '"NaN"'),
        (b'{"labels": [Infinity, 1]}', MalformedBody, '"Infinity"'),
        (b'{"labels": [-Infinity]}', MalformedBody, "JSON"),
        (b'{"labels": [nan]}', MalformedBody, "JSON"),
        (b'{"labels": [\xd9\xa1]}', MalformedBody, "JSON"),  # Arabic-Indic one
        (b'{"labels": [\xef\xbc\x91]}', MalformedBody, "JSON"),  # fullwidth one
        (b'{"labels": [1]} x', MalformedBody, "JSON"),
        (b'{"labels": [1]}}', MalformedBody, "JSON"),
        (b'{"labels": [1], "name": "\\ud800"}', MalformedBody, "JSON"),
        (b'{"labels": [1], "name": "a\x01"}', MalformedBody, "JSON"),
        (b'{"labels": [1], "name": "abc}', MalformedBody, "not terminated"),
        (b'{"labels": [1], \\"name": 1}', MalformedBody, "JSON"),
        (b"", MalformedBody, "JSON"),
        (b"   ", MalformedBody, "JSON"),
    ],
)
@pytest.mark.parametrize("mode", MODES)
def test_malformed_documents(body: bytes, error: type[Exception], message: str, mode: str) -> None:
    with reading(mode), pytest.raises(error, match=message):
        _decode_all(loads(body, bare_non_finite=False), DType.float32)


@pytest.mark.parametrize(
    ("tensor", "dtype", "error", "message"),
    [
        (b"[1, true]", DType.int64, InvalidArgument, "booleans"),
        (b"[[false]]", DType.float32, InvalidArgument, "booleans"),
        (b"[1, null]", DType.float32, InvalidArgument, "null"),
        (b'[1, "x"]', DType.float32, InvalidArgument, "'x'"),
        (b'[1, "1.5"]', DType.float32, InvalidArgument, "'1.5'"),
        (b'[1, "-1_0"]', DType.float32, InvalidArgument, "'-1_0'"),
        (b'[1, "\\u0661"]', DType.float32, InvalidArgument, "'\u0661'"),
        (b'[1, "\\uff11"]', DType.float32, InvalidArgument, "'\uff11'"),
        (b'[1, "inf"]', DType.float32, InvalidArgument, "'inf'"),
        (b'["NaN ", 1]', DType.float32, InvalidArgument, "'NaN '"),
        (b'[1, "a,[b]\\"c"]', DType.float32, InvalidArgument, "holds"),
        (b"[[1, 2], [3]]", DType.float32, InvalidArgument, "jagged"),
        (b"[1, [2]]", DType.float32, InvalidArgument, "jagged"),
        (b"[[1], []]", DType.float32, InvalidArgument, "jagged"),
        (b"[[1, 2], 3]", DType.float32, InvalidArgument, "jagged"),
        (b"[[1, 2, 3], [4]]", DType.float32, InvalidArgument, "jagged"),  # counts as (2, 2)
        (b"[[[1, 2], [3]], [[4], [5, 6]]]", DType.float32, InvalidArgument, "jagged"),
        (b"[" * 33 + b"1" + b"]" * 33, DType.float32, InvalidArgument, "deeper than 32"),
        (b"[" * 5000 + b"1" + b"]" * 5000, DType.float32, InvalidArgument, "deeper than 32"),
        (b"[" * 300 + b"1" + b"]" * 300, DType.float32, InvalidArgument, "deeper than 32"),
        (b"[" * 1000 + b"1" + b"]" * 1000, DType.float32, InvalidArgument, "deeper than 32"),
        (b"[1.5, 2]", DType.int64, InvalidArgument, "integers.*'1.5'"),
        (b"[1e0]", DType.int32, InvalidArgument, "integers"),
        (b'["NaN"]', DType.int32, InvalidArgument, "integers"),
        (b"[2147483648]", DType.int32, ValueOutOfRange, "int32"),
        (b"[-2147483649]", DType.int32, ValueOutOfRange, "int32"),
        (b"[9223372036854775808]", DType.int64, ValueOutOfRange, "int64"),
        (b"[-9223372036854775809]", DType.int64, ValueOutOfRange, "int64"),
        (b"[1" + b"0" * 25 + b"]", DType.int64, ValueOutOfRange, "int64"),
        (b"[1e6]", DType.float16, ValueOutOfRange, "cannot represent.*wider"),
        (b"[1e39]", DType.float32, ValueOutOfRange, "cannot represent"),
        (b"[1e39]", DType.bfloat16, ValueOutOfRange, "cannot represent"),
        (b"[1e400]", DType.float64, ValueOutOfRange, "cannot represent"),
        (b'["Infinity", 1e400]', DType.float64, ValueOutOfRange, "'1e400'"),
        (b"[-" + b"1" * 401 + b"]", DType.float64, ValueOutOfRange, "cannot represent"),
    ],
)
@pytest.mark.parametrize("mode", MODES)
def test_documents_that_hold_no_tensor(
    tensor: bytes, dtype: DType, error: type[Exception], message: str, mode: str
) -> None:
    with reading(mode):
        value = loads(b'{"labels": ' + tensor + b"}", bare_non_finite=False)["labels"]
    assert isinstance(value, JsonTensor)
    with reading(mode), pytest.raises(error, match=message):
        value.decode(dtype, "labels")


def test_integers_at_the_edges_of_int64() -> None:
    value = loads(b'{"l": [9223372036854775807, -9223372036854775808, -0]}', bare_non_finite=False)
    assert value["l"].decode(DType.int64, "l").tolist() == [2**63 - 1, -(2**63), 0]


def test_the_skeleton_is_what_orjson_reads() -> None:
    body = (
        b'{"name": "a [1, 2] \\"b\\" {c: d}", "outputs": ["loss", "grad_logits"], '
        b'"empty": [], "nested": [[]], "o": {"k": [1, 2], "s": ["x"]}, "n": 3, '
        b'"f": 1.5, "t": true, "z": null, "a\\u0000b": "\\u0000", "list": [{"data": [[1]]}]}'
    )
    document = loads(body, bare_non_finite=False)
    expected = orjson.loads(body)
    assert isinstance(document["o"]["k"], JsonTensor) and document["o"]["k"].shape == (2,)
    assert isinstance(document["list"][0]["data"], JsonTensor)
    document["o"]["k"] = [1, 2]
    document["list"][0]["data"] = [[1]]
    assert document == expected


def test_a_numeric_document_is_one_tensor() -> None:
    value = loads(b" [[1, 2], [3, 4]] ", bare_non_finite=False)
    assert isinstance(value, JsonTensor) and value.shape == (2, 2)
    assert value.decode(DType.int32, "x").tolist() == [[1, 2], [3, 4]]


def test_shape_is_known_before_any_number_is_converted() -> None:
    value = loads(b'{"l": [[1, 2, 3], [4, 5, 6]]}', bare_non_finite=False)["l"]
    assert value.shape == (2, 3) and value.size == 6
    assert value.nbytes(DType.float64) == 48
    assert value.decode_cost(DType.float64) >= 48


def test_long_arrays_take_the_fast_check_and_agree_with_the_slow_one(
    rng: np.random.Generator,
) -> None:
    numbers = rng.standard_normal(5000) * 10.0 ** rng.integers(-30, 30, 5000)
    numbers[::7] = 0.0
    texts = [repr(float(x)) for x in numbers] + ['"NaN"', '"-Infinity"', "-0", "0.001", "1E+05"]
    text = ("[" + ", ".join(texts) + "]").encode()
    assert len(text) > json_document.FAST_MIN
    fast = json_document._Structure()
    assert json_document._fast_check(memoryview(text), 0, len(text), False, fast) == len(texts)
    slow = json_document._Structure()
    assert json_document._structure_of(memoryview(text), 0, len(text), slow) == len(texts)
    assert fast.shape(len(texts)) == slow.shape(len(texts)) == (len(texts),)
    got = loads(text, bare_non_finite=False).decode(DType.float64, "x")
    want = reference(orjson.loads(text), DType.float64)
    np.testing.assert_array_equal(bits(got), bits(want))


@pytest.mark.parametrize(
    "bad",
    [
        b"1.2.3",
        b"1e5e5",
        b"1e5.5",
        b"1e+5.5",
        b"-05",
        b"00",
        b"+1",
        b".5",
        b"5.",
        b"1 2",
        b"- 1",
        b"1 .5",
        b"1e",
        b"--1",
        b"true",
        b'"x"',
        b"NaN",
        b"[1]2",
        b"1[",
        b",]",
        b"[,",
    ],
)
def test_the_fast_check_sends_what_is_not_plainly_numbers_to_the_regular_expression(
    bad: bytes,
) -> None:
    text = b"[" + b"1.5, " * 2000 + bad + b", 2]"
    assert (
        json_document._fast_check(memoryview(text), 0, len(text), False, json_document._Structure())
        is None
    )


# --- bounds -------------------------------------------------------------------------


def test_the_skeleton_is_bounded() -> None:
    strings = b'{"outputs": [' + b",".join([b'"loss"'] * 60000) + b"]}"
    with pytest.raises(TooLarge, match="outside arrays of numbers"):
        loads(strings, bare_non_finite=False)
    objects = b'{"inputs": [' + b",".join([b"{}"] * 200000) + b"]}"
    with pytest.raises(TooLarge):
        loads(objects, bare_non_finite=False)
    escapes = b'{"name": "' + b"\\n" * 300000 + b'", "labels": [1]}'
    with pytest.raises(TooLarge):
        loads(escapes, bare_non_finite=False)


def _traced(fn: Any) -> tuple[Any, int]:
    gc.collect()
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_50_mb_document_decodes_in_little_more_than_its_output(rng: np.random.Generator) -> None:
    logits = rng.standard_normal((2300, 2000)).astype(np.float32)
    body = orjson.dumps(
        {"labels": [[1.0, 0.0]], "logits": logits, "name": "big"}, option=orjson.OPT_SERIALIZE_NUMPY
    )
    assert 45e6 < len(body) < 60e6
    document, loads_peak = _traced(lambda: loads(body, bare_non_finite=False))
    assert document["logits"].shape == (2300, 2000)
    assert loads_peak <= parse_cost(len(body)) <= 0.5 * len(body)
    array, decode_peak = _traced(lambda: document["logits"].decode(DType.float32, "logits"))
    np.testing.assert_array_equal(array, logits)
    # the output (18.4 MB, 0.37 of the body) and block-sized temporaries
    print(f"body {len(body)}, loads peak {loads_peak}, decode peak {decode_peak}")
    assert decode_peak <= document["logits"].decode_cost(DType.float32) <= 0.45 * len(body)


@pytest.mark.parametrize("kind", ["bytearray", "numpy memoryview"])
def test_bodies_are_read_in_place(kind: str, rng: np.random.Generator) -> None:
    text = orjson.dumps(
        {"logits": rng.standard_normal((400, 1000)).astype(np.float32)},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    if kind == "bytearray":
        body: Any = bytearray(text)
    else:
        buffer = np.empty(len(text), np.uint8)
        buffer[:] = np.frombuffer(text, np.uint8)
        body = memoryview(buffer.data)
    document, peak = _traced(lambda: loads(body, bare_non_finite=False))
    assert peak < len(text) / 2  # no copy of the body
    array = document["logits"].decode(DType.float32, "logits")
    np.testing.assert_array_equal(
        array, loads(text, bare_non_finite=False)["logits"].decode(DType.float32, "x")
    )


@pytest.mark.parametrize("mode", ["small", "regex"])
@pytest.mark.parametrize("filler", [b"[[]]", b"{}", b'"a"', b"[]", b'{"a":[1]}', b'{"a":1}', b"1"])
def test_parse_cost_bounds_the_worst_documents(mode: str, filler: bytes) -> None:
    """Documents just under SKELETON_MAX (= SMALL_BODY: read by orjson first, or the
    general way) of what makes the most Python objects per byte: nested lists, dicts,
    strings, tensors."""
    size = json_document.SKELETON_MAX
    count = size // (len(filler) + 1)
    with reading(mode):
        while True:
            body = b"[" + b",".join([filler] * count) + b"]"
            try:
                _, peak = _traced(lambda body=body: loads(body, bare_non_finite=False))
                break
            except TooLarge:  # placeholders are longer than [1]
                count = count * 9 // 10
    assert count > size // 20
    assert peak <= parse_cost(len(body))


def test_numbers_beside_a_long_numeric_string_are_refused_quickly_and_small() -> None:
    # np.array of this made a fixed-width unicode array of 50001 x 600000 characters
    body = b'{"labels": [' + b"1.0, " * 50000 + b'"' + b"9" * 600000 + b'"]}'
    start = time.perf_counter()
    document, peak = _traced(lambda: loads(body, bare_non_finite=False))
    with pytest.raises(InvalidArgument, match="holds '9999"):
        document["labels"].decode(DType.float32, "labels")
    assert time.perf_counter() - start < 2.0
    assert peak <= 16 * json_document.BLOCK  # 4 MiB: block-sized temporaries


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.floats(allow_nan=False, allow_infinity=False).map(repr),
            st.floats(allow_nan=False, allow_infinity=False, width=32).map(
                lambda v: format(v, ".9g")
            ),
            st.integers(-(2**70), 2**70).map(str),
            st.sampled_from(["-0", "0", "-0.0", "1e308", "4.9e-324", "1E-5", "-2.5e+3"]),
        ),
        min_size=1,
        max_size=200,
    )
)
def test_orjson_pieces_read_numbers_as_np_fromstring_does(numbers: list[str]) -> None:
    """The float pieces' fast reader (orjson) against the one it replaced (np.fromstring,
    after integer -0 is written 0, as orjson reads it), bit for bit."""
    text = ",".join(numbers).encode()
    fast = json_document._floats(text)
    slow = json_document._numbers(json_document._positive_zeros(text), np.float64)
    np.testing.assert_array_equal(fast.view(np.int64), slow.view(np.int64))
