"""The resource model against a real server: memory, the event loop, slow clients, load.

Bounded versions of bench/pressure.py: the hostile requests of the hardening issue with
the server's peak RSS growth measured and bounded, liveness probed from another process
while they run, slow uploads beside good requests, and 64 clients of small requests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from bench import pressure, servers
from tests.conftest import server_log, start_server, stop_server

BUDGET = 512 << 20
MAX_REQUEST = 64 << 20
SOFT = "/v1/softmax_cross_entropy_with_logits"
SMALL = {"labels": [[0.0, 1.0]] * 4, "logits": [[0.5, -0.5]] * 4}


@pytest.fixture(scope="module")
def budgeted() -> Iterator[tuple[str, int]]:
    """A server with a 512 MiB budget and a 64 MiB body limit."""
    env = {
        "SCE_MEMORY_BUDGET": str(BUDGET),
        "SCE_MAX_REQUEST_BYTES": str(MAX_REQUEST),
        "SCE_ACCESS_LOG": "false",
    }
    proc, url = start_server(env=env)
    try:
        yield url, proc.pid
    finally:
        stop_server(proc)


def test_hostile_requests_hold_bounded_memory_and_the_loop_stays_live(
    budgeted: tuple[str, int],
) -> None:
    url, pid = budgeted
    httpx.post(f"{url}{SOFT}", json=SMALL).raise_for_status()  # warm
    servers.reset_peak_rss(pid)
    base = servers.rss_kib(pid) * 1024
    prober = pressure.probe(url, 20)
    time.sleep(0.5)
    statuses = asyncio.run(
        pressure.hostile_mix(url, pressure.hostile_cases(MAX_REQUEST), copies=2, slow=8)
    )
    latencies = pressure.latencies(prober)
    growth = servers.rss_kib(pid, "VmHWM") * 1024 - base
    print(statuses, f"growth {growth / 2**20:.0f} MiB", np.percentile(latencies, [50, 99, 100]))
    # Every hostile request got a clear 4xx, or the broadcast a 200 (it is valid, just big).
    for key in statuses:
        _, status = key.rsplit(": ", 1)
        assert status.isdigit() and (status.startswith("4") or status == "200"), key
    assert statuses["broadcast [16384,1] x [1,16384] f64: 200"] == 2
    # Before: 4.1 GiB for one broadcast request; now the budget plus the process's slack.
    assert growth < BUDGET + (256 << 20)
    # The issue asks for 100 ms; on this shared 2-CPU machine the test allows some noise
    # (bench/pressure.py reports the figures).
    assert np.percentile(latencies, 99) < 250
    assert httpx.post(f"{url}{SOFT}", json=SMALL).status_code == 200


def test_slow_uploads_do_not_lock_out_good_requests() -> None:
    proc, url = start_server(env={"SCE_MIN_DATA_RATE": "1024"})
    try:

        async def scenario() -> list[int]:
            slow = asyncio.create_task(pressure._slow_uploads(url, 32, 8))
            await asyncio.sleep(1)
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                good = [(await client.post(SOFT, json=SMALL)).status_code for _ in range(50)]
            await slow
            return good

        started = time.monotonic()
        statuses = asyncio.run(scenario())
        assert statuses == [200] * 50
        assert time.monotonic() - started < 30
    finally:
        stop_server(proc)


def test_64_clients_of_small_requests_all_get_200() -> None:
    proc, url = start_server(env={"SCE_ACCESS_LOG": "false"})
    try:

        async def scenario() -> list[int | str]:
            limits = httpx.Limits(max_connections=64)
            async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

                async def one_client() -> list[int | str]:
                    answers: list[int | str] = []
                    for _ in range(60):
                        try:
                            response = await client.post(SOFT, json=SMALL)
                        except httpx.HTTPError as exc:  # kept, so a failure says what it was
                            answers.append(f"{type(exc).__name__}: {exc}")
                        else:
                            answers.append(response.status_code)
                    return answers

                results = await asyncio.gather(*(one_client() for _ in range(64)))
            return [s for r in results for s in r]

        statuses = asyncio.run(scenario())
        assert len(statuses) == 64 * 60
        assert [s for s in statuses if s != 200][:5] == [], server_log(proc)[-3000:]
    finally:
        stop_server(proc)
