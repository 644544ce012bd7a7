"""Reading request bodies under the size limit, into one buffer."""

from __future__ import annotations

from fastapi import Request

from service.errors import MalformedBody, PayloadTooLarge


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body is larger than the limit of {limit} bytes")


async def read_body(request: Request, limit: int) -> bytes | bytearray:
    """The whole body, refused with 413 from Content-Length before reading, or while streaming.

    With a Content-Length the body is streamed into one preallocated buffer (no
    ``b"".join`` of chunks, which would hold the body twice).
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise MalformedBody(f"Content-Length {declared[:32]!r} is not a number") from None
        if size > limit:
            raise _too_large(limit)
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
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)
