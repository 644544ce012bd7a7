"""JSON documents whose numeric arrays are decoded straight to numpy.

`loads(body)` returns what `orjson.loads(body)` would, except that every array of
numbers that is the value of an object member (or the whole document) comes back as a
`JsonTensor`: its grammar checked and its shape known, its numbers not converted yet.
Everything else, the *skeleton* (keys, objects, small strings, arrays of strings such
as ``"outputs": ["loss"]``), is parsed by orjson once each tensor's bytes are cut out
and replaced by a placeholder string. The skeleton is bounded (`SKELETON_MAX`), so the
Python objects made for a document are too, whatever its size.

A document of at most SMALL_BODY bytes is read by orjson first, each array of plain
numbers then held by numpy (3 to 10x quicker for small requests; its Python objects
are bounded as a skeleton's are); anything unusual in it (strings or literals among
numbers, jagged or deep arrays, what orjson refuses) sends it the general way, where
no Python code runs per byte or per number:

1. Lexing. A real quote is one not preceded by an odd run of backslashes; inside-string
   is the running parity of real quotes (numpy xor-accumulate, in the pieces of
   `SCAN_PIECE` bytes that hold quotes). A backslash outside a string is refused,
   which makes this lexing exact.
2. Events: ``{``, ``}`` and ``:`` outside strings (all in the skeleton, so their number
   is bounded), each with the last ``]`` outside strings before it.
3. Tensors: an array right after a ``:`` (or the whole document) whose next event is not
   ``{`` holds no object; it ends at the last ``]`` before that event. One that holds
   neither a number nor a "NaN"-like string (``[]``, ``["loss"]``) stays in the skeleton.
4. Grammar. A long array goes through a numpy check first: bytes become classes
   (`bytes.translate`), digits after a digit and blanks not ending a token are dropped,
   and every four symbols in a row are looked up in a table made from the grammar. An
   array that fails it, or a short one, is matched by a regular expression (possessive
   quantifiers: linear), which also tells a JSON error (400) from JSON that holds no
   numbers (true, null, "x": 422 when decoded).
5. Shape, from brackets and commas alone (`bytes.translate`): the rank is the run of
   opening brackets, each dimension follows from how many commas come after how many
   closing brackets, and the brackets and commas are then compared, piece by piece,
   with those an array of that shape has (jagged arrays differ).
6. `JsonTensor.decode` converts pieces of whole numbers with `np.fromstring` once
   brackets, quotes and blanks are deleted: correctly rounded to float64, as orjson
   reads numbers, then cast, as ``np.array(orjson.loads(...)).astype(dtype)`` did.

Memory: `loads` holds, beyond the body (used in place: bytes, bytearray or memoryview),
block-sized temporaries and the skeleton with its Python objects (`parse_cost`);
`decode` the output and block-sized temporaries (`JsonTensor.decode_cost`).
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Callable, Iterator
from typing import Any, Final, NamedTuple

import ml_dtypes
import numpy as np
import orjson

from service.codecs.text import quote
from service.engine.types import MAX_RANK, DType
from service.errors import InvalidArgument, MalformedBody, TooLarge, ValueOutOfRange

Body = bytes | bytearray | memoryview

#: bytes handled per numpy step; every temporary of `loads` and `decode` is a small
#: multiple of it
BLOCK: Final = 1 << 18
#: most bytes of JSON outside tensors (keys, strings, objects; a tensor counts as its
#: placeholder, ~10 bytes): far more than any request's names and parameters
SKELETON_MAX: Final = 1 << 16
#: peak bytes held per byte of skeleton: orjson's Python objects (measured at most 38,
#: for ``[[[]],...]``), JsonTensor objects (~200 bytes per tensor, one per 9 bytes or
#: more), and int64 positions of events, backslashes and ':' (32)
SKELETON_COST: Final = 96
#: peak bytes of temporaries per byte of a block while scanning and checking
#: (measured at most 13)
SCAN_TEMPORARIES: Final = 16
#: peak bytes of temporaries per byte of a block while converting (measured at most
#: 10: a float64 per number, numbers taking 2 bytes or more, and the text)
DECODE_TEMPORARIES: Final = 12
#: fixed bytes: small arrays and objects
FIXED: Final = 1 << 16
#: documents up to this size are read by orjson first (its Python objects take at
#: most SKELETON_COST bytes per byte, as a skeleton's do), 3 to 10x quicker for them
SMALL_BODY: Final = SKELETON_MAX
#: bytes the lexer looks at a time: a piece without quotes costs a few memchr calls
SCAN_PIECE: Final = 1 << 14

NON_FINITE = ("NaN", "Infinity", "-Infinity")
INTEGER_DIGITS = 18  # every integer of at most this many digits fits int64

_WS = rb"[ \t\n\r]*+"
_NUMBER = rb"-?+(?:0|[1-9][0-9]*+)(?:\.[0-9]++)?+(?:[eE][+-]?+[0-9]++)?+"
# A string as orjson reads one: UTF-8 (no surrogate code point), escapes, and a UTF-16
# surrogate escaped only as a high-low pair.
_UTF8 = (
    rb"[\x20\x21\x23-\x5b\x5d-\x7f]++|[\xc2-\xdf][\x80-\xbf]|\xe0[\xa0-\xbf][\x80-\xbf]"
    rb"|[\xe1-\xec\xee\xef][\x80-\xbf]{2}|\xed[\x80-\x9f][\x80-\xbf]"
    rb"|\xf0[\x90-\xbf][\x80-\xbf]{2}|[\xf1-\xf3][\x80-\xbf]{3}|\xf4[\x80-\x8f][\x80-\xbf]{2}"
)
_ESCAPE = (
    rb'\\(?:["\\/bfnrt]|u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}'
    rb"|u(?![dD][89a-fA-F])[0-9a-fA-F]{4})"
)
_STRING = rb'"(?:' + _UTF8 + rb"|" + _ESCAPE + rb')*+"'
_WORDS = rb"true|false|null"
_BARE = rb"NaN|-?Infinity"


def _array_pattern(scalar: bytes) -> re.Pattern[bytes]:
    """A JSON array of scalars and arrays (whether brackets balance is checked apart).

    Which symbol may follow which is what this checks: after ``[`` a value or ``]``;
    after a value ``,`` or ``]``; after ``,`` a value.
    """
    item = rb"(?:" + scalar + rb"|(?:\[" + _WS + rb")++(?:" + scalar + rb"|\]))"
    closes = _WS + rb"(?:\]" + _WS + rb")*+"
    body = item + rb"(?:" + closes + rb"," + _WS + item + rb")*+" + closes
    return re.compile(rb"\[" + _WS + rb"(?:\]|" + body + rb")")


_ARRAY = {
    False: _array_pattern(rb"(?:" + _NUMBER + rb"|" + _STRING + rb"|" + _WORDS + rb")"),
    True: _array_pattern(
        rb"(?:" + _NUMBER + rb"|" + _STRING + rb"|" + _WORDS + rb"|" + _BARE + rb")"
    ),
}
# The first value that is no number: true, false, null, or a string other than "NaN",
# "Infinity", "-Infinity" (in an array whose grammar is already checked).
_PROBLEM = re.compile(
    rb'(?:[^"tfnNI]++|"(?:NaN|-?Infinity)"|NaN|Infinity)*+(true|false|null|"(?:[^"\\]++|\\.)*+")',
    re.S,
)
_MAYBE_PROBLEM = re.compile(rb'["tfn]')
# An array of nothing but strings other than the non-finite spellings, or empty ones.
_NO_NUMBER = re.compile(
    rb'(?:[\[\], \t\n\r]++|"(?!(?:NaN|-?Infinity)")(?:[^"\\]++|\\.)*+")*+', re.S
)
_WS_RE = re.compile(_WS)
_NUL_ESCAPE = re.compile(rb"\\u0000")
_NOT_INTEGER = re.compile(rb'[.eE"NI]')
_LONG_INTEGER = re.compile(rb"[0-9]{%d}" % (INTEGER_DIGITS + 1))
_STRUCTURE_BYTE = re.compile(rb"[\[\],]")
_DELIMITER_BYTE = re.compile(rb"[\[\], \t\n\r]")

_WHITESPACE = b" \t\n\r"
_IS_WS = np.zeros(256, bool)
_IS_WS[list(_WHITESPACE)] = True
# brackets and commas kept, the rest "x" (whitespace deleted apart)
_MARK_TOKENS = bytes(c if c in b"[]," else ord("x") for c in range(256))
_NOT_STRUCTURE = bytes(c for c in range(256) if c not in b"[],")
_NOT_NUMBERS = b'[]" \t\n\r'  # what np.fromstring must not see: numbers and commas stay
_EMPTY = np.zeros(0, np.int64)
_NO_TEXT = memoryview(b"")
_QUOTE, _BACKSLASH, _COMMA, _COLON = 34, 92, 44, 58
_OPEN, _CLOSE, _LBRACE, _RBRACE = 91, 93, 123, 125


def parse_cost(body_length: int) -> int:
    """An upper bound of the bytes `loads` holds beyond the body while it runs:
    ``SCAN_TEMPORARIES`` per byte of a block, ``SKELETON_COST`` per byte of skeleton
    (at most SKELETON_MAX), and FIXED. What the tensors take decoded is
    `JsonTensor.nbytes`; converting one holds `JsonTensor.decode_cost`."""
    block = min(body_length, BLOCK)
    skeleton = min(body_length, SKELETON_MAX)
    return SCAN_TEMPORARIES * block + SKELETON_COST * skeleton + FIXED


# --- tensors -----------------------------------------------------------------------


class JsonTensor:
    """A JSON array of numbers, checked but not converted: ``data[start:stop]``.

    `shape` is the array's, or ``()`` when `problem` says why it is no tensor (decode
    then raises it); `decode` converts it. Strings among the numbers may only be "NaN",
    "Infinity", "-Infinity"; with `bare_non_finite` the three literals unquoted too.
    `data` is the body itself: it must not change until the tensor is decoded. A small
    document's numbers are read at once (`array`).
    """

    __slots__ = ("array", "bare_non_finite", "data", "problem", "shape", "start", "stop")

    def __init__(
        self,
        data: memoryview,
        start: int,
        stop: int,
        shape: tuple[int, ...],
        problem: str | None,
        bare_non_finite: bool,
        array: np.ndarray | None = None,
    ) -> None:
        self.data = data
        self.start = start
        self.stop = stop
        self.shape = shape
        self.problem = problem
        self.bare_non_finite = bare_non_finite
        self.array = array

    def __repr__(self) -> str:
        return f"JsonTensor(shape={self.shape})"

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def text(self) -> bytes:
        """The array's JSON text (as the client wrote it, or as orjson writes `array`)."""
        if self.array is not None:
            return orjson.dumps(self.array, option=orjson.OPT_SERIALIZE_NUMPY)
        return bytes(self.data[self.start : self.stop])

    def to_python(self, limit: int = 4096) -> Any:
        """What orjson.loads made of the array, for small arrays that are not tensors
        but metadata, such as a v2 input's "shape" (TooLarge past `limit` bytes)."""
        if self.array is not None:
            return self.array.tolist()
        if self.stop - self.start > limit:
            raise TooLarge(f"an array of {self.stop - self.start} bytes where at most {limit}")
        try:
            return orjson.loads(self.data[self.start : self.stop])
        except orjson.JSONDecodeError:  # a number beyond float64, or a bare NaN
            raise InvalidArgument(f"{self.text()[:40]!r} is not an array of integers") from None

    def nbytes(self, dtype: DType) -> int:
        """Bytes of the decoded array."""
        return self.size * dtype.numpy.itemsize

    def decode_cost(self, dtype: DType) -> int:
        """An upper bound of the bytes `decode` holds: the output and its temporaries
        (block-sized ones, or a float64 copy of a small document's numbers)."""
        if self.array is not None:
            return self.nbytes(dtype) + 8 * self.size + FIXED
        span = min(self.stop - self.start, BLOCK)
        return self.nbytes(dtype) + DECODE_TEMPORARIES * span + FIXED

    def decode(self, dtype: DType, name: str) -> np.ndarray:
        """The numbers as an array of `dtype`; InvalidArgument (422) when they are not
        numbers, not integers for an integer dtype, or beyond what it holds."""
        if self.problem is not None:
            raise InvalidArgument(f"{name} {self.problem}")
        if self.size == 0:
            return np.zeros(self.shape, dtype.numpy)
        if self.array is not None:
            return _decode_array(self.array, dtype, name)
        if dtype.is_float:
            flat = _decode_floats(self, dtype, name)
        else:
            flat = _decode_integers(self, dtype, name)
        return flat.reshape(self.shape)


