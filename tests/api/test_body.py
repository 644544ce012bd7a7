"""Body reading without a server: limits are enforced while streaming and inflating."""

from __future__ import annotations

import asyncio
import gzip

import pytest

from service.api import body
from service.api.admission import BodyPace, MemoryBudget
from service.api.body import read_body
from service.api.protocol import BODY_IN
from service.errors import MalformedBody, PayloadTooLarge, RequestTimeout


class FakeRequest:
    """Just what read_body uses of a Starlette Request; counts the chunks it hands out."""

    def __init__(self, body: bytes, headers: dict[str, str], chunk: int = 16 * 1024) -> None:
        self.headers = headers
        self.scope: dict[str, object] = {}
        self._chunks = [body[i : i + chunk] for i in range(0, len(body), chunk)]
        self.consumed = 0

    async def receive(self) -> dict[str, object]:
        chunk = self._chunks[self.consumed] if self.consumed < len(self._chunks) else b""
        self.consumed += 1
        more = self.consumed < len(self._chunks)
        return {"type": "http.request", "body": chunk, "more_body": more}

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


class TrickleRequest(FakeRequest):
    """Sends its chunks `gap` seconds apart."""

    def __init__(self, body: bytes, gap: float, chunk: int) -> None:
        super().__init__(body, {"content-length": str(len(body))}, chunk)
        self.gap = gap

    async def receive(self) -> dict[str, object]:
        await asyncio.sleep(self.gap)
        return await super().receive()


def test_a_body_below_the_minimum_rate_is_408(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(BodyPace, "GRACE", 0.2)
    request = TrickleRequest(b"x" * 1000, gap=0.1, chunk=10)  # 100 bytes/s
    pace = BodyPace(timeout=60, rate=1000)
    with pytest.raises(RequestTimeout, match=r"slower than 1000 bytes/s.*SCE_MIN_DATA_RATE"):
        asyncio.run(read_body(request, 10_000, pace=pace))  # type: ignore[arg-type]
    # cut after about GRACE + what it sent / rate, not after the whole body
    assert request.consumed < 10


def test_a_body_at_the_minimum_rate_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(BodyPace, "GRACE", 0.2)
    request = TrickleRequest(b"x" * 1000, gap=0.01, chunk=100)  # ~10 kB/s
    pace = BodyPace(timeout=60, rate=1000)
    assert asyncio.run(read_body(request, 10_000, pace=pace)) == b"x" * 1000  # type: ignore[arg-type]


def test_a_body_past_the_overall_timeout_is_408() -> None:
    request = TrickleRequest(b"x" * 100, gap=0.1, chunk=10)
    with pytest.raises(RequestTimeout, match=r"within 0\.3 s \(SCE_BODY_TIMEOUT\)"):
        asyncio.run(read_body(request, 10_000, pace=BodyPace(timeout=0.3, rate=0)))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "tail", [gzip.compress(b"second member"), b"garbage"], ids=["second-member", "garbage"]
)
def test_bytes_after_the_gzip_stream_are_400(tail: bytes) -> None:
    body = gzip.compress(b'{"labels": [1.0]}') + tail
    for chunk in (7, len(body)):  # the tail in its own chunk, and in the last one
        with pytest.raises(MalformedBody, match="follow the end of the gzip stream"):
            _read(FakeRequest(body, {"content-encoding": "gzip"}, chunk=chunk), 10**6)


def test_the_body_is_held_on_the_budget_as_it_arrives() -> None:
    async def scenario() -> tuple[int, int]:
        budget = MemoryBudget(64 << 20, max_queue=1, timeout=1)
        lease = budget.lease()
        body = b"x" * (3 << 20)
        request = FakeRequest(body, {"content-length": str(len(body))}, chunk=1 << 20)
        seen = []
        real = lease.hold

        async def spy(total: int, *, body: bool = False) -> None:
            seen.append(total)
            await real(total, body=body)

        lease.hold = spy  # type: ignore[method-assign]
        assert await read_body(request, 10 << 20, lease=lease) == body  # type: ignore[arg-type]
        return seen[0], lease.held

    first, held = asyncio.run(scenario())
    assert first == 1 << 20  # a slab, not the declared 3 MiB
    assert held == 3 << 20


def test_inflating_yields_the_event_loop() -> None:
    async def scenario() -> int:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        one_chunk = gzip.compress(b"\0" * (32 << 20))
        request = FakeRequest(one_chunk, {"content-encoding": "gzip"}, chunk=len(one_chunk))
        await read_body(request, 64 << 20)  # type: ignore[arg-type]
        stop.set()
        await task
        return ticks

    assert asyncio.run(scenario()) >= 16  # 32 MiB inflated in 1 MiB steps, the loop ran between


def test_time_spent_waiting_for_memory_does_not_count_against_the_pace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(BodyPace, "GRACE", 0.2)

    async def scenario() -> bool:
        budget = MemoryBudget(2 << 20, max_queue=4, timeout=5)
        hog = budget.lease()
        await hog.hold(1 << 20)
        asyncio.get_running_loop().call_later(0.6, hog.release)  # the body waits ~0.6 s
        body = b"x" * (3 << 19)  # 1.5 MiB: its second slab does not fit until then
        request = TrickleRequest(body, gap=0.01, chunk=1 << 18)  # ~25 MiB/s
        pace = BodyPace(timeout=60, rate=8 << 20)  # due within 0.2 s + what arrived / rate
        got = await read_body(request, 4 << 20, pace=pace, lease=budget.lease())  # type: ignore[arg-type]
        return bytes(got) == body

    assert asyncio.run(scenario())


def test_a_body_already_in_arms_no_pace_timer() -> None:
    """The connection marks a body it holds whole (protocol.BODY_IN): reading it cannot
    wait, so no timer is armed; without the mark one is."""

    async def watches(scope: dict[str, object]) -> bool:
        request = FakeRequest(b"x" * 10, {"content-length": "10"})
        request.scope = scope
        chunks = body._Chunks(request, 100, BodyPace(timeout=1, rate=0))  # type: ignore[arg-type]
        try:
            assert await chunks.next() == b"x" * 10
            return chunks.watch is not None
        finally:
            chunks.close()

    assert asyncio.run(watches({})) is True
    assert asyncio.run(watches({BODY_IN: True})) is False
