"""Small requests over HTTP: throughput and latency at concurrency 1, 8 and 64 (wrk),
for v1 JSON, v2 JSON and v2 binary, next to a bare FastAPI echo endpoint; 1 vs 2 workers;
and the service against MLServer with the same client (tritonclient, sequential v2 JSON).

    python -m bench.http [--duration 5]        (needs wrk: apt-get install wrk)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import servers

LUA = """wrk.method = "POST"
wrk.body = io.open("{body}", "rb"):read("*a")
{headers}
"""


QUIET = "v1 JSON, SCE_ACCESS_LOG=false"
EACH_LINE = "v1 JSON, SCE_ACCESS_LOG_FLUSH=0"
UVLOOP = "v1 JSON, SCE_LOOP=uvloop"
BARE = "bare FastAPI parse"  # the floor of small requests: parses the same JSON, answers


def payloads(rows: int = 32, classes: int = 10) -> dict[str, tuple[str, bytes, dict[str, str]]]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, classes)).astype(np.float32)
    y = np.full((rows, classes), 1 / classes, np.float32)
    v1 = json.dumps({"labels": y.tolist(), "logits": x.tolist()}).encode()
    v2_json = json.dumps(
        {
            "inputs": [
                {
                    "name": n,
                    "shape": [rows, classes],
                    "datatype": "FP32",
                    "data": a.ravel().tolist(),
                }
                for n, a in (("labels", y), ("logits", x))
            ],
            "outputs": [{"name": "loss"}],
        }
    ).encode()
    header = json.dumps({
        "inputs": [
            {"name": n, "shape": [rows, classes], "datatype": "FP32",
             "parameters": {"binary_data_size": a.nbytes}}
            for n, a in (("labels", y), ("logits", x))
        ],
        "outputs": [{"name": "loss", "parameters": {"binary_data": True}}],
    }).encode()  # fmt: skip
    infer = "/v2/models/softmax_cross_entropy_with_logits/infer"
    soft = "/v1/softmax_cross_entropy_with_logits"
    return {
        "v1 JSON": (soft, v1, {"Content-Type": "application/json"}),
        "v2 JSON": (infer, v2_json, {"Content-Type": "application/json"}),
        "v2 binary": (
            infer, header + y.tobytes() + x.tobytes(),
            {"Inference-Header-Content-Length": str(len(header))},
        ),
        "bare FastAPI echo": ("/echo", v1, {"Content-Type": "application/json"}),
        BARE: ("/parse", v1, {"Content-Type": "application/json"}),
    }  # fmt: skip


def curl(url: str, path: Path, headers: list[str]) -> float:
    """curl's own time (`time_total`) to POST the file at `path` and read the answer.

    The file is streamed (`-T`), as a client uploading a big file does: `--data-binary
    @file` first reads the whole file into curl's memory, which for 256 MiB cost curl
    ~0.1 s of its own before the first byte left (against a socket that only reads:
    0.23-0.27 s wall with `--data-binary`, 0.12 s with `-T`), so a row measured it as
    much as the server. `Expect:` is left at curl's default (100-continue past 1 MiB)."""
    command = ["curl", "-sS", "--fail", "-o", "/dev/null", "-w", "%{time_total}",
               "-X", "POST", "-T", str(path), url]  # fmt: skip
    for header in headers:
        command += ["-H", header]
    return float(subprocess.run(command, check=True, capture_output=True, text=True).stdout)