def tensor(text: bytes, *, bare_non_finite: bool = False) -> JsonTensor:
    """One JSON array, alone in `text`, as a JsonTensor (MalformedBody if it is not one)."""
    data = memoryview(text)
    start = _WS_RE.match(data).end()  # type: ignore[union-attr]
    stop = len(text.rstrip(_WHITESPACE))
    if stop <= start or text[start] != _OPEN:
        raise MalformedBody("not a JSON array")
    return _tensor(data, start, stop, bare_non_finite, _backslashes(data)[1])


# --- loads -------------------------------------------------------------------------


def loads(body: Body, *, bare_non_finite: bool) -> Any:
    """What orjson.loads(body) returns, each array of numbers as a JsonTensor.

    MalformedBody (400) for invalid JSON anywhere; TooLarge (422) when the JSON outside
    tensors is over SKELETON_MAX bytes. With `bare_non_finite` (Triton's JSON) the
    literals NaN, Infinity and -Infinity are numbers too inside tensors.
    """
    data = _as_view(body)
    if len(data) <= SMALL_BODY:
        try:
            return _loads_small(data)
        except (orjson.JSONDecodeError, _Unusual):
            pass  # the general way below says what is wrong, or reads what orjson cannot
    scan = _scan(data)
    spans = _tensor_spans(data, scan)
    marker, placeholder = _marker(data)
    size = len(data) - sum(stop - start for start, stop in spans)
    size += sum(len(placeholder(k)) for k in range(len(spans)))
    if size > SKELETON_MAX:
        raise TooLarge(
            f"the JSON outside arrays of numbers (keys, strings, objects) is {size} bytes; "
            f"at most {SKELETON_MAX} are accepted: send numbers in arrays"
        )
    pieces: list[bytes] = []
    previous = 0
    for k, (start, stop) in enumerate(spans):
        pieces += (bytes(data[previous:start]), placeholder(k))
        previous = stop
    pieces.append(bytes(data[previous:]))
    skeleton = b"".join(pieces)
    del pieces
    try:
        document = orjson.loads(skeleton)
    except orjson.JSONDecodeError as exc:
        where = _located(exc, spans, placeholder)
        raise MalformedBody(f"body is not valid JSON: {where}") from None
    del skeleton
    tensors = [_tensor(data, start, stop, bare_non_finite, scan.escaped) for start, stop in spans]
    return _restore(document, marker, tensors)


