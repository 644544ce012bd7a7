"""Reading request bodies: size limit, pace, memory budget, gzip/deflate inflated in steps.

The body is the first thing a request holds, so it is counted against the worker's
memory budget as it arrives (in doubling slabs, so a trickling upload holds about what
it sent, not what it declared), and the buffer it goes into is committed by the kernel
page by page as bytes land in it. A compressed body is inflated a bounded step at a time,
yielding the event loop between steps, and checked against the limit as it grows.
"""

from __future__ import annotations

import asyncio
import time
import zlib

import numpy as np
from fastapi import Request
from starlette.requests import ClientDisconnect

from service.api.admission import BodyPace, Lease
from service.api.protocol import BODY_IN, READ_AHEAD
from service.codecs import text
from service.errors import MalformedBody, PayloadTooLarge, UnsupportedMediaType
from service.settings import Settings

GZIP_WBITS = 16 + zlib.MAX_WBITS
ZLIB_WBITS = zlib.MAX_WBITS
RAW_DEFLATE_WBITS = -zlib.MAX_WBITS
SLAB = 1 << 20  # the first reservation of a body; later ones double what is held
READ_AHEAD_MAX = 1 << 20  # 4 MiB was no faster for a 256 MiB body than 1 MiB
INFLATE_STEP = 1 << 20  # bytes inflated between two yields to the event loop (~1 ms)

Body = bytes | bytearray | memoryview


class Limit(int):
    """A body size limit that knows its setting and whether the body is JSON, so that a
    413 can name the one to raise and, for JSON, the binary transports (an int all the
    same: the request pipeline only compares sizes with it)."""

    setting: str
    json: bool

    def __new__(cls, value: int, setting: str, *, json: bool) -> Limit:
        limit = super().__new__(cls, value)
        limit.setting, limit.json = setting, json
        return limit


def body_limit(settings: Settings, *, json: bool) -> Limit:
    """The size limit of a JSON or a binary body: a JSON one is held to both settings."""
    if json and settings.max_json_bytes <= settings.max_request_bytes:
        return Limit(settings.max_json_bytes, "SCE_MAX_JSON_BYTES", json=True)
    return Limit(settings.max_request_bytes, "SCE_MAX_REQUEST_BYTES", json=json)


def _too_large(limit: int) -> PayloadTooLarge:
    if not isinstance(limit, Limit):
        return PayloadTooLarge(f"request body is larger than this route's limit of {limit} bytes")
    message = (
        f"request body is larger than the limit of {limit} bytes (the server's "
        f"{limit.setting}, counted after decompression); send a smaller batch"
    )
    if limit.json:  # binary tensors are 2-4x smaller than their JSON, and far faster to read
        message += (
            ", or send the tensors in binary: safetensors on /v1 (Content-Type: "
            "application/x-safetensors) or the v2 binary tensor extension "
            "(Inference-Header-Content-Length)"
        )
    return PayloadTooLarge(message)


def _declared_length(request: Request, limit: int) -> int | None:
    """Content-Length, refused with 413 past `limit` before anything is read."""
    declared = request.headers.get("content-length")
    if declared is None:
        return None
    size = text.ascii_int(declared, "Content-Length", error=MalformedBody)
    if size > limit:
        raise _too_large(limit)
    return size


class _Reservation:
    """The body's share of the lease, grown in doubling slabs up to `most` bytes; the time
    spent waiting for them is credited to the client's pace. Once held, what the lease
    covers beyond the stored bytes (up to READ_AHEAD_MAX) is the connection's read-ahead
    (service/api/protocol.py), so the bytes it buffers are counted too."""

    def __init__(
        self, request: Request, lease: Lease | None, most: int, pace: BodyPace | None
    ) -> None:
        self.scope = request.scope
        self.lease = lease
        self.most = most
        self.pace = pace

    async def cover(self, size: int) -> None:
        lease = self.lease
        if lease is None:
            return
        if size > lease.held:
            started = time.monotonic()
            await lease.hold(min(self.most, max(size, SLAB, 2 * lease.held)), body=True)
            if self.pace is not None:
                self.pace.credit(time.monotonic() - started)
        self.scope[READ_AHEAD] = min(READ_AHEAD_MAX, lease.held - size)


class _Watch:
    """Cancels the reading task when the next chunk is later than the pace allows.

    One timer a request, re-armed only when it fires, rather than a timeout around every
    chunk (that cost ~40 us a small request); it only counts while the body is being
    read, not while the request waits for memory or stores a chunk.
    """

    def __init__(self, pace: BodyPace) -> None:
        self.pace = pace
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        self.handle: asyncio.TimerHandle | None = None
        self.received = 0
        self.waiting = False
        self.expired = False

    def reading(self, received: int) -> None:
        self.received, self.waiting = received, True
        if self.handle is None:
            self._arm()

    def _arm(self) -> None:
        self.handle = self.loop.call_later(max(0.0, self.pace.due(self.received)), self._fire)

    def _fire(self) -> None:
        self.handle = None
        if not self.waiting:
            return  # armed again when reading resumes
        if self.pace.due(self.received) > 0:
            self._arm()
        elif self.task is not None:
            self.expired = True
            self.task.cancel()

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()


