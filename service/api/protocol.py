"""The HTTP/1.1 connection layer: uvicorn's httptools protocol with the limits it lacks.

uvicorn enforces nothing about a request's head or about a client that stops reading, so
`python -m service` runs this subclass of its httptools protocol (`http=` of uvicorn.run).
Per connection it adds:

- a size limit on the request line and headers (`SCE_MAX_HEADER_BYTES`): while a head is
  read, the parser is fed at most what is left of the allowance, and a head still
  incomplete when the allowance is used up gets 431 and the connection is closed. The
  bytes are cut before httptools holds them (it joins a header value that arrives in
  pieces by concatenating Python bytes, which is quadratic: 128 MiB took 33 s);
- a time limit on the head (`SCE_HEADER_TIMEOUT`), counted from the connection's start
  (a socket that sends nothing is closed) or from the first byte of a later request: 408
  and close when part of a head came, a plain close when nothing did;
- the keep-alive timeout (`SCE_KEEP_ALIVE_TIMEOUT`), counted from when the response has
  left the process (the transport's buffer drained), not from when the application handed
  its last byte over, so that it measures idle time whatever the response's size and the
  client's link (see `on_response_complete`);
- a send stall limit (`SCE_SEND_TIMEOUT`): a connection whose unsent response has not
  shrunk for that long (its client does not read) is reset, so a client that never reads
  cannot pin a large response in memory; a slow but steady reader is not cut;
- upgrade offers other than WebSocket (`Upgrade: h2c` from `curl --http2`) are ignored
  and the request is served as HTTP/1.1 with its body, as RFC 9110 7.8 allows (llhttp
  stops at such a head and uvicorn lost the body: a 400).

And it reads a body whose length is known without the parser (`_body_past_parser`): the
chunks go to the request as the socket gave them, and a fresh parser reads the next head.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import select
import socket
import struct
from asyncio import TimerHandle
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, cast

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.server import ServerState

from service.settings import Settings

if TYPE_CHECKING:
    from uvicorn._types import ASGIReceiveEvent

log = logging.getLogger("service.connections")

READ_AHEAD = "sce.read_ahead"
"""Scope key: how many bytes of a request's body the connection may buffer before it stops
reading the socket. uvicorn's 64 KiB until the application sets it, which it does once
the request's memory lease covers that much beyond what is stored (service/api/body.py):
so a request waiting for memory buffers no more than before."""

BODY_IN = "sce.body_in"
"""Scope key, True once the whole body is buffered: reading it cannot wait, so no pace
timer is armed for it (service/api/body.py). A small request's body usually comes with
its head, before the application starts."""

LINGER_SECONDS = 2.0
"""After a 431 or 408, how long what a client still sends is read and dropped."""


@dataclass(frozen=True)
class ConnectionLimits:
    """The connection-level settings, in the units the protocol uses."""

    max_header_bytes: int
    header_timeout: float
    keep_alive_timeout: float
    send_timeout: float

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            max_header_bytes=settings.max_header_bytes,
            header_timeout=settings.header_timeout,
            keep_alive_timeout=settings.keep_alive_timeout,
            send_timeout=settings.send_timeout,
        )


@lru_cache(maxsize=1)
def limits_from_environment() -> ConnectionLimits:
    """Read once per worker process, from the SCE_* variables the app reads too."""
    return ConnectionLimits.from_settings(Settings())


class _Cycle(RequestResponseCycle):
    """uvicorn's request cycle, handing the application each body chunk as the connection
    got it: uvicorn's appends chunks to a bytearray and hands over a bytes copy of it,
    two copies of every byte of a body (without them a 256 MiB upload took 0.20 s rather
    than 0.23, median of 12). uvicorn makes the cycle in on_headers_complete, so the
    protocol adopts it there: its class is switched, and it holds the chunks."""

    pending: list[bytes]
    pending_bytes: int

    @classmethod
    def adopt(cls, cycle: RequestResponseCycle) -> None:
        cycle.__class__ = cls
        adopted = cast(_Cycle, cycle)
        adopted.pending, adopted.pending_bytes = [], 0

    async def receive(self) -> ASGIReceiveEvent:
        # uvicorn's receive, but for the body's chunks
        if self.waiting_for_100_continue and not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.waiting_for_100_continue = False
        if not self.disconnected and not self.response_complete:
            self.flow.resume_reading()
            await self.message_event.wait()
            self.message_event.clear()
        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        pending = self.pending
        body = pending[0] if len(pending) == 1 else b"".join(pending)
        pending.clear()
        self.pending_bytes = 0
        return {"type": "http.request", "body": body, "more_body": self.more_body}


def _request_parser(protocol: HttpToolsProtocol) -> httptools.HttpRequestParser:
    """A parser as uvicorn makes one for each connection."""
    parser = httptools.HttpRequestParser(protocol)
    with contextlib.suppress(AttributeError):  # httptools < 0.6.3
        parser.set_dangerous_leniencies(lenient_data_after_close=True)
    return parser


def _has_pending_input(transport: asyncio.Transport) -> bool:
    """Whether the socket has bytes (or an EOF) the loop has not delivered yet."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    try:
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return False


