"""What the stage timeline (statistics and tracing's hooks) costs a small request, side by
side: this tree with tracing off (no OTEL_* variables, as by default) against the same
tree without the hooks (`--base`), and this tree with tracing on (every span made,
batched, and handed to an exporter that drops it) for the record.

`--make-base DIR` writes that hookless tree: a copy of this one whose
service/api/pipeline.py and service/api/inference.py are those of `--hookless` (the
commit before the hooks) and whose routes lose their `@stages.observed` line.

Each request is an in-process ASGI call of the whole app (FastAPI's telemetry, the
middleware, the route, the engine), with no socket, so that what differs is what the
trees do per request, not the network's noise: small requests (32 x 10 FP32, loss
back) on v1 JSON, v2 JSON and v2 binary. Every configuration runs in its own process,
alternated, best of `--rounds` rounds of `--calls` calls.

    python -m bench.tracing --make-base /tmp/hookless
    python -m bench.tracing --base /tmp/hookless [--rounds 5 --calls 3000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench import servers

SCRIPT = """
import asyncio, json, sys, time
from service.app import create_app
from service.settings import Settings
from bench.http import payloads

mode, calls = sys.argv[1], int(sys.argv[2])
if mode == "on":
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def export(self, spans):
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    app = create_app(Settings(), tracer_provider=provider)
else:
    app = create_app(Settings())


async def call(path, body, headers):
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
        "headers": [
            *((k.lower().encode(), v.encode()) for k, v in headers.items()),
            (b"content-length", str(len(body)).encode()), (b"host", b"bench"),
        ],
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    status = []

    async def receive():
        if messages:
            return messages.pop()
        await asyncio.sleep(3600)

    async def send(message):
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await app(scope, receive, send)
    assert status == [200], status


async def main():
    best = {}
    async with app.router.lifespan_context(app):
        for name in ("v1 JSON", "v2 JSON", "v2 binary"):
            path, body, headers = payloads()[name]
            for _ in range(300):
                await call(path, body, headers)
            for _ in range(3):
                start = time.perf_counter()
                for _ in range(calls):
                    await call(path, body, headers)
                us = (time.perf_counter() - start) / calls * 1e6
                best[name] = min(best.get(name, 1e9), us)
    print(json.dumps(best))


asyncio.run(main())
"""


def measure(tree: Path, mode: str, calls: int) -> dict[str, float]:
    """Microseconds per call (best of 3 runs of `calls`) in a fresh process of `tree`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = f"{tree}:{servers.ROOT}"
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode, str(calls)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(out.stdout.splitlines()[-1])
    return result


HOOKLESS = "e9aa3ce"  # the commit before the stage timeline


def make_base(dest: Path, commit: str) -> None:
    """This tree without the timeline's hooks, at `dest`."""
    ignore = shutil.ignore_patterns(".venv*", "__pycache__")
    for part in ("service", "bench"):
        shutil.copytree(servers.ROOT / part, dest / part, ignore=ignore, dirs_exist_ok=True)
    for path in ("service/api/pipeline.py", "service/api/inference.py"):
        old = subprocess.run(
            ["git", "show", f"{commit}:{path}"],
            cwd=servers.ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        (dest / path).write_text(old)
    for path in ("service/api/v1.py", "service/api/v2.py"):
        lines = (dest / path).read_text().splitlines(keepends=True)
        (dest / path).write_text("".join(x for x in lines if "@stages.observed" not in x))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, help="a tree without the hooks")
    parser.add_argument("--make-base", type=Path, help="write that tree here, and stop")
    parser.add_argument("--hookless", default=HOOKLESS, help="the commit before the hooks")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()
    if args.make_base is not None:
        make_base(args.make_base, args.hookless)
        return
    if args.base is None:
        parser.error("--base (or --make-base) is required")
    configurations = {
        "base (no hooks)": (args.base.resolve(), "off"),
        "this tree, tracing off": (servers.ROOT, "off"),
        "this tree, tracing on": (servers.ROOT, "on"),
    }
    best: dict[str, dict[str, float]] = {name: {} for name in configurations}
    for _ in range(args.rounds):
        for name, (tree, mode) in configurations.items():
            for path, us in measure(tree, mode, args.calls).items():
                best[name][path] = min(best[name].get(path, 1e9), us)
    base, off, on = (best[name] for name in configurations)
    columns = ("base us", "off us", "on us", "off/base", "on/off")
    print(f"{'request':<10} " + " ".join(f"{c:>8}" for c in columns))
    for path in base:
        print(
            f"{path:<10} {base[path]:8.1f} {off[path]:8.1f} {on[path]:8.1f} "
            f"{off[path] / base[path]:8.3f} {on[path] / off[path]:8.3f}"
        )
    print(json.dumps(best))


if __name__ == "__main__":
    main()