class _Chunks:
    """The body's chunks as received, refused with 413 once they pass `limit` bytes, and
    with 408 when the next one is later than the pace allows.

    Reads `request.receive` itself, and is a class rather than an async generator: the two
    async generators it replaced (its own and Starlette's `request.stream()`) cost a small
    request ~10 us, asyncio tracking each in a WeakSet of the loop's."""

    def __init__(self, request: Request, limit: int, pace: BodyPace | None) -> None:
        self.receive = request.receive
        self.limit = limit
        self.received = 0
        self.ended = False
        complete = request.scope.get(BODY_IN, False)
        self.watch = None if pace is None or complete else _Watch(pace)

    async def next(self) -> bytes | None:
        """The next non-empty chunk; None once the body has ended."""
        watch = self.watch
        while not self.ended:
            if watch is not None:
                watch.reading(self.received)
            try:
                message = await self.receive()
            except asyncio.CancelledError:
                if watch is None or not watch.expired or watch.task is None:
                    raise
                watch.task.uncancel()
                raise watch.pace.error() from None
            if watch is not None:
                watch.waiting = False
            if message["type"] != "http.request":  # http.disconnect
                raise ClientDisconnect
            self.ended = not message.get("more_body", False)
            chunk: bytes = message.get("body", b"")
            self.received += len(chunk)
            if self.received > self.limit:
                raise _too_large(self.limit)
            if chunk:
                return chunk
        return None

    def close(self) -> None:
        if self.watch is not None:
            self.watch.stop()


async def _read_raw(
    request: Request, size: int | None, limit: int, pace: BodyPace | None, lease: Lease | None
) -> Body:
    """The body as sent. With a Content-Length it goes into one buffer of that size whose
    pages are committed as they are written (np.empty), so a body is held once, and only
    as far as it has arrived; a body that came in one piece is kept as it came."""
    reservation = _Reservation(request, lease, limit if size is None else size, pace)
    chunks = _Chunks(request, limit, pace)
    try:
        if size is None:
            parts = bytearray()
            while (chunk := await chunks.next()) is not None:
                await reservation.cover(len(parts) + len(chunk))
                parts += chunk
            return parts
        chunk = await chunks.next()
        if chunk is not None and len(chunk) == size and chunks.ended:
            await reservation.cover(size)
            return chunk
        buffer = memoryview(np.empty(size, np.uint8).data)
        filled = 0
        while chunk is not None:
            end = filled + len(chunk)
            if end > size:
                raise MalformedBody("request body is longer than its Content-Length")
            await reservation.cover(end)
            buffer[filled:end] = chunk
            filled = end
            chunk = await chunks.next()
    finally:
        chunks.close()
    if filled != size:
        raise MalformedBody(f"request body ended after {filled} of {size} bytes")
    return buffer


async def _inflate(
    request: Request, limit: int, encoding: str, pace: BodyPace | None, lease: Lease | None
) -> bytearray:
    """Inflate while reading, INFLATE_STEP bytes at a time; past `limit` it is a 413 at once."""
    out = bytearray()
    reservation = _Reservation(request, lease, limit + INFLATE_STEP, pace)
    inflater: zlib._Decompress | None = None
    chunks = _Chunks(request, limit, pace)
    try:
        while (chunk := await chunks.next()) is not None:
            if inflater is None:
                if encoding == "gzip":
                    wbits = GZIP_WBITS
                else:  # "deflate" is zlib-wrapped by the RFC, raw by some clients
                    wbits = ZLIB_WBITS if chunk[0] & 0x0F == 8 else RAW_DEFLATE_WBITS
                inflater = zlib.decompressobj(wbits)
            elif inflater.eof:
                raise _trailing(encoding)
            data = chunk
            while data:
                await reservation.cover(len(out) + INFLATE_STEP)
                out += inflater.decompress(data, INFLATE_STEP)
                if len(out) > limit:
                    raise _too_large(limit)
                if inflater.unused_data:
                    raise _trailing(encoding)
                data = inflater.unconsumed_tail
                if data:
                    await asyncio.sleep(0)  # a compressed chunk may hold a lot: let others run
        if inflater is None:
            return out
        out += inflater.flush()
    except zlib.error as exc:
        raise MalformedBody(f"body is not valid {encoding} data: {exc}") from None
    finally:
        chunks.close()
    if len(out) > limit:
        raise _too_large(limit)
    if not inflater.eof:
        raise MalformedBody(f"{encoding} body is truncated")
    return out


def _trailing(encoding: str) -> MalformedBody:
    return MalformedBody(
        f"bytes follow the end of the {encoding} stream (a second member, or garbage); "
        "send one stream"
    )


async def read_body(
    request: Request, limit: int, *, pace: BodyPace | None = None, lease: Lease | None = None
) -> Body:
    """The whole (decompressed) body, refused with 413 past `limit` bytes.

    Content-Length is checked before anything is read; a compressed body is checked
    again while it inflates, so a zip bomb never grows past the limit. With a `lease`,
    the body's bytes are held on the memory budget before they are stored.
    """
    try:
        return await _read(request, limit, pace, lease)
    except ClientDisconnect:  # nobody will read the answer; this ends the request cleanly
        raise MalformedBody("the client disconnected before sending the whole body") from None


async def _read(request: Request, limit: int, pace: BodyPace | None, lease: Lease | None) -> Body:
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity", "gzip", "deflate"):
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding[:32]!r} is not supported; use gzip, deflate or identity"
        )
    size = _declared_length(request, limit)
    if encoding in ("", "identity"):
        return await _read_raw(request, size, limit, pace, lease)
    return await _inflate(request, limit, encoding, pace, lease)
