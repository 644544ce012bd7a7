"""A short, bounded version of the load run (`make soak` runs the long one): concurrent
clients with mixed good and bad requests against a real server on loopback."""

from __future__ import annotations

import asyncio

from bench.load import kinds, run
from tests.conftest import start_server, stop_server


def test_mixed_load_has_no_errors() -> None:
    # A small memory budget, so that requests queue for it (503s, retried by the load
    # clients, may occur); tests/api/test_limits.py checks the queue deterministically.
    proc, url = start_server(env={"SCE_MEMORY_BUDGET": str(256 << 20)})
    try:
        report = asyncio.run(run(url, clients=16, duration=6, pid=proc.pid))
    finally:
        stop_server(proc)
    assert report.errors == []
    assert report.sent > 100
    assert set(report.latencies) == {k.name for k in kinds()}
    assert report.rss_mib and max(report.rss_mib) < 1024