class _Unusual(Exception):
    """A small document the general way must read (strings or literals among numbers,
    jagged or deep arrays)."""


def _loads_small(data: memoryview) -> Any:
    """A small document read by orjson, each array of plain numbers turned into a
    JsonTensor holding them (np.array), as the general way would (the tests compare).
    Raises orjson.JSONDecodeError or _Unusual for what it leaves to the general way."""
    document = orjson.loads(data)
    # Without these words anywhere in the body no array holds true, false or null, and
    # numpy's dtype alone tells numbers from the rest (it would read true as 1.0). They
    # are looked for in what is left once the bytes of numbers are deleted: ~5 us for
    # 13 kB, where a regular expression over the body took ~33 us.
    letters = data.tobytes().translate(None, _NUMBER_BYTES)
    literals = b"true" in letters or b"false" in letters or b"null" in letters
    if type(document) is list:
        document = _small_tensor(document, literals)
    stack: list[Any] = [document]
    while stack:
        node = stack.pop()
        if type(node) is dict:
            for key, value in node.items():
                if type(value) is list:
                    found = _small_tensor(value, literals)
                    if found is value:
                        stack.append(value)  # skeleton: objects in it hold arrays
                    else:
                        node[key] = found
                elif type(value) is dict:
                    stack.append(value)
        elif type(node) is list:
            stack.extend(v for v in node if type(v) is dict or type(v) is list)
    return document


_NUMBER_BYTES = b"0123456789.-+,[] \t\n\r"  # not e or E: they are letters of true and false


def _small_tensor(value: list[Any], literals: bool) -> Any:
    """`value` (an array after ':' or the whole document) as a JsonTensor when it holds
    numbers only, itself when it holds no number (skeleton); _Unusual otherwise. With
    `literals` (true, false or null in the body) orjson's text of `value` is checked
    first: numbers are written with digits, ".", "-", "e" only."""
    if not value:
        return value
    if literals:
        try:
            text = orjson.dumps(value)
        except TypeError:  # nested deeper than orjson writes (255)
            raise _Unusual from None
        if b"t" in text or b"f" in text or b"n" in text:
            if b'"' not in text and b"{" not in text:
                raise _Unusual  # true, false, null among numbers
    try:
        array = np.array(value)
    except (ValueError, OverflowError):
        raise _Unusual from None  # jagged, or deeper than numpy goes
    kind = array.dtype.kind
    if kind == "U":
        if all(type(v) is str and v not in NON_FINITE for v in value):
            return value  # strings: "outputs": ["loss"]
        raise _Unusual
    if kind == "O" and any(type(v) is dict for v in value):
        return value  # it holds objects
    if kind not in "iuf" or array.ndim > MAX_RANK:
        raise _Unusual  # objects deeper down, integers beyond int64, true or false
    if array.size == 0:
        return value  # no number: skeleton, as [[], []] is
    return JsonTensor(_NO_TEXT, 0, 0, array.shape, None, False, array)


def _as_view(body: Body) -> memoryview:
    """The body as a flat memoryview of bytes, without a copy."""
    view = memoryview(body)
    if view.ndim == 1 and view.format == "B":
        return view
    if view.c_contiguous:
        return view.cast("B")
    return memoryview(view.tobytes())


def _marker(data: memoryview) -> tuple[str, Callable[[int], bytes]]:
    """The prefix of placeholder strings, and the JSON text of the k-th placeholder.

    A decoded string can start with U+0000 only if the body spells it ``\\u0000``; when
    it does, a random suffix keeps placeholders apart from the client's strings.
    """
    nonce = "" if _NUL_ESCAPE.search(data) is None else secrets.token_hex(8) + ":"
    encoded = nonce.encode()

    def placeholder(k: int) -> bytes:
        return b'"\\u0000' + encoded + str(k).encode() + b'"'

    return "\x00" + nonce, placeholder


