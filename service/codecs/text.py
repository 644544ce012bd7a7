"""Text that clients control: strict integers, valid Unicode, bounded quoting in messages.

Every integer that arrives as text goes through `ascii_int` (Python's `int()` accepts
"+1", "1_0", " 1 " and non-ASCII digits such as "\\u0661"), every real number through
`ascii_float` (`float()` accepts those too, and "nan", "inf"); every client string
that an error message names goes through `quote` or `some`, which escape invalid
Unicode (a lone UTF-16 surrogate cannot be written as UTF-8, so echoing one would
fail) and bound the length; `bounded` caps a whole message; `accepts` reads Accept.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sized

from service.errors import InvalidArgument, ServiceError

MAX_DIGITS = 18  # every such integer fits int64; more is out of any range used here
QUOTE_CHARS = 40  # of one quoted client string in a message


def ascii_int(
    text: str,
    what: str,
    *,
    signed: bool = False,
    error: type[ServiceError] = InvalidArgument,
) -> int:
    """`text` as an integer: ASCII digits only (a leading "-" when `signed`), at most 18.

    No sign "+", no "_", no spaces, no non-ASCII digits, no exponent: what a person
    means by a plain decimal integer. Raises `error` with a message naming `what`.
    """
    digits = text[1:] if signed and text.startswith("-") else text
    if not (digits.isascii() and digits.isdigit()):
        form = "an optional '-' and ASCII digits" if signed else "ASCII digits only"
        raise error(f"{what} must be a decimal integer ({form}); got {quote(text)}")
    if len(digits) > MAX_DIGITS:
        raise error(f"{what} must have at most {MAX_DIGITS} digits; got {len(digits)}")
    return int(text)


# JSON's number grammar: what a person means by a plain decimal number.
_DECIMAL = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?\Z")
MAX_FLOAT_CHARS = 64


def ascii_float(text: str, what: str, *, error: type[ServiceError] = InvalidArgument) -> float:
    """`text` as a finite float: JSON's number grammar in ASCII ("0.1", "1", "1e-3"), at
    most 64 characters. No "nan", "inf", "+", "_", spaces, ".5", non-ASCII digits, or a
    value beyond float64 ("1e999")."""
    if len(text) > MAX_FLOAT_CHARS or not (text.isascii() and _DECIMAL.match(text)):
        raise error(f"{what} must be a decimal number such as 0.1; got {quote(text)}")
    value = float(text)
    if not math.isfinite(value):
        raise error(f"{what} is beyond float64's range; got {quote(text)}")
    return value


def valid_unicode(text: str) -> bool:
    """Whether `text` can be written as UTF-8: no lone UTF-16 surrogate (U+D800-U+DFFF),
    which JSON's "\\ud800" escape and Python's `json` module let through."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def escaped(text: str) -> str:
    """`text` with invalid Unicode written as backslash escapes (safe to encode as UTF-8)."""
    if valid_unicode(text):
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def quote(value: object, limit: int = QUOTE_CHARS) -> str:
    """A client value for a message: a string quoted with invalid Unicode escaped (as
    `repr` does), cut to `limit` characters with the rest counted."""
    if not isinstance(value, str):
        shown = repr(value)
        return shown if len(shown) <= limit else f"{shown[:limit]}..."
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value) - limit} more characters)"


def json_value(value: object) -> str:
    """A parsed JSON value as the client wrote it, bounded: true, "-1", -1.0, an array."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value) if abs(value) < 10**QUOTE_CHARS else "an integer over 40 digits"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        inner = escaped(value[:QUOTE_CHARS].replace("\\", "\\\\").replace('"', '\\"'))
        return f'"{inner}"' + ("..." if len(value) > QUOTE_CHARS else "")
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def some(items: Iterable[object], shown: int = 3) -> str:
    """At most `shown` items, quoted, and how many more: "'a', 'b', 'c' and 999997 more"."""
    listed = list(items) if not isinstance(items, Sized) else items
    total = len(listed)
    head = [quote(item) for _, item in zip(range(shown), listed, strict=False)]
    text = ", ".join(head)
    return text if total <= shown else f"{text} and {total - shown} more"


def bounded(message: str, limit: int) -> str:
    """`message` with invalid Unicode escaped and cut to about `limit` characters."""
    total = len(message)
    if total > limit:
        message = message[:limit]
    message = escaped(message)
    if len(message) > limit:
        message = message[:limit]
    if total > limit:
        message += f"... ({total - limit} more characters)"
    return message


# Accept: media-range *( OWS ";" OWS parameter ), q = 0[.ddd] | 1[.000]
_QVALUE = re.compile(r"(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)\Z")


def _quality(params: list[str]) -> float | None:
    """The q of one media range's parameters; None when q is malformed."""
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "q":
            value = value.strip()
            return float(value) if _QVALUE.match(value) else None
    return 1.0


def accepts(accept_header: str, media_type: str, default: str = "application/json") -> bool:
    """Whether a client's Accept header asks for `media_type` rather than `default`.

    `media_type` must be named (wildcards such as */* leave the default), with q > 0
    (q=0 means "not acceptable"), and at a q no lower than the default's (which
    wildcards do match). A missing or empty header means the default. Ranges whose q
    is malformed are ignored.
    """
    media_type, default = media_type.lower(), default.lower()
    if media_type not in accept_header.lower():
        return False  # never named: the default (most requests send */* or nothing)
    # how specifically a range names the default: exactly, its type's wildcard, */*
    specificity = {default: 2, f"{default.split('/', 1)[0]}/*": 1, "*/*": 0}
    named = 0.0
    best_default = (-1, 0.0)  # (specificity, q) of the most specific range matching it
    for item in accept_header.split(","):
        media_range, *params = item.split(";")
        media_range = media_range.strip().lower()
        q = _quality(params)
        if q is None or not media_range:
            continue
        if media_range == media_type:
            named = q
        rank = specificity.get(media_range, -1)
        if rank > best_default[0]:
            best_default = (rank, q)
    return named > 0 and named >= best_default[1]