def wrk(
    url: str, body: bytes, headers: dict[str, str], connections: int, seconds: float
) -> dict[str, float]:
    """Requests/s and latency percentiles (ms) from one wrk run."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "body").write_bytes(body)
        lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
        script = Path(tmp) / "post.lua"
        script.write_text(LUA.format(body=Path(tmp) / "body", headers=lines))
        out = subprocess.run(
            ["wrk", "-t", "1", "-c", str(connections),
             "-d", f"{round(seconds)}s", "--latency", "-s", str(script), url],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
    if "Non-2xx" in out:
        raise RuntimeError(f"non-2xx answers from {url}:\n{out}")

    def ms(label: str) -> float:
        found = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)", out)
        assert found, out
        value, unit = found.groups()
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return {"rps": rps, "p50": ms("50"), "p99": ms("99")}


def wrk_cpu(
    url: str, body: bytes, headers: dict[str, str], connections: int, seconds: float, pid: int
) -> tuple[float, float]:
    """Requests/s of one wrk run, and the CPU seconds (user + system) the server process
    `pid` spent a request in it."""
    before = servers.cpu_seconds(pid)
    rps = wrk(url, body, headers, connections, seconds)["rps"]
    return rps, (servers.cpu_seconds(pid) - before) / (rps * seconds)


def small_requests(seconds: float) -> list[dict[str, object]]:
    """Every path at each concurrency, interleaved, next to the bare endpoints (on the
    loop the service's one worker runs on); v1 JSON also without access log lines (the
    bare endpoints write none), with each line written at once, and on uvloop."""
    rows = []
    sport, bport = servers.free_port(), servers.free_port()
    variants = {QUIET: {"SCE_ACCESS_LOG": "false"}, EACH_LINE: {"SCE_ACCESS_LOG_FLUSH": "0"},
                UVLOOP: {"SCE_LOOP": "uvloop"}}  # fmt: skip
    ports = {name: servers.free_port() for name in variants}
    paths = payloads()
    bare = {name: paths.pop(name) for name in ("bare FastAPI echo", BARE)}
    paths.update(dict.fromkeys(variants, paths["v1 JSON"]))
    paths.update(bare)
    ports.update(dict.fromkeys(bare, bport))
    with contextlib.ExitStack() as stack:
        stack.enter_context(servers.running(*servers.service(sport)))
        for name, env in variants.items():
            stack.enter_context(servers.running(*servers.service(ports[name], **env)))
        stack.enter_context(servers.running(*servers.bare(bport)))
        for concurrency in (1, 8, 64):
            for name, (path, body, headers) in paths.items():  # interleaved per level
                port = ports.get(name, sport)
                result = wrk(f"http://127.0.0.1:{port}{path}", body, headers, concurrency, seconds)
                rows.append({"path": name, "concurrency": concurrency, **result})
    return rows


def workers(seconds: float) -> dict[int, float]:
    path, body, headers = payloads()["v1 JSON"]
    rps = {}
    for count in (1, 2):
        port = servers.free_port()
        command, ready, env = servers.service(port, workers=count)
        with servers.running(command, ready, env):
            time.sleep(1)  # both workers up
            rps[count] = wrk(f"http://127.0.0.1:{port}{path}", body, headers, 64, seconds)["rps"]
    return rps


def tritonclient_rate(port: int, seconds: float) -> float:
    """Sequential tritonclient v2 JSON requests per second (32 x 10 FP32)."""
    import tritonclient.http as triton

    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 10)).astype(np.float32)
    y = np.full((32, 10), 0.1, np.float32)
    client = triton.InferenceServerClient(f"127.0.0.1:{port}")
    inputs = [
        triton.InferInput("labels", [32, 10], "FP32"),
        triton.InferInput("logits", [32, 10], "FP32"),
    ]
    inputs[0].set_data_from_numpy(y, binary_data=False)
    inputs[1].set_data_from_numpy(x, binary_data=False)
    outputs = [triton.InferRequestedOutput("loss", binary_data=False)]
    name = "softmax_cross_entropy_with_logits"
    for _ in range(50):
        client.infer(name, inputs, outputs=outputs)
    count, deadline = 0, time.monotonic() + seconds
    start = time.perf_counter()
    while time.monotonic() < deadline:
        client.infer(name, inputs, outputs=outputs)
        count += 1
    return count / (time.perf_counter() - start)


def tritonclient_large(port: int, mib: int, binary: bool, repeat: int = 2) -> float:
    """Seconds for one tritonclient request of 2 x `mib` MiB FP32 (best of `repeat`)."""
    import tritonclient.http as triton

    rows, classes = mib * 2**20 // 4 // 1024, 1024
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, classes), dtype=np.float32)
    y = np.full((rows, classes), 1 / classes, np.float32)
    client = triton.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=600)
    inputs = [triton.InferInput("labels", [rows, classes], "FP32"),
              triton.InferInput("logits", [rows, classes], "FP32")]  # fmt: skip
    inputs[0].set_data_from_numpy(y, binary_data=binary)
    inputs[1].set_data_from_numpy(x, binary_data=binary)
    outputs = [triton.InferRequestedOutput("loss", binary_data=binary)]
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        client.infer("softmax_cross_entropy_with_logits", inputs, outputs=outputs)
        best = min(best, time.perf_counter() - start)
    return best


def peers(seconds: float, large_mib: int = 128) -> dict[str, float] | None:
    """The service against MLServer and KServe (each if its venv exists), same clients:
    wrk (v2 JSON, 8 connections, interleaved, best of 2) for all three; tritonclient
    (small, sequential, and 2 x `large_mib` MiB; MLServer refuses the binary extension)
    for MLServer. None of them writes access logs (MLServer's and KServe's are off by
    default, the service's with SCE_ACCESS_LOG=false)."""
    sport = servers.free_port()
    specs = {"MLServer": servers.mlserver(servers.free_port()),
             "KServe": servers.kserve(servers.free_port())}  # fmt: skip
    found = {name: spec for name, spec in specs.items() if spec is not None}
    if not found:
        return None
    command, ready, env = servers.service(sport, SCE_ACCESS_LOG="false")
    path, body, headers = payloads()["v2 JSON"]
    result: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        ports = {"service": sport}
        stack.enter_context(servers.running(command, ready, env))
        for name, spec in found.items():
            stack.enter_context(servers.running(*spec))
            ports[name] = int(spec[1].split(":")[2].split("/")[0])
        for _ in range(2):
            for name, port in ports.items():
                rps = wrk(f"http://127.0.0.1:{port}{path}", body, headers, 8, seconds)["rps"]
                key = f"wrk rps, {name}"
                result[key] = max(result.get(key, 0.0), rps)
        if "MLServer" in found:
            mport = ports["MLServer"]
            result |= {
                "tritonclient rps, MLServer": tritonclient_rate(mport, seconds),
                "tritonclient rps, service": tritonclient_rate(sport, seconds),
                # one MLServer run: it takes a minute and several GiB
                f"2x{large_mib} MiB s, MLServer (JSON)": tritonclient_large(
                    mport, large_mib, False, repeat=1
                ),
                f"2x{large_mib} MiB s, service (binary)": tritonclient_large(
                    sport, large_mib, True
                ),
            }
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=5)
    args = parser.parse_args()
    results = {"peers": peers(args.duration), "workers": workers(args.duration)}
    results["small"] = small_requests(args.duration)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
