"""Body reading without a server: limits are enforced while streaming and inflating."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator

import pytest

from service.api.body import read_body
from service.errors import MalformedBody, PayloadTooLarge


class FakeRequest:
    """Just what read_body uses of a Starlette Request; counts the chunks it hands out."""

    def __init__(self, body: bytes, headers: dict[str, str], chunk: int = 16 * 1024) -> None:
        self.headers = headers
        self._chunks = [body[i : i + chunk] for i in range(0, len(body), chunk)]
        self.consumed = 0

    async def stream(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            self.consumed += 1
            yield chunk

    @property
    def total_chunks(self) -> int:
        return len(self._chunks)


def _read(request: FakeRequest, limit: int) -> bytes | bytearray:
    return asyncio.run(read_body(request, limit))  # type: ignore[arg-type]


def test_gzip_bomb_stops_inflating_at_the_limit() -> None:
    bomb = gzip.compress(b"\0" * (256 * 1024 * 1024), compresslevel=9)
    request = FakeRequest(bomb, {"content-encoding": "gzip"}, chunk=4096)
    with pytest.raises(PayloadTooLarge):
        _read(request, 1024 * 1024)
    # 1 MiB of zeros is ~1 KiB compressed: the bomb is refused within its first chunks.
    assert request.consumed <= 2 < request.total_chunks


def test_stream_without_length_stops_at_the_limit() -> None:
    request = FakeRequest(b"x" * (1024 * 1024), {}, chunk=1024)
    with pytest.raises(PayloadTooLarge):
        _read(request, 64 * 1024)
    assert request.consumed == 65


def test_declared_length_over_limit_reads_nothing() -> None:
    request = FakeRequest(b"x" * 10, {"content-length": str(10**12)})
    with pytest.raises(PayloadTooLarge):
        _read(request, 1024)
    assert request.consumed == 0


def test_body_shorter_than_content_length_is_400() -> None:
    with pytest.raises(MalformedBody, match="ended after 10 of 20"):
        _read(FakeRequest(b"x" * 10, {"content-length": "20"}), 1024)


def test_inflated_body_is_returned_whole() -> None:
    payload = bytes(range(256)) * 1000
    request = FakeRequest(gzip.compress(payload), {"content-encoding": "gzip"}, chunk=100)
    assert _read(request, 10**6) == payload