def _located(
    exc: orjson.JSONDecodeError, spans: list[tuple[int, int]], placeholder: Callable[[int], bytes]
) -> str:
    """orjson's message, its position moved from the skeleton back to the body."""
    position = exc.pos
    for k, (start, stop) in enumerate(spans):
        if start >= position:
            break
        position += (stop - start) - len(placeholder(k))
    return f"{exc.msg} (near byte {position})"


def _restore(document: Any, marker: str, tensors: list[JsonTensor]) -> Any:
    """`document` with each placeholder string replaced by its tensor (no recursion)."""
    if not tensors:
        return document
    cut = len(marker)
    if type(document) is str:
        return tensors[int(document[cut:])] if document.startswith(marker) else document
    stack: list[Any] = [document]
    while stack:
        node = stack.pop()
        items: Iterator[tuple[Any, Any]]
        items = iter(node.items()) if type(node) is dict else enumerate(node)
        for key, value in items:
            kind = type(value)
            if kind is str:
                if value.startswith(marker):
                    node[key] = tensors[int(value[cut:])]
            elif kind is dict or kind is list:
                stack.append(value)
    return document


# --- lexing ------------------------------------------------------------------------


class _Scan(NamedTuple):
    events: np.ndarray  # positions of { } : outside strings, ascending
    closes: np.ndarray  # for each event, the last ] outside strings before it, or -1
    last_close: int  # the last ] outside strings in the document, or -1
    slashes: int  # backslashes in the document
    escaped: np.ndarray  # positions of quotes escaped by a backslash


def _backslashes(data: memoryview) -> tuple[int, np.ndarray]:
    """How many backslashes there are (TooLarge past SKELETON_MAX: they all belong in
    strings of the skeleton), and the quotes they escape: those after an odd run."""
    raw = np.frombuffer(data, np.uint8)
    parts = []
    count = 0
    for a in range(0, raw.size, BLOCK):
        at = np.flatnonzero(raw[a : a + BLOCK] == _BACKSLASH)
        if at.size:
            count += at.size
            if count > SKELETON_MAX:
                raise TooLarge(f"the body holds more than {SKELETON_MAX} backslashes")
            parts.append(at + a)
    if not count:
        return 0, _EMPTY
    slashes = np.concatenate(parts)
    last = np.ones(slashes.size, bool)
    last[:-1] = np.diff(slashes) != 1
    ends = np.flatnonzero(last)
    runs = np.diff(ends, prepend=-1)
    after = slashes[ends[runs % 2 == 1]] + 1
    after = after[after < raw.size]
    quoted: np.ndarray = after[raw[after] == _QUOTE]
    return count, quoted


def _scan(data: memoryview) -> _Scan:
    n = len(data)
    slashes, escaped = _backslashes(data)
    events: list[np.ndarray] = []
    closes: list[np.ndarray] = []
    count = 0
    in_string = 0
    last_close = -1
    for a in range(0, n, SCAN_PIECE):
        b = min(n, a + SCAN_PIECE)
        chunk = bytes(data[a:b])
        block = np.frombuffer(chunk, np.uint8)
        outside: np.ndarray | None = None
        if b'"' not in chunk:
            if in_string:
                continue  # all inside one string
            if slashes and b"\\" in chunk:
                raise MalformedBody(f"body is not valid JSON: '\\' outside a string near byte {a}")
            if b"{" not in chunk and b"}" not in chunk and b":" not in chunk:
                if (at := chunk.rfind(b"]")) >= 0:
                    last_close = a + at
                continue
        else:
            quotes = block == _QUOTE
            if escaped.size:
                inside = escaped[(escaped >= a) & (escaped < b)]
                quotes[inside - a] = False
            parity = np.bitwise_xor.accumulate(quotes.view(np.uint8))
            parity ^= in_string
            outside = parity == 0
            in_string = int(parity[-1])
            if slashes and np.any((block == _BACKSLASH) & outside):
                raise MalformedBody("body is not valid JSON: '\\' outside a string")
        found = (block == _LBRACE) | (block == _RBRACE) | (block == _COLON)
        brackets = block == _CLOSE
        if outside is not None:
            found &= outside
            brackets &= outside
        at_events = np.flatnonzero(found)
        if at_events.size:
            count += at_events.size
            if count > SKELETON_MAX:
                raise TooLarge(f"the body holds more than {SKELETON_MAX} '{{', '}}' and ':'")
            shut = np.flatnonzero(brackets)
            if shut.size:
                before = np.searchsorted(shut, at_events)
                previous = np.where(before > 0, shut[np.maximum(before - 1, 0)] + a, last_close)
                last_close = int(shut[-1]) + a
            else:
                previous = np.full(at_events.size, last_close)
            events.append(at_events + a)
            closes.append(previous)
        elif brackets.any():
            last_close = b - 1 - int(np.argmax(brackets[::-1]))
    if in_string:
        raise MalformedBody("body is not valid JSON: a string is not terminated")
    return _Scan(
        np.concatenate(events) if events else _EMPTY,
        np.concatenate(closes) if closes else _EMPTY,
        last_close,
        slashes,
        escaped,
    )


def _tensor_spans(data: memoryview, scan: _Scan) -> list[tuple[int, int]]:
    """[start, stop) of each array of numbers: after a ':' or the whole document."""
    raw = np.frombuffer(data, np.uint8)
    n = raw.size
    events = scan.events
    kinds = raw[events]
    position = events[kinds == _COLON] + 1
    for step in range(3):  # up to two blanks after ':' in bulk, more one by one
        inside = position < n
        blank = np.zeros(position.size, bool)
        blank[inside] = _IS_WS[raw[position[inside]]]
        if step < 2:
            position = position + blank
    for i in np.flatnonzero(blank).tolist():
        position[i] = _WS_RE.match(data, int(position[i])).end()  # type: ignore[union-attr]
    position = position[position < n]
    starts = position[raw[position] == _OPEN]
    first = _WS_RE.match(data).end()  # type: ignore[union-attr]
    if first < n and raw[first] == _OPEN:
        starts = np.concatenate(([first], starts))
    if not starts.size:
        return []
    following = np.searchsorted(events, starts)
    next_kind = np.append(kinds, 0)[following]
    last = np.append(scan.closes, scan.last_close)[following]
    spans = []
    for start, kind, close in zip(starts.tolist(), next_kind.tolist(), last.tolist(), strict=True):
        if kind == _LBRACE:
            continue  # it holds an object: skeleton
        if close < start:
            raise MalformedBody(f"body is not valid JSON: the array at byte {start} is not closed")
        if _NO_NUMBER.fullmatch(data, start, close + 1):
            continue  # only strings, or nothing: skeleton
        spans.append((start, close + 1))
    return spans


