"""Where a small request's time goes: each stage's median from the stage record
(service/api/stages.py) over in-process ASGI calls of the whole app, and what is left
outside the route; then, with `--http`, the server's CPU time per request under wrk
(its process's user + system time over the requests served), next to the bare FastAPI
parse endpoint's, to compare with the in-process figures.

    python -m bench.stages [--calls 3000] [--http --seconds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import time
from typing import Any

from bench import servers
from bench.http import BARE, payloads, wrk, wrk_cpu
from service.api import stages
from service.api.protocol import BODY_IN
from service.app import create_app
from service.settings import Settings

MARKS = ("start", "read", "parsed", "queued", "decoded", "computed", "encoded")


async def _call(app: Any, path: str, body: bytes, headers: dict[str, str]) -> None:
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
        BODY_IN: True,  # as the connection marks a body it holds whole
        "headers": [
            *((k.lower().encode(), v.encode()) for k, v in headers.items()),
            (b"content-length", str(len(body)).encode()), (b"host", b"bench"),
        ],
    }  # fmt: skip
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop() if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            assert message["status"] == 200, message

    await app(scope, receive, send)


def in_process(name: str, calls: int) -> dict[str, float]:
    """Median microseconds of each stage, and the whole call's mean, for `name`."""
    durations: dict[str, list[float]] = {}
    finish = stages.Timeline._finish

    def record(timeline: stages.Timeline, error: BaseException | None) -> None:
        marks = [(m, getattr(timeline, m)) for m in MARKS] + [("end", stages.now())]
        for (a, start), (b, end) in itertools.pairwise(marks):
            if start and end:
                durations.setdefault(f"{a} -> {b}", []).append((end - start) / 1e3)
        finish(timeline, error)

    async def run() -> float:
        app = create_app(Settings())
        path, body, headers = payloads()[name]
        async with app.router.lifespan_context(app):
            for _ in range(500):
                await _call(app, path, body, headers)
            durations.clear()
            start = time.perf_counter()
            for _ in range(calls):
                await _call(app, path, body, headers)
            return (time.perf_counter() - start) / calls * 1e6

    stages.Timeline._finish = record  # type: ignore[method-assign]
    try:
        total = asyncio.run(run())
    finally:
        stages.Timeline._finish = finish  # type: ignore[method-assign]
    result = {stage: statistics.median(values) for stage, values in durations.items()}
    result["outside the route"] = total - sum(result.values())
    result["whole call (mean)"] = total
    return result


def cpu_per_request(seconds: float) -> dict[str, dict[str, float]]:
    """The server process's CPU microseconds per request under wrk (8 connections)."""
    out = {}
    for name in ("v1 JSON", BARE):
        port = servers.free_port()
        path, body, headers = payloads()[name]
        spec = servers.bare(port) if name == BARE else servers.service(port)
        with servers.running(*spec) as pid:
            url = f"http://127.0.0.1:{port}{path}"
            wrk(url, body, headers, 8, 2)  # warm
            rps, cpu = wrk_cpu(url, body, headers, 8, seconds, pid)
        out[name] = {"req/s": rps, "cpu us/request": cpu * 1e6}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--http", action="store_true")
    parser.add_argument("--seconds", type=float, default=6)
    args = parser.parse_args()
    for name in ("v1 JSON", "v2 JSON", "v2 binary"):
        print(name)
        for stage, us in in_process(name, args.calls).items():
            print(f"  {stage:<22} {us:7.1f} us")
    if args.http:
        for name, figures in cpu_per_request(args.seconds).items():
            print(f"{name}: {figures['req/s']:.0f} req/s, {figures['cpu us/request']:.0f} us CPU")


if __name__ == "__main__":
    main()