def _reset(transport: asyncio.Transport) -> None:
    """Abort with an RST. A plain abort closes the socket with a FIN queued behind the
    unsent bytes in the kernel, which a client that does not read never receives: the
    kernel would hold that connection and its send buffer for minutes more."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class ServiceHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header size and time limits, a keep-alive timeout
    that counts only idle time, a send stall limit, and upgrade offers ignored."""

    limits: ConnectionLimits | None = None
    """Class-wide limits; None: `limits_from_environment()`."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits = self.limits or limits_from_environment()
        self.max_header_bytes = limits.max_header_bytes
        self.header_timeout = limits.header_timeout
        self.send_timeout = limits.send_timeout
        self.timeout_keep_alive = limits.keep_alive_timeout  # type: ignore[assignment]
        # A head is being read (at the start, and after each complete request), and how
        # many of its bytes the parser was fed.
        self.reading_head = True
        self.head_bytes = 0
        self.head_begun = False
        # Bytes of the current request's body still to come, when its length is known: the
        # parser is fed no further, so that the head of a request pipelined behind it is
        # counted from its first byte.
        self.body_left: int | None = None
        self.head_tail = b""  # the last bytes of a head fed so far, for a split blank line
        self.header_timer: TimerHandle | None = None
        self.send_stall_timer: TimerHandle | None = None
        self.send_stall_mark = 0  # bytes unsent when the stall timer was last started
        # The keep-alive timer waits for the response to leave the transport's buffer.
        self.keep_alive_on_drain = False
        # on_message_begin and on_headers_complete of a made-up head are swallowed (see
        # _ignore_upgrade).
        self.swallow_head = False
        # After a 431 or 408 nothing more of this connection's input is read.
        self.refusing = False

    # Connection events

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        self._cancel_send_stall_timer()
        self.keep_alive_on_drain = False
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if self.refusing:
            return
        buffer, start = memoryview(data), 0
        while start < len(buffer) and not self.refusing and not self.transport.is_closing():
            end = len(buffer)
            if self.reading_head:
                if self.header_timer is None:  # the first byte of a later request's head
                    self._start_header_timer()
                end = self._head_end(data, start)
                self.head_bytes += end - start
            elif self.body_left and self._body_past_parser():
                end = min(end, start + self.body_left)
                self.on_body(data if end - start == len(data) else data[start:end])
                start = end
                if not self.body_left:
                    self._end_body_past_parser()
                continue
            elif self.body_left is not None:  # stop where a pipelined request begins
                end = min(end, start + max(self.body_left, 1))
            try:
                self.parser.feed_data(buffer[start:end])
            except httptools.HttpParserError:
                msg = "Invalid HTTP request received."
                self.logger.warning(msg)
                self.send_400_response(msg)
                return
            except httptools.HttpParserUpgrade as exc:
                if self._should_upgrade():
                    self.handle_websocket_upgrade()
                    return
                self._ignore_upgrade()
                start += int(exc.args[0])  # the rest is the body, then further requests
                continue
            start = end
            if self.reading_head and self.head_bytes >= self.max_header_bytes:
                self._refuse_head(
                    431,
                    f"the request line and headers exceed {self.max_header_bytes} bytes "
                    "(SCE_MAX_HEADER_BYTES)",
                )
                return

    def _body_past_parser(self) -> bool:
        """Whether a body of known length goes to on_body as it came, past the parser:
        llhttp only counts its bytes, and httptools hands each chunk on as a new copy.
        Past the parser, a 256 MiB upload took 0.24 s rather than 0.34 s (median of 12,
        docs/benchmarks.md). Not for an upgrade offer (the parser stops at its head) nor
        for a made-up head's body (_ignore_upgrade)."""
        return not self.swallow_head and not self.parser.should_upgrade()

    def _end_body_past_parser(self) -> None:
        """The body has come: the request is complete, and a fresh parser (this one still
        waits for the body) reads the next request's head."""
        self.on_message_complete()
        self.parser = _request_parser(self)

    def _head_end(self, data: bytes, start: int) -> int:
        """Where to stop feeding a head: after its blank line if it is in `data`, else at
        the end of the allowance. So the parser never holds more than the allowance, and
        a request pipelined behind this one is counted from its own first byte."""
        limit = min(len(data), start + self.max_header_bytes - self.head_bytes)
        found = data.find(b"\r\n\r\n", start, limit)
        if found >= 0:
            self.head_tail = b""
            return found + 4
        joint = (self.head_tail + data[start : start + 3]).find(b"\r\n\r\n")
        if joint >= 0:  # a blank line split between two reads
            end = start + joint + 4 - len(self.head_tail)
            self.head_tail = b""
            return min(end, limit)
        self.head_tail = (self.head_tail + data[max(start, limit - 3) : limit])[-3:]
        return limit

    # Parser callbacks

    def on_message_begin(self) -> None:
        if self.swallow_head:
            return
        super().on_message_begin()
        self.head_begun = True
        if self.header_timer is None:  # a pipelined request that began mid-chunk
            self._start_header_timer()

    def on_headers_complete(self) -> None:
        if self.swallow_head:
            self.swallow_head = False  # what follows is the real request's body
            return
        self.reading_head = False
        self._cancel_header_timer()
        self.body_left = None  # a chunked body: its end is not known before it comes
        if not any(name == b"transfer-encoding" for name, _ in self.headers):
            length = next((v for name, v in self.headers if name == b"content-length"), b"0")
            self.body_left = int(length)  # llhttp accepted it: digits
        previous = self.cycle
        super().on_headers_complete()
        if self.cycle is not previous:  # a request (not a WebSocket upgrade)
            _Cycle.adopt(self.cycle)

    def on_body(self, body: bytes) -> None:
        # uvicorn's on_body, with the read-ahead the application granted in place of its
        # fixed 64 KiB: a pause and resume of reading (two epoll calls and a loop turn)
        # per 64-256 KiB was a fifth of a 256 MiB upload's time (bench/targets.py).
        if self.body_left is not None:
            self.body_left -= len(body)
        cycle = cast(_Cycle, self.cycle)
        if (self.parser.should_upgrade() and self._should_upgrade()) or cycle.response_complete:
            return
        cycle.pending.append(body)
        cycle.pending_bytes += len(body)
        if cycle.pending_bytes > cast(int, cycle.scope.get(READ_AHEAD, HIGH_WATER_LIMIT)):
            self.flow.pause_reading()
        cycle.message_event.set()

    def on_message_complete(self) -> None:
        if self.parser.should_upgrade() and not self._should_upgrade():
            return  # an ignored upgrade offer: its body follows (see _ignore_upgrade)
        super().on_message_complete()
        self.cycle.scope[BODY_IN] = True  # type: ignore[literal-required]
        self.reading_head = True
        self.head_bytes = 0
        self.head_begun = False
        self.head_tail = b""

    def _ignore_upgrade(self) -> None:
        """Serve a request that offered an upgrade other than WebSocket as HTTP/1.1.

        llhttp treats whatever follows such a head as the new protocol's bytes and ends
        the message there; httptools resumes its parser, which then expects a new request.
        So the parser is fed a made-up head with the original request's body framing,
        whose callbacks are swallowed: the bytes that follow are parsed as that body and
        go to the request already started, and the requests after it parse as usual."""
        log.debug("ignored an Upgrade offer; serving HTTP/1.1")
        framing = b"content-length: 0"
        for name, value in self.headers:
            if name == b"content-length":
                framing = b"content-length: " + value
            elif name == b"transfer-encoding":  # llhttp accepted it: chunked comes last
                framing = b"transfer-encoding: chunked"
        url, headers = self.url, self.headers  # the request's: on_url and on_header
        self.headers = []  # write to these, and the made-up head's are thrown away
        self.swallow_head = True
        try:
            self.parser.feed_data(b"PUT / HTTP/1.1\r\n" + framing + b"\r\n\r\n")
        except httptools.HttpParserError:  # pragma: no cover - the framing was accepted once
            self.send_400_response("Invalid HTTP request received.")
        finally:
            self.swallow_head = False
            self.url, self.headers = url, headers

    # Header limits

    def _start_header_timer(self) -> None:
        self._cancel_header_timer()
        self.header_timer = self.loop.call_later(self.header_timeout, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _header_timeout(self) -> None:
        self.header_timer = None
        if self.transport.is_closing() or not self.reading_head:
            return
        idle = self.cycle is None or self.cycle.response_complete
        if idle and self.head_bytes == 0 and not self.head_begun:
            log.debug("closed a connection that sent no request in %ss", self.header_timeout)
            self.transport.close()
            return
        self._refuse_head(
            408,
            f"the request line and headers took over {self.header_timeout:g} s "
            "(SCE_HEADER_TIMEOUT)",
        )

    def _refuse_head(self, status: int, detail: str) -> None:
        """Answer a head that broke a limit and close, reading no more of its input.

        The close lingers: the write side is shut (FIN after the answer) and what the
        client still sends is read and dropped for up to LINGER_SECONDS, or until it
        closes. Closing at once, with its unread bytes in the socket, would send an RST
        that can destroy the answer before a client still sending its head has read it."""
        self.refusing = True
        self._cancel_header_timer()
        log.info("%d for %s: %s", status, self._peer(), detail)
        if self.cycle is not None and not self.cycle.response_complete:
            # A response is still being written (the head is a pipelined request's):
            # it finishes, and the connection closes after it.
            self.cycle.keep_alive = False
            self.flow.pause_reading()
            return
        body = json.dumps({"detail": detail}).encode()
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"connection: close\r\n\r\n",
                body,
            ]
        )
        self.transport.write(b"".join(content))
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self.flow.resume_reading()
        self.loop.call_later(LINGER_SECONDS, self._end_linger)

    def _end_linger(self) -> None:
        if self.transport.is_closing():
            return
        if self.transport.get_write_buffer_size():
            _reset(self.transport)  # it did not even read the answer
        else:
            self.transport.close()

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "a client"

    # Keep-alive

    def _unset_keepalive_if_required(self) -> None:
        self.keep_alive_on_drain = False
        super()._unset_keepalive_if_required()

    def on_response_complete(self) -> None:
        """uvicorn arms the keep-alive timer here, when the last body chunk is handed to
        the transport: the seconds a large response takes to reach its client counted as
        idle time, and where the close fell depended on the response's size and the link.
        With 524 MB responses it fell where a tritonclient training loop sends its next
        request: tritonclient checks a pooled connection for the server's close when it
        takes it, then spends ~0.3 s joining its request body before it sends; a close in
        between fails the POST (HTTPConnectionClosed, not retried). While the transport
        is paused for writing, the timer now waits for it to drain (resume_writing).

        The race itself is HTTP/1.1's: a client that pauses between requests for about the
        keep-alive timeout can meet the close whenever it is armed. The timeout has to be
        longer than clients' pauses (and than a load balancer's idle timeout)."""
        super().on_response_complete()
        if self.transport.is_closing():
            if self.transport.get_write_buffer_size() and self.send_stall_timer is None:
                self._start_send_stall_timer()  # a close waits for a flush: bound it
            return
        if self.timeout_keep_alive_task is not None and self.flow.write_paused:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None
            self.keep_alive_on_drain = True

    def timeout_keep_alive_handler(self) -> None:
        self.timeout_keep_alive_task = None
        if self.transport.is_closing():
            return
        if self.transport.get_write_buffer_size():
            # The client has not read the end of its response in all that time.
            _reset(self.transport)
        elif not _has_pending_input(self.transport):
            self.transport.close()
        # else: the next request has arrived and the loop has not delivered it yet
        # (libuv runs due timers before it polls for input): data_received comes next.

    # Send stall limit

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.send_stall_timer is None:
            self._start_send_stall_timer()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._cancel_send_stall_timer()
        if self.transport.is_closing():
            if self.transport.get_write_buffer_size():
                self._start_send_stall_timer()
            return
        if self.keep_alive_on_drain:
            self.keep_alive_on_drain = False
            if self.timeout_keep_alive_task is None and not self.pipeline:
                self.timeout_keep_alive_task = self.loop.call_later(
                    self.timeout_keep_alive, self.timeout_keep_alive_handler
                )

    def _start_send_stall_timer(self) -> None:
        self._cancel_send_stall_timer()
        self.send_stall_mark = self.transport.get_write_buffer_size()
        self.send_stall_timer = self.loop.call_later(self.send_timeout, self._send_stalled)

    def _cancel_send_stall_timer(self) -> None:
        if self.send_stall_timer is not None:
            self.send_stall_timer.cancel()
            self.send_stall_timer = None

    def _send_stalled(self) -> None:
        """A response handed over in one large write keeps the transport paused until
        nearly all of it is sent, however steadily the client reads: what counts is that
        nothing left the buffer in `send_timeout` seconds."""
        self.send_stall_timer = None
        unsent = self.transport.get_write_buffer_size()
        if not unsent:
            return
        if unsent < self.send_stall_mark:  # the client read some: wait again
            self.send_stall_mark = unsent
            self.send_stall_timer = self.loop.call_later(self.send_timeout, self._send_stalled)
            return
        log.warning(
            "aborted the connection of %s: it read nothing of its response for %g s "
            "(SCE_SEND_TIMEOUT), %d bytes unsent",
            self._peer(),
            self.send_timeout,
            unsent,
        )
        _reset(self.transport)