# --- checking one tensor -----------------------------------------------------------


def _tensor(data: memoryview, start: int, stop: int, bare: bool, escaped: np.ndarray) -> JsonTensor:
    """Check data[start:stop], an array, and find its shape: MalformedBody if it is not
    JSON, a JsonTensor with a `problem` if it is JSON but no tensor."""
    structure = _Structure()
    tokens = _fast_check(data, start, stop, bare, structure) if stop - start >= FAST_MIN else None
    problem = None
    if tokens is None:  # short, or not plainly numbers: the regular expression decides
        if not _ARRAY[bare].fullmatch(data, start, stop):
            raise MalformedBody(_unexpected(data, start, stop, bare))
        if _MAYBE_PROBLEM.search(data, start, stop) is not None:
            match = _PROBLEM.match(data, start, stop)
            if match is not None:
                problem = _describe(match.group(1))
        if problem is None:
            structure = _Structure()
            tokens = _structure_of(data, start, stop, structure)
    if problem is None:
        shape = structure.shape(tokens)
        if shape is not None and _canonical(data, start, stop, shape):
            return JsonTensor(data, start, stop, shape, None, bare)
    deepest = _depth(data, start, stop, escaped)  # raises when unbalanced
    if problem is None:
        if deepest > MAX_RANK:
            problem = f"is nested deeper than {MAX_RANK} levels"
        else:
            problem = "is jagged: the lists at each depth must all have the same length"
    return JsonTensor(data, start, stop, (), problem, bare)


def _unexpected(data: memoryview, start: int, stop: int, bare: bool) -> str:
    match = _ARRAY[bare].match(data, start, stop)
    at = match.end() if match is not None else start
    shown = bytes(data[at : min(stop, at + 24)])
    message = f"body is not valid JSON: unexpected {quote(shown.decode('utf-8', 'replace'))}"
    message += f" at byte {at}"
    if not bare and (b"NaN" in shown or b"Infinity" in shown):
        message += '; non-finite numbers are the strings "NaN", "Infinity", "-Infinity"'
    return message


def _describe(token: bytes) -> str:
    """Why a tensor holding `token` (true, false, null or a string) is refused."""
    if token in (b"true", b"false"):
        return f"must hold numbers, not booleans (holds {token.decode()})"
    if token == b"null":
        return "holds null: values must be numbers or nested lists of numbers"
    try:
        text = orjson.loads(token if len(token) <= 256 else token[:255] + b'"')
    except orjson.JSONDecodeError:
        text = token[1:64].decode("utf-8", "replace")
    return (
        f"holds {quote(text)}: values must be numbers, or one of {', '.join(NON_FINITE)} as strings"
    )


# The fast check. Bytes are classed; digits after a digit, and blanks other than one
# right after a token, are dropped; the rest, one symbol each, must follow each other
# as the grammar says, which a table of every four symbols in a row tells.
_S_END, _S_OPEN, _S_CLOSE, _S_COMMA = range(4)  # a blank ends a token; brackets, comma
_ZERO, _DIGIT, _MINUS, _PLUS, _DOT, _EXP, _LIT, _BAD = range(4, 12)  # what tokens are made of
_ZEROS = 12  # a run of digits that starts with 0 and goes on
_PAD = 13  # before the first symbol
_LITERAL = b"\x01"  # stands for a whole "NaN", "Infinity", "-Infinity" (quoted or bare)
_CLASSES = bytearray([_BAD] * 256)
for _chars, _kind in (
    (_WHITESPACE, _S_END),
    (b"[", _S_OPEN),
    (b"]", _S_CLOSE),
    (b",", _S_COMMA),
    (b"0", _ZERO),
    (b"123456789", _DIGIT),
    (b"-", _MINUS),
    (b"+", _PLUS),
    (b".", _DOT),
    (b"eE", _EXP),
    (_LITERAL, _LIT),
):
    for _c in _chars:
        _CLASSES[_c] = _kind
_CLASS_TABLE = bytes(_CLASSES)


def _quad_table() -> np.ndarray:
    """bad[(a << 12) | (b << 8) | (c << 4) | d]: whether symbols a b c d in a row break
    the grammar (a run of digits is one symbol)."""
    runs = (_ZERO, _DIGIT, _ZEROS)
    starts = (_MINUS, _ZERO, _DIGIT, _LIT)  # what a value starts with (not 0 then digits)
    follows = {
        _PAD: (_PAD, _S_OPEN),
        _S_OPEN: (_S_OPEN, _S_CLOSE, *starts),
        _S_COMMA: (_S_OPEN, *starts),
        _S_CLOSE: (_S_CLOSE, _S_COMMA),
        _S_END: (_S_CLOSE, _S_COMMA),
        _MINUS: runs,  # _ZEROS only after an exponent: see below
        _PLUS: runs,
        _DOT: runs,
        _EXP: (*runs, _MINUS, _PLUS),
        _LIT: (_S_COMMA, _S_CLOSE, _S_END),
        **dict.fromkeys(runs, (_DOT, _EXP, _S_COMMA, _S_CLOSE, _S_END)),
    }
    good = np.zeros((16, 16), bool)
    for x, ys in follows.items():
        good[x, list(ys)] = True
    a, b, c, d = np.indices((16, 16, 16, 16), dtype=np.uint16)
    bad = ~(good[a, b] & good[b, c] & good[c, d])
    is_run = np.isin(np.arange(16), runs)
    sign = np.isin(np.arange(16), (_MINUS, _PLUS))
    for x, y, z in ((a, b, c), (b, c, d)):
        bad |= (y == _MINUS) & (z == _ZEROS) & (x != _EXP)  # -01
        bad |= is_run[y] & (x == _DOT) & (z == _DOT)  # 1.2.3
        bad |= is_run[y] & (x == _EXP) & ((z == _DOT) | (z == _EXP))  # 1e2.3, 1e2e3
    bad |= (a == _EXP) & sign[b] & is_run[c] & ((d == _DOT) | (d == _EXP))  # 1e-2.3
    table: np.ndarray = bad.reshape(-1)
    return table


