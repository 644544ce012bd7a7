"""Reading request bodies under the size limit, into one buffer, inflating gzip/deflate."""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator

from fastapi import Request
from starlette.requests import ClientDisconnect

from service.errors import MalformedBody, PayloadTooLarge, UnsupportedMediaType

GZIP_WBITS = 16 + zlib.MAX_WBITS
ZLIB_WBITS = zlib.MAX_WBITS
RAW_DEFLATE_WBITS = -zlib.MAX_WBITS


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body is larger than the limit of {limit} bytes")


def _declared_length(request: Request, limit: int) -> int | None:
    """Content-Length, refused with 413 past `limit` before anything is read."""
    declared = request.headers.get("content-length")
    if declared is None:
        return None
    try:
        size = int(declared)
    except ValueError:
        raise MalformedBody(f"Content-Length {declared[:32]!r} is not a number") from None
    if size > limit:
        raise _too_large(limit)
    return size


async def _chunks(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The body's chunks as received, refused with 413 once they pass `limit` bytes."""
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise _too_large(limit)
        if chunk:
            yield chunk


async def _read_raw(request: Request, size: int | None, limit: int) -> bytes | bytearray:
    """The body as sent. With a Content-Length it is streamed into one preallocated
    buffer (no ``b"".join`` of chunks, which would hold the body twice)."""
    if size is None:
        return b"".join([chunk async for chunk in _chunks(request, limit)])
    buffer = bytearray(size)
    view = memoryview(buffer)
    filled = 0
    async for chunk in request.stream():
        end = filled + len(chunk)
        if end > size:
            raise MalformedBody("request body is longer than its Content-Length")
        view[filled:end] = chunk
        filled = end
    if filled != size:
        raise MalformedBody(f"request body ended after {filled} of {size} bytes")
    return buffer


async def _inflate(request: Request, limit: int, encoding: str) -> bytearray:
    """Inflate while reading; past `limit` decompressed bytes it is a 413 at once."""
    out = bytearray()
    inflater: zlib._Decompress | None = None
    try:
        async for chunk in _chunks(request, limit):
            if inflater is None:
                if encoding == "gzip":
                    wbits = GZIP_WBITS
                else:  # "deflate" is zlib-wrapped by the RFC, raw by some clients
                    wbits = ZLIB_WBITS if chunk[0] & 0x0F == 8 else RAW_DEFLATE_WBITS
                inflater = zlib.decompressobj(wbits)
            out += inflater.decompress(chunk, limit + 1 - len(out))
            if len(out) > limit or inflater.unconsumed_tail:
                raise _too_large(limit)
        if inflater is None:
            return out
        out += inflater.flush()
    except zlib.error as exc:
        raise MalformedBody(f"body is not valid {encoding} data: {exc}") from None
    if len(out) > limit:
        raise _too_large(limit)
    if not inflater.eof:
        raise MalformedBody(f"{encoding} body is truncated")
    return out


async def read_body(request: Request, limit: int) -> bytes | bytearray:
    """The whole (decompressed) body, refused with 413 past `limit` bytes.

    Content-Length is checked before anything is read; a compressed body is
    checked again while it inflates, so a zip bomb never grows past the limit.
    """
    try:
        return await _read(request, limit)
    except ClientDisconnect:  # nobody will read the answer; this ends the request cleanly
        raise MalformedBody("the client disconnected before sending the whole body") from None


async def _read(request: Request, limit: int) -> bytes | bytearray:
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity", "gzip", "deflate"):
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding[:32]!r} is not supported; use gzip, deflate or identity"
        )
    size = _declared_length(request, limit)
    if encoding in ("", "identity"):
        return await _read_raw(request, size, limit)
    return await _inflate(request, limit, encoding)
