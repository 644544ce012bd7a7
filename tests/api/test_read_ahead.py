"""The connection's read-ahead: uvicorn's 64 KiB while a request's memory is not held,
what its lease covers (up to 1 MiB) once it is (service/api/protocol.py, body.py).

The protocol runs on a real loopback connection in this process, so that what it has
buffered and whether it reads the socket can be looked at directly.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.requests import Request
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.server import ServerState

from service.api.admission import MemoryBudget
from service.api.body import READ_AHEAD_MAX, read_body
from service.api.protocol import READ_AHEAD, ConnectionLimits, ServiceHttpProtocol

BODY = 8 << 20
SOCKET_READ = 256 << 10  # the most one read of asyncio's transport hands the protocol


class Harness:
    """One ServiceHttpProtocol serving `app` on loopback; a client uploading BODY bytes."""

    def __init__(self, app: Any) -> None:
        self.config = Config(app=app, lifespan="off")
        self.config.load()
        self.protocols: list[ServiceHttpProtocol] = []
        self.state = ServerState()

    def protocol(self) -> ServiceHttpProtocol:
        ServiceHttpProtocol.limits = ConnectionLimits(1 << 16, 30.0, 5.0, 30.0)
        made = ServiceHttpProtocol(self.config, self.state, {})
        self.protocols.append(made)
        return made

    async def upload(self) -> tuple[asyncio.Server, asyncio.StreamWriter]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(self.protocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        head = f"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: {BODY}\r\n\r\n".encode()
        writer.write(head + bytes(BODY))  # the stream buffers what the socket does not take
        await asyncio.sleep(0.3)  # the server reads until its protocol pauses
        return server, writer


async def _buffered_while(hold: asyncio.Event, *, grant: int | None) -> int:
    """What the protocol buffered of the body while the application read none of it after
    its first chunk, having set the read-ahead to `grant` (None: left alone)."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        if grant is not None:
            scope[READ_AHEAD] = grant
        await hold.wait()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    harness = Harness(app)
    server, writer = await harness.upload()
    [protocol] = harness.protocols
    buffered: int = protocol.cycle.pending_bytes  # type: ignore[attr-defined]
    assert not protocol.transport.is_reading()  # paused, not at the end of the body
    hold.set()
    writer.close()
    server.close()
    return buffered


@pytest.mark.parametrize("grant", [None, READ_AHEAD_MAX])
def test_a_connection_buffers_what_its_request_was_granted_and_no_more(
    grant: int | None,
) -> None:
    buffered = asyncio.run(_buffered_while(asyncio.Event(), grant=grant))
    allowed = HIGH_WATER_LIMIT if grant is None else grant
    assert buffered <= allowed + SOCKET_READ
    if grant is not None:
        assert buffered > HIGH_WATER_LIMIT + SOCKET_READ  # more than uvicorn's own


def test_reading_a_body_grants_what_the_lease_covers_beyond_it() -> None:
    """read_body with a lease sets the read-ahead to the lease's slack (at most 1 MiB),
    so what the connection buffers is counted on the memory budget."""

    async def main() -> tuple[object, int, int]:
        budget = MemoryBudget(64 << 20, max_queue=4, timeout=5.0)
        lease = budget.lease()
        chunks = [b"x" * (16 << 10)] * 8

        async def receive() -> dict[str, object]:
            body = chunks.pop() if chunks else b""
            return {"type": "http.request", "body": body, "more_body": bool(chunks)}

        scope = {"type": "http", "method": "POST", "path": "/", "headers": []}
        body = await read_body(Request(scope, receive), 1 << 30, lease=lease)
        return scope.get(READ_AHEAD), lease.held, len(body)

    granted, held, size = asyncio.run(main())
    assert granted == min(READ_AHEAD_MAX, held - size)
    assert isinstance(granted, int) and granted > HIGH_WATER_LIMIT