_QUAD_BAD = _quad_table()
_SYMBOL_TEXT = bytes.maketrans(b"\x01\x02\x03", b"[],")
FAST_MIN: Final = 1 << 12  # shorter arrays go to the regular expression alone
FLOAT_PIECE: Final = BLOCK // 8  # orjson's objects for a piece: ~2 bytes per BLOCK byte
FAST_PIECE: Final = BLOCK // 4  # the fast check holds ~20 bytes per byte of a piece


def _fast_check(
    data: memoryview, start: int, stop: int, bare: bool, structure: _Structure
) -> int | None:
    """The number of values in data[start:stop] when it is plainly a JSON array of
    numbers (and non-finite spellings), its brackets and commas fed to `structure`;
    None when it is not, or not plainly (the regular expression then decides).

    By pieces cut before brackets and commas, each looked up four symbols at a time.
    """
    tokens = 0
    context = np.full(3, _PAD, np.uint8)
    longest = max(2 * FAST_PIECE, 1 << 12)
    for a, b in _pieces(data, start, stop, _STRUCTURE_BYTE, FAST_PIECE):
        if b - a > longest:
            return None  # a long token or blank: the regular expression takes it
        chunk = bytes(data[a:b])
        if b'"' in chunk or (bare and (b"N" in chunk or b"I" in chunk)):
            if _LITERAL in chunk:
                return None
            for spelling in (b'"-Infinity"', b'"Infinity"', b'"NaN"'):
                chunk = chunk.replace(spelling, _LITERAL)
            if bare:
                for spelling in (b"-Infinity", b"Infinity", b"NaN"):
                    chunk = chunk.replace(spelling, _LITERAL)
        kinds = np.frombuffer(chunk.translate(_CLASS_TABLE), np.uint8)
        digit = (kinds & 0xFE) == _ZERO
        here, now, then = kinds[1:], digit[1:], digit[:-1]
        after_token = kinds[:-1] >= _ZERO
        keep = (~now & ((here != _S_END) | after_token)) | (now & ~then)
        ahead = np.zeros(now.size, bool)
        ahead[:-1] = now[1:]
        zeros = (here == _ZERO) & ~then & ahead
        symbols = np.concatenate((context, kinds[:1], (here + (zeros.view(np.uint8) << 3))[keep]))
        wide = symbols.astype(np.uint16)
        quads = wide[:-3] << 12
        quads |= wide[1:-2] << 8
        quads |= wide[2:-1] << 4
        quads |= wide[3:]
        del wide
        if np.take(_QUAD_BAD, quads).any():
            return None
        del quads
        own = symbols[3:]
        previous = symbols[2:-1]
        starting = ((previous == _S_OPEN) | (previous == _S_COMMA)) & (own >= _ZERO)
        tokens += int(np.count_nonzero(starting))
        marks = own[(own - _S_OPEN) <= _S_COMMA - _S_OPEN]  # uint8: _S_END wraps round
        structure.feed(marks.tobytes().translate(_SYMBOL_TEXT))
        context = symbols[-3:]
    return tokens


def _structure_of(data: memoryview, start: int, stop: int, structure: _Structure) -> int:
    """Feed the brackets and commas of a checked array to `structure`; its value count."""
    tokens = 0
    last = b""
    for a in range(start, stop, BLOCK):
        marked = bytes(data[a : min(stop, a + BLOCK)]).translate(_MARK_TOKENS, _WHITESPACE)
        if not marked:
            continue
        tokens += marked.count(b"[x") + marked.count(b",x")
        if marked[0] == ord("x") and last in (b"[", b","):
            tokens += 1
        last = marked[-1:]
        structure.feed(marked.translate(None, b"x"))
    return tokens


class _Structure:
    """Brackets and commas of an array, fed in pieces: its rank, length, and how many
    commas follow each number of closing brackets.

    In the brackets and commas of an array of shape (d1..dr), the commas between the
    d_k children of a level-k array follow r - k closing brackets, and there are
    A_k * (d_k - 1) of them, A_k = d1 * ... * d(k-1) arrays being at level k: which
    gives d1, then d2, ... in turn.
    """

    def __init__(self) -> None:
        self.rank = 0
        self.leading = True
        self.too_deep = False
        self.counts: list[int] = []
        self.closers = b""
        self.length = 0

    def feed(self, text: bytes) -> None:
        if not text or self.too_deep:
            return
        self.length += len(text)
        if self.leading:
            run = len(text) - len(text.lstrip(b"["))
            self.rank += run
            if self.rank > MAX_RANK:
                self.too_deep = True
                return
            if run == len(text):
                return
            self.leading = False
            self.counts = [0] * (self.rank + 1)
        joined = self.closers + text
        for j in range(self.rank + 1):
            self.counts[j] += joined.count(b"]" * j + b",")
        self.closers = joined[len(joined.rstrip(b"]")) :][-(self.rank + 1) :]

    def shape(self, tokens: int | None) -> tuple[int, ...] | None:
        """The shape these brackets and commas have if the array is regular, else None."""
        if tokens is None or self.leading or self.too_deep:
            return None
        rank, counts = self.rank, self.counts
        dims: list[int] = []
        arrays = 1
        for level in range(1, rank + 1):
            j = rank - level
            commas = counts[j] - (counts[j + 1] if j < rank else 0)
            if commas % arrays:
                return None
            size = commas // arrays + 1
            if level == rank and commas == 0 and tokens == 0:
                size = 0
            dims.append(size)
            arrays *= size
        shape = tuple(dims)
        if _skeleton_length(shape) != self.length or math.prod(shape) != tokens:
            return None
        return shape


def _canonical(data: memoryview, start: int, stop: int, shape: tuple[int, ...]) -> bool:
    """Whether the brackets and commas of data[start:stop] are those of `shape`."""
    canonical = _Canonical(shape)
    offset = 0
    for a in range(start, stop, BLOCK):
        structure = bytes(data[a : min(stop, a + BLOCK)]).translate(None, _NOT_STRUCTURE)
        if structure != canonical.slice(offset, offset + len(structure)):
            return False
        offset += len(structure)
    return True


def _skeleton_length(shape: tuple[int, ...]) -> int:
    """Brackets and commas of an array of `shape` (numbers left out)."""
    length = 0
    for d in reversed(shape):
        length = 2 + d * length + max(d - 1, 0)
    return length


