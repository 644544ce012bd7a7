"""The resource model under pressure: memory per path, liveness under a hostile mix.

    python -m bench.pressure [--quick] [--write]   # --write: its section of docs/benchmarks.md

(1) For each path (v1 JSON, v1 gzip JSON, v1 safetensors, v2 JSON, v2 binary) one large
good request alone: the server's peak RSS growth over (body + outputs). (2) The hostile
mix of the hardening issue, several of each at once, while a separate process probes
GET /v2/health/live every 10 ms: its latency percentiles, the server's peak RSS growth,
and the statuses each hostile request got. Loopback only, bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import struct
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from bench import servers

SOFT = "/v1/softmax_cross_entropy_with_logits"
SPARSE_INFER = "/v2/models/sparse_softmax_cross_entropy_with_logits/infer"
INFER = "/v2/models/softmax_cross_entropy_with_logits/infer"
JSON = {"content-type": "application/json"}
DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    body: bytes
    headers: dict[str, str]
    output_bytes: int = 0


def _json(document: object) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def _v2_binary(arrays: dict[str, np.ndarray], outputs: list[str]) -> tuple[bytes, dict[str, str]]:
    names = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}
    header = _json(
        {
            "inputs": [
                {
                    "name": n,
                    "shape": list(a.shape),
                    "datatype": names[a.dtype],
                    "parameters": {"binary_data_size": a.nbytes},
                }
                for n, a in arrays.items()
            ],
            "outputs": [{"name": o, "parameters": {"binary_data": True}} for o in outputs],
        }
    )
    body = header + b"".join(a.tobytes() for a in arrays.values())
    return body, {"inference-header-content-length": str(len(header))}


def _safetensors(arrays: dict[str, np.ndarray]) -> bytes:
    header, offset = {}, 0
    for name, array in arrays.items():
        header[name] = {
            "dtype": "F32",
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + b"".join(a.tobytes() for a in arrays.values())


def path_cases(scale: float) -> list[Case]:
    """One large good request per path; `scale` 1 is 2 x 64 MiB binary, 2 x ~20 MiB JSON."""
    rng = np.random.default_rng(0)
    rows = int(512 * scale)
    x = rng.standard_normal((rows, 32000), dtype=np.float32)
    y = np.full_like(x, 1 / 32000)
    grads = x.nbytes + rows * 4  # loss and grad_logits
    jrows = int(256 * scale)
    jx, jy = x[:jrows, :1000], y[:jrows, :1000]
    document = _json(
        {"labels": jy.tolist(), "logits": jx.tolist(), "outputs": ["loss", "grad_logits"]}
    )
    jgrads = jx.nbytes + jrows * 4
    v2_json = _json(
        {
            "inputs": [
                {"name": "labels", "shape": list(jy.shape), "datatype": "FP32",
                 "data": jy.ravel().tolist()},
                {"name": "logits", "shape": list(jx.shape), "datatype": "FP32",
                 "data": jx.ravel().tolist()},
            ],
            "outputs": [{"name": "loss"}, {"name": "grad_logits"}],
        }
    )  # fmt: skip
    binary, binary_headers = _v2_binary({"labels": y, "logits": x}, ["loss", "grad_logits"])
    st = {"content-type": "application/x-safetensors", "accept": "application/x-safetensors"}
    return [
        Case("v1 JSON", SOFT, document, JSON, jgrads),
        Case("v1 JSON, gzip", SOFT, gzip.compress(document, 1),
             {**JSON, "content-encoding": "gzip"}, jgrads),
        Case("v1 safetensors", f"{SOFT}?outputs=loss,grad_logits",
             _safetensors({"labels": y, "logits": x}), st, grads),
        Case("v2 JSON", INFER, v2_json, JSON, jgrads),
        Case("v2 binary", INFER, binary, binary_headers, grads),
    ]  # fmt: skip


def hostile_cases(max_request_bytes: int) -> list[Case]:
    """The hardening issue's findings, each as one request."""
    broadcast = _json(
        {
            "labels": np.full((16384, 1), 1.0).tolist(),
            "logits": np.zeros((1, 16384)).tolist(),
            "dtype": "float64",
            "outputs": ["loss", "grad_logits", "grad_labels"],
        }
    )
    inline_broadcast = _json(  # a ~64 KB body whose work is 8000 x 16000
        {"labels": [[1]] * 8000, "logits": [[0] * 16000]}
    )
    mixed = b'{"labels": [' + b"1.0," * 100_000 + b'"' + b"1" * 200_000 + b'"], "logits": [0.0]}'
    bomb = gzip.compress(b"\0" * (max_request_bytes + (1 << 20)), 9)
    entries = {
        f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(10**6)
    }
    raw = json.dumps(entries).encode()
    million = struct.pack("<Q", len(raw)) + raw
    big_int = _json(
        {"inputs": [{"name": "labels", "shape": [1], "datatype": "FP32", "data": [0]},
                    {"name": "logits", "shape": [1], "datatype": "FP32", "data": [0]}]}
    ).replace(b'"data":[0]}', b'"data":[' + b"9" * 401 + b"]}", 1)  # fmt: skip
    return [
        Case("broadcast [16384,1] x [1,16384] f64", SOFT, broadcast, JSON),
        Case("64 KB body, 8000 x 16000 work", SOFT, inline_broadcast, JSON),
        Case("numbers + a long numeric string", SOFT, mixed, JSON),
        Case("gzip bomb", SOFT, bomb, {**JSON, "content-encoding": "gzip"}),
        Case("safetensors, 10^6 header entries", SOFT, million,
             {"content-type": "application/x-safetensors"}),
        Case("401-digit integer in v2 data", INFER, big_int, JSON),
    ]  # fmt: skip


