"""Time to send 2 x N MiB of FP32 and get the loss back: v2 binary, safetensors, JSON,
next to curl POSTing the same bytes to a bare FastAPI endpoint (the byte floor).

Usage: python bench/transport.py [--mib 128 --repeat 3 --json-repeat 1]
curl is the client for every row (httpx is itself the bottleneck for big bodies).
Both servers run under the same uvicorn settings, on loopback.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def start(args: list[str], env: dict[str, str], url: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        args,
        env={**os.environ, **env},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(600):
        try:
            httpx.get(url, timeout=1)
            return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{args} did not start")


def curl(url: str, path: Path, headers: list[str]) -> tuple[float, bytes]:
    command = [
        "curl",
        "-sS",
        "--fail-with-body",
        "-X",
        "POST",
        url,
        "--data-binary",
        f"@{path}",
        "-o",
        "-",
    ]
    for header in headers:
        command += ["-H", header]
    start_time = time.perf_counter()
    out = subprocess.run(command, check=True, capture_output=True).stdout
    return time.perf_counter() - start_time, out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json-repeat", type=int, default=1)
    args = parser.parse_args()
    classes = 4096
    rows = args.mib * 1024 * 1024 // 4 // classes
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((rows, classes), dtype=np.float32)
    labels = np.zeros((rows, classes), np.float32)
    labels[np.arange(rows), rng.integers(0, classes, rows)] = 1.0
    ref = -(
        labels * (logits - np.log(np.exp(logits.astype(np.float64)).sum(-1, keepdims=True)))
    ).sum(-1)

    tmp = Path(tempfile.mkdtemp(prefix="sce-bench-"))
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": n,
                    "shape": [rows, classes],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": a.nbytes},
                }
                for n, a in (("labels", labels), ("logits", logits))
            ],
            "outputs": [{"name": "loss", "parameters": {"binary_data": True}}],
        }
    ).encode()
    (tmp / "v2.bin").write_bytes(header + labels.tobytes() + logits.tobytes())
    st_header = json.dumps(
        {
            "labels": {
                "dtype": "F32",
                "shape": [rows, classes],
                "data_offsets": [0, labels.nbytes],
            },
            "logits": {
                "dtype": "F32",
                "shape": [rows, classes],
                "data_offsets": [labels.nbytes, 2 * labels.nbytes],
            },
        }
    ).encode()
    st_header += b" " * (-len(st_header) % 8)
    (tmp / "body.safetensors").write_bytes(
        struct.pack("<Q", len(st_header)) + st_header + labels.tobytes() + logits.tobytes()
    )
    import orjson

    (tmp / "body.json").write_bytes(
        orjson.dumps({"labels": labels, "logits": logits}, option=orjson.OPT_SERIALIZE_NUMPY)
    )
    sizes = {p.name: p.stat().st_size for p in tmp.iterdir()}

    env = {"SCE_MAX_REQUEST_BYTES": str(4 << 30), "SCE_LOG_LEVEL": "warning"}
    uv = [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--log-level", "warning"]
    service = start(
        [sys.executable, "-m", "service", "--port", "8391"],
        env,
        "http://127.0.0.1:8391/v2/health/ready",
    )
    bare = start(
        [*uv, "--port", "8392", "--app-dir", str(ROOT / "bench"), "bare_app:app"],
        {},
        "http://127.0.0.1:8392/docs",
    )
    base = "http://127.0.0.1:8391"
    try:
        cases = [
            (
                "bare FastAPI, body read only (byte floor)",
                "http://127.0.0.1:8392/echo-size",
                "v2.bin",
                [],
                args.repeat,
            ),
            (
                "v2 binary",
                f"{base}/v2/models/softmax_cross_entropy_with_logits/infer",
                "v2.bin",
                [f"Inference-Header-Content-Length: {len(header)}"],
                args.repeat,
            ),
            (
                "native safetensors",
                f"{base}/v1/softmax_cross_entropy_with_logits",
                "body.safetensors",
                ["Content-Type: application/x-safetensors", "Accept: application/x-safetensors"],
                args.repeat,
            ),
            (
                "native JSON",
                f"{base}/v1/softmax_cross_entropy_with_logits",
                "body.json",
                ["Content-Type: application/json"],
                args.json_repeat,
            ),
        ]
        best = {name: float("inf") for name, *_ in cases}
        for round_ in range(max(args.repeat, args.json_repeat)):  # interleaved rounds
            for name, url, file, headers, repeat in cases:
                if round_ >= repeat:
                    continue
                seconds, out = curl(url, tmp / file, headers)
                best[name] = min(best[name], seconds)
                if file == "v2.bin" and "bare" not in name:
                    length = int(out.index(b"}]}") + 3)
                    loss = np.frombuffer(out[length:], np.float32)
                    assert np.allclose(loss, ref, rtol=1e-4, atol=1e-4), "wrong loss over v2"
        floor = best[cases[0][0]]
        print(
            f"## 2 x {args.mib} MiB FP32 ({rows} x {classes} each), curl, "
            f"best of {args.repeat} (JSON: {args.json_repeat})\n"
        )
        print("| path | body MiB | seconds | MiB/s of body | x floor time |\n|---|---|---|---|---|")
        for name, _, file, _, _ in cases:
            mib = sizes[file] / 2**20
            seconds = best[name]
            print(
                f"| {name} | {mib:.0f} | {seconds:.2f} | {mib / seconds:.0f} | "
                f"{seconds / floor:.2f} |"
            )
    finally:
        for proc in (service, bare):
            proc.terminate()
            proc.wait()
        for path in tmp.iterdir():
            path.unlink()
        tmp.rmdir()


if __name__ == "__main__":
    main()