class _Canonical:
    """Slices of the brackets and commas an array of a shape has, without building it
    whole: units of at most BLOCK bytes are built, larger ones sliced into."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape
        self.lengths = [_skeleton_length(shape[k:]) for k in range(len(shape) + 1)]
        self.built: dict[int, bytes] = {}

    def whole(self, level: int) -> bytes:
        """Brackets and commas of one array at `level` (0 is the whole array)."""
        if level not in self.built:
            if level == len(self.shape):
                self.built[level] = b""
            else:
                child = self.whole(level + 1)
                d = self.shape[level]
                inner = (child + b",") * (d - 1) + child if d else b""
                self.built[level] = b"[" + inner + b"]"
        return self.built[level]

    def slice(self, a: int, b: int, level: int = 0) -> bytes:
        length = self.lengths[level]
        a, b = max(a, 0), min(b, length)
        if a >= b:
            return b""
        if length <= BLOCK:
            return self.whole(level)[a:b]
        child = self.lengths[level + 1]
        period = child + 1  # a child and its comma
        parts = []
        if a == 0:
            parts.append(b"[")
        inner_a, inner_b = max(a, 1), min(b, length - 1)
        if inner_a < inner_b:
            if period <= BLOCK:
                unit = self.whole(level + 1) + b","
                shift = (inner_a - 1) % period
                count = (shift + inner_b - inner_a) // period + 1
                parts.append((unit * count)[shift : shift + inner_b - inner_a])
            else:  # children longer than a slice: at most two of them
                for i in range((inner_a - 1) // period, (inner_b - 2) // period + 1):
                    base = 1 + i * period
                    parts.append(self.slice(inner_a - base, inner_b - base, level + 1))
                    if inner_a <= base + child < inner_b:
                        parts.append(b",")
        if b == length:
            parts.append(b"]")
        return b"".join(parts)


def _depth(data: memoryview, start: int, stop: int, escaped: np.ndarray) -> int:
    """The deepest nesting of data[start:stop], brackets in strings aside; MalformedBody
    unless its brackets balance with the first closed by the last."""
    depth = 0
    deepest = 0
    in_string = 0
    unbalanced = MalformedBody(
        f"body is not valid JSON: unbalanced brackets in the array at byte {start}"
    )
    raw = np.frombuffer(data, np.uint8)
    for a in range(start, stop, BLOCK):
        b = min(stop, a + BLOCK)
        block = raw[a:b]
        steps = (block == _OPEN).view(np.int8) - (block == _CLOSE).view(np.int8)
        quotes = block == _QUOTE
        if in_string or quotes.any():
            if escaped.size:
                inside = escaped[(escaped >= a) & (escaped < b)]
                quotes[inside - a] = False
            parity = np.bitwise_xor.accumulate(quotes.view(np.uint8))
            parity ^= in_string
            in_string = int(parity[-1])
            steps[parity.view(bool)] = 0
            del parity
        del quotes
        levels = np.cumsum(steps, dtype=np.int32)
        del steps
        levels += depth
        inner = levels[:-1] if b == stop else levels
        if inner.size and int(inner.min()) <= 0:
            raise unbalanced
        deepest = max(deepest, int(levels.max()))
        depth = int(levels[-1])
    if depth != 0:
        raise unbalanced
    return deepest


# --- converting --------------------------------------------------------------------


def _pieces(
    data: memoryview, start: int, stop: int, cut: re.Pattern[bytes], size: int | None = None
) -> Iterator[tuple[int, int]]:
    """[a, b) pieces of data[start:stop] of about `size` (BLOCK) bytes, each after the
    first starting at a byte `cut` finds (a piece is longer only where there is none)."""
    size = size or BLOCK
    a = start
    while a < stop:
        found = cut.search(data, min(a + size, stop), stop)
        if found is None:
            yield a, stop
            return
        yield a, found.start()
        a = found.start()


def _numbers_text(data: memoryview, a: int, b: int) -> bytes:
    """The numbers of data[a:b] (a piece cut at a delimiter), comma-separated."""
    return bytes(data[a:b]).translate(None, _NOT_NUMBERS).strip(b",")


def _field(text: bytes, index: int) -> str:
    """The index-th comma-separated number of `text`, quoted for a message."""
    commas = np.flatnonzero(np.frombuffer(text, np.uint8) == _COMMA)
    begin = int(commas[index - 1]) + 1 if index > 0 else 0
    end = int(commas[index]) if index < commas.size else len(text)
    return quote(text[begin:end].decode("ascii", "replace"))


def _positive_zeros(text: bytes) -> bytes:
    """`text` with each integer -0 written 0: orjson reads -0 as the integer 0 (and
    -0.0 as negative zero), and numpy kept it."""
    if text.count(b"-0,") == 0 and not text.endswith(b"-0"):
        return text
    raw = np.frombuffer(text + b",", np.uint8)
    at = np.flatnonzero((raw[:-2] == ord("-")) & (raw[1:-1] == ord("0")) & (raw[2:] == _COMMA))
    at = at[(at == 0) | (raw[np.maximum(at - 1, 0)] == _COMMA)]
    if not at.size:
        return text
    return np.delete(raw[:-1], at).tobytes()


def _numbers(text: bytes, dtype: type[np.generic]) -> np.ndarray:
    try:
        return np.fromstring(text, dtype, sep=",")
    except ValueError:  # the grammar was checked: a bug here, not the client's doing
        raise MalformedBody("a number could not be read") from None


def _floats(text: bytes) -> np.ndarray:
    """The comma-separated numbers of `text` as float64: by orjson where it reads them
    all, ~2.3x np.fromstring's speed (its Python float per number lives for one piece of
    FLOAT_PIECE bytes: at most 16 bytes of objects per byte); by np.fromstring where it
    does not (NaN and Infinity, numbers beyond float64), with integer -0 written 0 as
    orjson reads it."""
    if b"N" not in text and b"I" not in text:
        try:
            return np.array(orjson.loads(b"[" + text + b"]"), np.float64)
        except orjson.JSONDecodeError:
            pass
    return _numbers(_positive_zeros(text), np.float64)


def _decode_floats(t: JsonTensor, dtype: DType, name: str) -> np.ndarray:
    out = np.empty(t.size, dtype.numpy)
    filled = 0
    for a, b in _pieces(t.data, t.start, t.stop, _DELIMITER_BYTE, FLOAT_PIECE):
        text = _numbers_text(t.data, a, b)
        if not text:
            continue
        wide = _floats(text)
        count = wide.size
        if filled + count > out.size:
            raise MalformedBody(f"{name}: more numbers than its shape {list(t.shape)} holds")
        if not np.isfinite(wide).all():
            infinite = np.count_nonzero(np.isinf(wide))
            if infinite > text.count(b"Infinity"):  # a finite number beyond float64
                finite = _numbers(text.replace(b"Infinity", b"0"), np.float64)
                shown = _field(text, int(np.argmax(np.isinf(finite))))
                raise out_of_range(name, shown, DType.float64)
        narrow = out[filled : filled + count]
        with np.errstate(over="ignore", invalid="ignore"):
            np.copyto(narrow, wide, casting="unsafe")
        if dtype is not DType.float64:
            overflow = np.isinf(narrow) & np.isfinite(wide)
            if overflow.any():
                raise out_of_range(name, f"{wide[int(np.argmax(overflow))]:g}", dtype)
        filled += count
    if filled != out.size:
        raise MalformedBody(f"{name}: fewer numbers than its shape {list(t.shape)} holds")
    return out


def _decode_array(array: np.ndarray, dtype: DType, name: str) -> np.ndarray:
    """Numbers orjson read (int64, uint64 or float64, all finite), as `dtype`."""
    if dtype.is_float:
        wide = array.astype(np.float64, copy=False)
        numpy_dtype = dtype.numpy
        if dtype is DType.float64 or float(np.abs(wide).max()) <= _LARGEST[dtype]:
            return wide.astype(numpy_dtype)  # nothing beyond the largest finite value
        with np.errstate(over="ignore"):
            narrow = wide.astype(numpy_dtype)
        overflow = np.isinf(narrow)  # rounding may still bring a value down to the largest
        if overflow.any():
            raise out_of_range(name, f"{wide.flat[int(np.argmax(overflow))]:g}", dtype)
        return narrow
    if array.dtype.kind == "f":  # fractions, or integers beyond 64 bits (orjson's floats)
        fractions = array != np.round(array)
        if not fractions.any() and np.abs(array).max() >= 2.0**63:
            worst = float(array.flat[int(np.argmax(np.abs(array)))])
            raise ValueOutOfRange(f"{name} holds {worst:g}, outside the range of {dtype.name}")
        shown = quote(repr(float(array.flat[int(np.argmax(fractions))])))
        raise InvalidArgument(f"{name} must hold integers (class indices); got {shown}")
    info = np.iinfo(dtype.numpy)  # type: ignore[type-var]
    low, high = int(array.min()), int(array.max())
    if low < info.min or high > info.max:
        worst = low if low < info.min else high
        raise ValueOutOfRange(f"{name} holds {worst}, outside the range of {dtype.name}")
    return array.astype(dtype.numpy)


_LARGEST = {d: float(ml_dtypes.finfo(d.numpy).max) for d in DType if d.is_float}  # type: ignore[no-untyped-call]


def out_of_range(name: str, shown: str, dtype: DType) -> ValueOutOfRange:
    """A finite number that `dtype` cannot hold, for a message naming `shown`."""
    largest = _LARGEST[dtype]
    advice = "" if dtype is DType.float64 else "; send a wider dtype"
    return ValueOutOfRange(
        f"{name} holds {shown}, which {dtype.name} cannot represent "
        f"(largest finite {largest:g}){advice}"
    )


def _decode_integers(t: JsonTensor, dtype: DType, name: str) -> np.ndarray:
    data, start, stop = t.data, t.start, t.stop
    found = _NOT_INTEGER.search(data, start, stop)
    if found is not None:
        shown = _around(data, found.start(), start, stop)
        raise InvalidArgument(f"{name} must hold integers (class indices); got {shown}")
    info = np.iinfo(dtype.numpy)  # type: ignore[type-var]
    out = np.empty(t.size, dtype.numpy)
    filled = 0
    for a, b in _pieces(data, start, stop, _DELIMITER_BYTE):
        text = _numbers_text(data, a, b)
        if not text:
            continue
        _check_digits(text, name, dtype)
        values = _numbers(text, np.int64)
        count = values.size
        if filled + count > out.size:
            raise MalformedBody(f"{name}: more numbers than its shape {list(t.shape)} holds")
        if dtype is not DType.int64 and count:
            low, high = int(values.min()), int(values.max())
            if low < info.min or high > info.max:
                worst = low if low < info.min else high
                raise ValueOutOfRange(f"{name} holds {worst}, outside the range of {dtype.name}")
        out[filled : filled + count] = values
        filled += count
    if filled != out.size:
        raise MalformedBody(f"{name}: fewer numbers than its shape {list(t.shape)} holds")
    return out


def _check_digits(text: bytes, name: str, dtype: DType) -> None:
    """Integers of more than INTEGER_DIGITS digits must fit int64 (numpy saturates)."""
    if _LONG_INTEGER.search(text) is None:
        return
    raw = np.frombuffer(text, np.uint8)
    other = np.flatnonzero((raw < ord("0")) | (raw > ord("9")))
    bounds = np.concatenate(([-1], other, [raw.size]))
    runs = np.diff(bounds) - 1
    long = np.flatnonzero(runs > INTEGER_DIGITS)
    begins = bounds[long] + 1
    lengths = runs[long]
    negative = (begins > 0) & (raw[np.maximum(begins - 1, 0)] == ord("-"))
    over = lengths > 19
    if not over.any():  # 19 digits each: compared as text with int64's limits
        words = raw[begins[:, None] + np.arange(19)].view("S19").ravel()
        limits = np.where(negative, b"9223372036854775808", b"9223372036854775807")
        over = words > limits
    if over.any():
        i = int(np.argmax(over))
        begin, length = int(begins[i]), int(lengths[i])
        shown = ("-" if negative[i] else "") + text[begin : begin + length].decode()
        raise ValueOutOfRange(f"{name} holds {quote(shown)}, outside the range of {dtype.name}")


def _around(data: memoryview, at: int, start: int, stop: int) -> str:
    """The token of data[start:stop] that holds byte `at`, quoted for a message."""
    lo = max(start, at - 64)
    window = bytes(data[lo : min(stop, at + 64)])
    at -= lo
    left = max(window.rfind(c, 0, at) for c in (b",", b"[", b" ", b"\t", b"\n", b"\r"))
    right = [i for c in (b",", b"]", b" ", b"\t", b"\n", b"\r") if (i := window.find(c, at)) >= 0]
    token = window[left + 1 : min(right) if right else len(window)]
    return quote(token.decode("utf-8", "replace"))