PROBE = """
import socket, sys, time
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
request = b"GET /v2/health/live HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n"
sock = socket.create_connection((host, port))
end = time.monotonic() + seconds
while time.monotonic() < end:
    start = time.perf_counter()
    sock.sendall(request)
    data = b""
    while not data.endswith(b"{\\"live\\":true}"):
        chunk = sock.recv(4096)
        if not chunk:
            raise SystemExit("closed")
        data += chunk
    print(f"{(time.perf_counter() - start) * 1e3:.3f}", flush=True)
    time.sleep(0.01)
"""


def probe(url: str, seconds: float) -> subprocess.Popen[str]:
    """GET /v2/health/live every 10 ms from another process; prints one latency (ms) a line."""
    host, port = url.removeprefix("http://").split(":")
    return subprocess.Popen(
        [sys.executable, "-c", PROBE, host, port, str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )


def latencies(proc: subprocess.Popen[str]) -> np.ndarray:
    out, _ = proc.communicate(timeout=120)
    return np.array([float(line) for line in out.split()])


async def _send(client: httpx.AsyncClient, case: Case) -> int:
    try:
        response = await client.post(case.path, content=case.body, headers=case.headers)
    except httpx.HTTPError as exc:
        return -1 if not isinstance(exc, httpx.RemoteProtocolError) else -2
    return response.status_code


async def _slow_uploads(url: str, count: int, seconds: float) -> None:
    """Sockets that send headers, then one byte a second (until cut or `seconds`)."""
    host, port = url.removeprefix("http://").split(":")
    head = (
        f"POST {SOFT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {10 << 20}\r\n\r\n"
    ).encode()

    async def one() -> None:
        try:
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(head)
            end = time.monotonic() + seconds
            while time.monotonic() < end and not reader.at_eof():
                writer.write(b" ")
                await writer.drain()
                await asyncio.sleep(1)
            writer.close()
        except OSError:
            pass

    await asyncio.gather(*(one() for _ in range(count)))


async def hostile_mix(url: str, cases: list[Case], copies: int, slow: int) -> Counter[str]:
    """Each hostile case `copies` times at once, beside `slow` trickling uploads and an
    8 MiB header; returns 'case: status' counts."""
    statuses: Counter[str] = Counter()
    limits = httpx.Limits(max_connections=len(cases) * copies + 4)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def run(case: Case) -> None:
            statuses[f"{case.name}: {await _send(client, case)}"] += 1

        async def huge_header() -> None:
            response = await _raw(url, b"GET /v2 HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (8 << 20))
            statuses[f"8 MiB header: {response}"] += 1

        await asyncio.gather(
            *(run(c) for c in cases for _ in range(copies)),
            huge_header(),
            _slow_uploads(url, slow, 12),
        )
    return statuses


async def _raw(url: str, data: bytes) -> str:
    """Send bytes on a raw socket, return the status line's code (or what happened)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        await writer.drain()
    except OSError:
        pass
    try:
        line = await asyncio.wait_for(reader.readline(), 30)
    except (OSError, TimeoutError):
        return "no answer"
    writer.close()
    return line.decode(errors="replace").split(" ")[1] if line else "closed"


def measure_path(url: str, pid: int, case: Case) -> dict[str, object]:
    """One request on a server that has served only a small one: its peak RSS growth."""
    with httpx.Client(base_url=url, timeout=300) as client:
        client.post(SOFT, json={"labels": [0.0, 1.0], "logits": [0.0, 0.0]}).raise_for_status()
        servers.reset_peak_rss(pid)
        base = servers.rss_kib(pid) * 1024
        start = time.perf_counter()
        response = client.post(case.path, content=case.body, headers=case.headers)
        seconds = time.perf_counter() - start
        peak = servers.rss_kib(pid, "VmHWM") * 1024
    assert response.status_code == 200, (case.name, response.text[:200])
    return {
        "path": case.name,
        "body_mib": len(case.body) / 2**20,
        "outputs_mib": case.output_bytes / 2**20,
        "peak_growth_mib": (peak - base) / 2**20,
        "ratio": (peak - base) / (len(case.body) + case.output_bytes),
        "seconds": seconds,
    }


def measure_mix(url: str, pid: int, copies: int, slow: int, max_request_bytes: int) -> dict:
    servers.reset_peak_rss(pid)
    base = servers.rss_kib(pid) * 1024
    cases = hostile_cases(max_request_bytes)
    prober = probe(url, 25)
    time.sleep(0.5)
    start = time.monotonic()
    statuses = asyncio.run(hostile_mix(url, cases, copies, slow))
    took = time.monotonic() - start
    lat = latencies(prober)
    peak = servers.rss_kib(pid, "VmHWM") * 1024
    return {
        "statuses": dict(sorted(statuses.items())),
        "seconds": took,
        "probes": len(lat),
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "max_ms": float(lat.max()),
        "peak_growth_mib": (peak - base) / 2**20,
    }


ENV = {"SCE_MEMORY_BUDGET": str(1 << 30), "SCE_MAX_REQUEST_BYTES": str(256 << 20)}


def run(quick: bool) -> tuple[list[dict[str, object]], dict, dict[str, str]]:
    """Each path on a fresh server (an allocator keeps what it freed, which would hide the
    next request's growth), then the mix on another."""
    paths = []
    for case in path_cases(0.25 if quick else 1.0):
        port = servers.free_port()
        with servers.running(*servers.service(port, **ENV)) as pid:
            paths.append(measure_path(f"http://127.0.0.1:{port}", pid, case))
    port = servers.free_port()
    with servers.running(*servers.service(port, **ENV)) as pid:
        url = f"http://127.0.0.1:{port}"
        mix = measure_mix(url, pid, copies=2 if quick else 4, slow=16, max_request_bytes=256 << 20)
    return paths, mix, ENV


TITLE = "## (g) Resource model: peak memory per path, liveness under a hostile mix"


def section(
    paths: list[dict[str, object]], mix: dict, env: dict[str, str], command: str
) -> list[str]:
    settings = ", ".join(f"{k}={v}" for k, v in env.items())
    out = [
        TITLE,
        "",
        f"`{command}` on {time.strftime('%Y-%m-%d %H:%M')}. Server: `python -m service` with "
        f"{settings}, one worker; a fresh server for each path (an allocator keeps what it "
        "freed, which would hide the next request's growth). Peak RSS growth is VmHWM after "
        "the request less VmRSS before it, over the body as sent plus the outputs' bytes.",
        "",
    ]
    out += ["| path | body MiB | outputs MiB | peak RSS growth MiB | / (body + outputs) | s |",
            "|---|---|---|---|---|---|"]  # fmt: skip
    for r in paths:
        out.append(
            f"| {r['path']} | {r['body_mib']:.1f} | {r['outputs_mib']:.1f} | "
            f"{r['peak_growth_mib']:.0f} | {r['ratio']:.2f} | {r['seconds']:.2f} |"
        )
    out += [
        "",
        f"Hostile mix ({mix['seconds']:.1f} s; each case below several times at once, with 16 "
        "uploads trickling a byte a second and an 8 MiB header): GET /v2/health/live from "
        f"another process every 10 ms, {mix['probes']} probes: p50 {mix['p50_ms']:.1f} ms, "
        f"p99 {mix['p99_ms']:.1f} ms, max {mix['max_ms']:.1f} ms. Server peak RSS growth "
        f"{mix['peak_growth_mib']:.0f} MiB.",
        "",
        "| hostile request: status | count |",
        "|---|---|",
    ]
    out += [f"| {k} | {v} |" for k, v in mix["statuses"].items()]
    return out


def write(lines: list[str], doc: Path = DOC) -> None:
    """Replace this section of docs/benchmarks.md (or append it)."""
    text = doc.read_text()
    start = text.find(TITLE)
    if start >= 0:
        end = text.find("\n## ", start + len(TITLE))
        text = text[:start] + text[end + 1 :] if end >= 0 else text[:start]
    doc.write_text(text.rstrip("\n") + "\n\n" + "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--write", action="store_true", help="into docs/benchmarks.md")
    args = parser.parse_args()
    command = "python -m bench.pressure" + " --quick" * args.quick + " --write" * args.write
    lines = section(*run(args.quick), command=command)
    print("\n".join(lines))
    if args.write:
        write(lines)


if __name__ == "__main__":
    main()
