"""Load and soak: many concurrent clients sending mixed good and bad requests (loopback only).

    python -m bench.load --clients 64 --duration 60            # starts a server, samples its RSS
    python -m bench.load --clients 64 --duration 600 --soak    # make soak: RSS growth < 10%

Good requests must come back 200 with the right loss (checked against numpy); bad ones
must come back 4xx. A 503 (the server's backpressure) is retried after its Retry-After,
as a well-behaved client does, and counted. Prints a table; exits non-zero on any error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from bench import servers

SOFT = "/v1/softmax_cross_entropy_with_logits"
INFER = "/v2/models/softmax_cross_entropy_with_logits/infer"


@dataclass(frozen=True)
class Kind:
    name: str
    path: str
    body: bytes
    headers: dict[str, str]
    good: bool
    expected: np.ndarray | None = None  # the loss a good request must return
    weight: int = 1


def _reference(labels: np.ndarray, logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    log_p = x - x.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    return -(labels * log_p).sum(-1)


def kinds(seed: int = 0) -> list[Kind]:
    rng = np.random.default_rng(seed)
    small_x = rng.standard_normal((32, 10)).astype(np.float32)
    small_y = np.full((32, 10), 0.1, np.float32)
    big_x = rng.standard_normal((256, 1024)).astype(np.float32)  # 1 MiB per tensor
    big_y = np.full((256, 1024), 1 / 1024, np.float32)
    v2_header = json.dumps(
        {
            "inputs": [
                {
                    "name": n,
                    "shape": [256, 1024],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": a.nbytes},
                }
                for n, a in (("labels", big_y), ("logits", big_x))
            ],
            "outputs": [{"name": "loss", "parameters": {"binary_data": False}}],
        }
    ).encode()
    st_header = json.dumps(
        {
            "labels": {"dtype": "F32", "shape": [256, 1024], "data_offsets": [0, big_y.nbytes]},
            "logits": {
                "dtype": "F32",
                "shape": [256, 1024],
                "data_offsets": [big_y.nbytes, 2 * big_y.nbytes],
            },
        }
    ).encode()
    json_h = {"content-type": "application/json"}
    small_json = json.dumps({"labels": small_y.tolist(), "logits": small_x.tolist()}).encode()
    small_v2 = json.dumps(
        {
            "inputs": [
                {
                    "name": "labels",
                    "shape": [32, 10],
                    "datatype": "FP32",
                    "data": small_y.ravel().tolist(),
                },
                {
                    "name": "logits",
                    "shape": [32, 10],
                    "datatype": "FP32",
                    "data": small_x.ravel().tolist(),
                },
            ],
            "outputs": [{"name": "loss"}],
        }
    ).encode()
    return [
        Kind("v1 JSON 32x10", SOFT, small_json, json_h, True, _reference(small_y, small_x), 4),
        Kind("v2 JSON 32x10", INFER, small_v2, {}, True, _reference(small_y, small_x), 4),
        Kind(
            "v2 binary 2 x 1 MiB",
            INFER,
            v2_header + big_y.tobytes() + big_x.tobytes(),
            {"Inference-Header-Content-Length": str(len(v2_header))},
            True,
            _reference(big_y, big_x),
        ),
        Kind(
            "safetensors 2 x 1 MiB",
            SOFT,
            struct.pack("<Q", len(st_header)) + st_header + big_y.tobytes() + big_x.tobytes(),
            {"content-type": "application/x-safetensors"},
            True,
            _reference(big_y, big_x),
        ),
        Kind(
            "bad: shapes", SOFT, b'{"labels": [0, 1], "logits": [1, 2, 3]}', json_h, False, weight=2
        ),
        Kind("bad: positional", SOFT, b"[[0, 1], [1, 2]]", json_h, False),
        Kind(
            "bad: truncated v2",
            INFER,
            v2_header + b"\0" * 100,
            {"Inference-Header-Content-Length": str(len(v2_header))},
            False,
        ),
        Kind("bad: not JSON", INFER, b"\x00\xff garbage", {}, False),
    ]


def _loss_of(kind: Kind, response: httpx.Response) -> np.ndarray:
    if kind.path == SOFT and kind.headers.get("content-type") == "application/json":
        return np.asarray(response.json()["loss"]["data"])
    if kind.path == SOFT:
        body = response.content
        (length,) = struct.unpack("<Q", body[:8])
        header = json.loads(body[8 : 8 + length])
        start, end = header["loss"]["data_offsets"]
        return np.frombuffer(body[8 + length + start : 8 + length + end], np.float32)
    return np.asarray(response.json()["outputs"][0]["data"])


@dataclass
class Report:
    sent: int = 0
    retried_503: int = 0
    errors: list[str] = field(default_factory=list)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    rss_mib: list[float] = field(default_factory=list)

    def percentile(self, q: float, name: str | None = None) -> float:
        values = (
            self.latencies.get(name, [])
            if name
            else [v for vs in self.latencies.values() for v in vs]
        )
        return float(np.percentile(values, q)) * 1e3 if values else float("nan")


async def _send(
    http: httpx.AsyncClient, kind: Kind, deadline: float, report: Report, rng: random.Random
) -> httpx.Response | None:
    """One request, retried after a 503 as its Retry-After says; None on a transport error."""
    headers = dict(kind.headers)
    if kind.path == SOFT and "safetensors" in headers.get("content-type", ""):
        headers["accept"] = "application/x-safetensors"
    while True:
        try:
            response = await http.post(kind.path, content=kind.body, headers=headers)
        except httpx.HTTPError as exc:
            report.errors.append(f"{kind.name}: {type(exc).__name__}")
            return None
        if response.status_code != 503 or time.monotonic() > deadline + 30:
            return response
        report.retried_503 += 1
        retry_after = min(float(response.headers.get("retry-after", "1")), 1.0)
        await asyncio.sleep(retry_after * rng.random())


async def _client(
    http: httpx.AsyncClient, pool: list[Kind], deadline: float, report: Report, rng: random.Random
) -> None:
    weights = [k.weight for k in pool]
    while time.monotonic() < deadline:
        kind = rng.choices(pool, weights)[0]
        start = time.perf_counter()
        response = await _send(http, kind, deadline, report, rng)
        if response is None:
            continue
        report.sent += 1
        report.latencies.setdefault(kind.name, []).append(time.perf_counter() - start)
        if kind.good:
            if response.status_code != 200:
                report.errors.append(f"{kind.name}: {response.status_code} {response.text[:120]}")
            elif not np.allclose(_loss_of(kind, response), kind.expected, rtol=1e-4, atol=1e-4):
                report.errors.append(f"{kind.name}: wrong loss")
        elif not 400 <= response.status_code < 500:
            report.errors.append(f"{kind.name}: expected 4xx, got {response.status_code}")


async def _rss_sampler(pid: int | None, deadline: float, report: Report) -> None:
    while pid and time.monotonic() < deadline:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                report.rss_mib.append(int(line.split()[1]) / 1024)
        await asyncio.sleep(1.0)


async def run(
    url: str, clients: int, duration: float, pid: int | None = None, seed: int = 0
) -> Report:
    """Drive `clients` concurrent clients at `url` (loopback) for `duration` seconds."""
    if not url.startswith(("http://127.", "http://localhost", "http://[::1]")):
        raise ValueError("load is only ever sent to loopback")
    report = Report()
    pool = kinds(seed)
    deadline = time.monotonic() + duration
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        await asyncio.gather(
            _rss_sampler(pid, deadline, report),
            *(
                _client(http, pool, deadline, report, random.Random(seed + i))
                for i in range(clients)
            ),
        )
    return report


def table(report: Report, clients: int, duration: float) -> str:
    lines = [
        f"{clients} clients, {duration:g} s: {report.sent} requests "
        f"({report.sent / duration:.0f}/s), {len(report.errors)} errors, "
        f"{report.retried_503} retries after 503",
        "",
        "| request | count | p50 ms | p99 ms |",
        "|---|---|---|---|",
    ]
    for name, values in report.latencies.items():
        p50, p99 = report.percentile(50, name), report.percentile(99, name)
        lines.append(f"| {name} | {len(values)} | {p50:.1f} | {p99:.1f} |")
    lines.append(
        f"| all | {report.sent} | {report.percentile(50):.1f} | {report.percentile(99):.1f} |"
    )
    if report.rss_mib:
        rss = report.rss_mib
        lines.append(f"\nserver RSS MiB: start {rss[0]:.0f}, max {max(rss):.0f}, end {rss[-1]:.0f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--soak", action="store_true", help="also require RSS growth < 10%")
    args = parser.parse_args()
    # The service as users run it (default in-flight bound: 503s and retries are part of
    # the load), with the access log off so that it does not flood the terminal.
    port = servers.free_port()
    command = [sys.executable, "-m", "service", "--port", str(port)]
    ready = f"http://127.0.0.1:{port}/v2/health/ready"
    with servers.running(command, ready, {"SCE_LOG_LEVEL": "warning"}) as pid:
        report = asyncio.run(run(f"http://127.0.0.1:{port}", args.clients, args.duration, pid))
    print(table(report, args.clients, args.duration))
    for error in report.errors[:20]:
        print("error:", error)
    failed = bool(report.errors)
    if args.soak and report.rss_mib:
        warm = report.rss_mib[min(60, len(report.rss_mib) - 1)]  # after the first minute
        growth = (report.rss_mib[-1] - warm) / warm
        print(f"RSS growth after warm-up: {growth:+.1%} (limit +10%)")
        failed |= growth >= 0.10
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
