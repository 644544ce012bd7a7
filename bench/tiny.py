"""Small calls, this tree against another (`--base`, e.g. `git worktree add /tmp/base
c45ac14`), side by side in one run:

* the engine in process: a 32 x 10 float32 loss, and loss + both gradients, against a
  numpy loss in the same process (best of 5 rounds of 3000 calls, each tree in its own
  process, alternated);
* small requests over HTTP (32 x 10 FP32, loss back) with wrk at 1 and 8 connections:
  v1 JSON, v2 JSON, v2 binary; both servers up at once, runs interleaved, best of
  `--rounds`;
* large answers: 1024 x 32000 FP32 in, loss + grad_logits back (131 MiB), as
  safetensors and as v2 binary, with curl, best of 7;
* large bodies: 256 MiB of v2 binary tensors in, loss back, with curl, median and best
  of 12;
* with `--cpu`, this tree (and `--base`, and this tree with each `--setting`): small
  v1 JSON requests at 1 and 8 connections (wrk), the medians over `--rounds` of req/s
  and of the server process's CPU time a request;
* with `--loops`, this tree only, one worker on each event loop: p50 and p99 of small
  v1 JSON requests at 64 connections (wrk), and a 256 MiB v2 binary body (curl, best
  of 7).

    python -m bench.tiny --base /tmp/base [--seconds 3 --rounds 2]
    python -m bench.tiny --loops
    python -m bench.tiny --cpu [--base /tmp/base] [--setting SCE_ACCESS_LOG=false ...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from bench import servers
from bench.http import curl, payloads, wrk, wrk_cpu
from bench.transport import INFER
from service.codecs import safetensors

ENGINE_SCRIPT = """
import json, time
import numpy as np
from service.engine.engine import Engine
from bench.engine import numpy_loss
engine = Engine()
rng = np.random.default_rng(0)
labels = rng.random((32, 10)).astype(np.float32)
labels /= labels.sum(1, keepdims=True)
logits = rng.standard_normal((32, 10)).astype(np.float32)
every = ["loss", "grad_logits", "grad_labels"]
calls = {
    "engine loss": lambda: engine.softmax_cross_entropy(labels=labels, logits=logits),
    "engine loss + grads": lambda: engine.softmax_cross_entropy(
        labels=labels, logits=logits, outputs=every
    ),
    "numpy loss": lambda: numpy_loss(labels, logits),
}
best = {}
for name, call in calls.items():
    for _ in range(300):
        call()
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(3000):
            call()
        best[name] = min(best.get(name, 1e9), (time.perf_counter() - start) / 3000 * 1e6)
print(json.dumps(best))
"""


def engine_times(trees: dict[str, Path], rounds: int = 3) -> dict[str, dict[str, float]]:
    best: dict[str, dict[str, float]] = {name: {} for name in trees}
    for _ in range(rounds):
        for name, tree in trees.items():
            out = subprocess.run(
                [sys.executable, "-c", ENGINE_SCRIPT],
                cwd=tree,
                env={"PYTHONPATH": f"{tree}:{servers.ROOT}", "PATH": "/usr/bin:/bin"},
                capture_output=True,
                text=True,
                check=True,
            )
            for key, value in json.loads(out.stdout).items():
                best[name][key] = min(best[name].get(key, 1e9), value)
    return best


# Large bodies: the service's default limit is 512 MiB; these send up to 256 MiB.
BIG_BODIES = {"SCE_MAX_REQUEST_BYTES": str(1 << 30)}


@contextlib.contextmanager
def _servers(
    specs: dict[str, tuple[Path, dict[str, str]]], pids: dict[str, int] | None = None
) -> Iterator[dict[str, int]]:
    """One server per name, from its tree with its environment, all up at once (one
    worker, access log on, as by default); yields their ports, and fills `pids`."""
    ports = {name: servers.free_port() for name in specs}
    root = servers.ROOT
    with contextlib.ExitStack() as stack:
        try:
            for name, (tree, env) in specs.items():
                servers.ROOT = tree  # the server's working directory: `-m service` imports it
                command, ready, base = servers.service(ports[name])
                pid = stack.enter_context(servers.running(command, ready, {**base, **env}))
                if pids is not None:
                    pids[name] = pid
        finally:
            servers.ROOT = root
        yield ports


def http_rates(trees: dict[str, Path], seconds: float, rounds: int) -> list[dict[str, object]]:
    paths = payloads()
    best: dict[tuple[int, str, str], float] = {}
    with _servers({name: (tree, {}) for name, tree in trees.items()}) as ports:
        for _ in range(rounds):
            for connections in (1, 8):
                for path_name in ("v1 JSON", "v2 JSON", "v2 binary"):
                    path, body, headers = paths[path_name]
                    for name in trees:
                        url = f"http://127.0.0.1:{ports[name]}{path}"
                        rps = wrk(url, body, headers, connections, seconds)["rps"]
                        key = (connections, path_name, name)
                        best[key] = max(best.get(key, 0.0), rps)
    return [
        {"connections": c, "path": p, "tree": t, "rps": round(r)}
        for (c, p, t), r in sorted(best.items())
    ]


def _binary_request(
    rows: int, classes: int, outputs: list[str]
) -> tuple[np.ndarray, np.ndarray, bytes]:
    """Labels, logits and the v2 JSON header that sends them as binary, outputs binary."""
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((rows, classes), dtype=np.float32)
    labels = np.full((rows, classes), 1 / classes, np.float32)
    header = json.dumps(
        {
            "inputs": [
                {"name": n, "shape": [rows, classes], "datatype": "FP32",
                 "parameters": {"binary_data_size": a.nbytes}}
                for n, a in (("labels", labels), ("logits", logits))
            ],
            "outputs": [{"name": o, "parameters": {"binary_data": True}} for o in outputs],
        }
    ).encode()  # fmt: skip
    return labels, logits, header


def answer_times(
    trees: dict[str, Path], rows: int = 1024, classes: int = 32000
) -> dict[str, float]:
    labels, logits, header = _binary_request(rows, classes, ["loss", "grad_logits"])
    requests = {
        "safetensors": (
            "/v1/softmax_cross_entropy_with_logits?outputs=loss,grad_logits",
            safetensors.encode({"labels": labels, "logits": logits}),
            ["Content-Type: application/x-safetensors", "Accept: application/x-safetensors"],
        ),
        "v2 binary": (
            INFER,
            header + labels.tobytes() + logits.tobytes(),
            [f"Inference-Header-Content-Length: {len(header)}"],
        ),
    }
    best: dict[str, float] = {}
    specs = {name: (tree, BIG_BODIES) for name, tree in trees.items()}
    with _servers(specs) as ports, tempfile.TemporaryDirectory() as tmp:
        for transport, (_, body, _) in requests.items():
            (Path(tmp) / transport).write_bytes(body)
        for _ in range(7):
            for transport, (path, _, headers) in requests.items():
                for name in trees:
                    url = f"http://127.0.0.1:{ports[name]}{path}"
                    seconds = curl(url, Path(tmp) / transport, headers)
                    key = f"{transport}, {name}"
                    best[key] = min(best.get(key, float("inf")), seconds)
    return best


def _upload(directory: Path, rows: int = 32768, classes: int = 1024) -> tuple[Path, list[str]]:
    """A v2 binary request of two rows x classes FP32 tensors (256 MiB by default), loss
    back, written to a file for curl; and its headers."""
    labels, logits, header = _binary_request(rows, classes, ["loss"])
    path = directory / "upload"
    path.write_bytes(header + labels.tobytes() + logits.tobytes())
    return path, [f"Inference-Header-Content-Length: {len(header)}"]


def upload_times(trees: dict[str, Path], rounds: int = 12) -> dict[str, dict[str, float]]:
    """A 256 MiB v2 binary body (two 128 MiB tensors), loss back, by curl to each tree,
    interleaved: the median and the best of `rounds` seconds."""
    specs = {name: (tree, BIG_BODIES) for name, tree in trees.items()}
    times: dict[str, list[float]] = {name: [] for name in trees}
    with _servers(specs) as ports, tempfile.TemporaryDirectory() as tmp:
        big, headers = _upload(Path(tmp))
        for _ in range(rounds):
            for name, port in ports.items():
                times[name].append(curl(f"http://127.0.0.1:{port}{INFER}", big, headers))
    return {
        name: {"median": statistics.median(seconds), "best": min(seconds)}
        for name, seconds in times.items()
    }


def loops(seconds: float) -> dict[str, dict[str, float]]:
    path, body, headers = payloads()["v1 JSON"]
    specs = {
        loop: (servers.ROOT, {**BIG_BODIES, "SCE_LOOP": loop}) for loop in ("uvloop", "asyncio")
    }
    result: dict[str, dict[str, float]] = {loop: {} for loop in specs}
    with _servers(specs) as ports, tempfile.TemporaryDirectory() as tmp:
        big, big_headers = _upload(Path(tmp))
        for _ in range(2):
            for loop, port in ports.items():
                url = f"http://127.0.0.1:{port}{path}"
                run = wrk(url, body, headers, 64, seconds)
                if run["p99"] < result[loop].get("p99", float("inf")):
                    result[loop].update(rps=run["rps"], p50=run["p50"], p99=run["p99"])
        for _ in range(7):
            for loop, port in ports.items():
                seconds_big = curl(f"http://127.0.0.1:{port}{INFER}", big, big_headers)
                result[loop]["256 MiB s"] = min(result[loop].get("256 MiB s", 1e9), seconds_big)
    return result


def cpu_rates(
    specs: dict[str, tuple[Path, dict[str, str]]], seconds: float, rounds: int
) -> list[dict[str, object]]:
    """v1 JSON 32 x 10 at 1 and 8 connections (wrk), contenders interleaved: the medians
    over `rounds` of req/s and of the server's CPU time a request (user + system)."""
    path, body, headers = payloads()["v1 JSON"]
    runs: dict[tuple[int, str], list[tuple[float, float]]] = {}
    pids: dict[str, int] = {}
    with _servers(specs, pids) as ports:
        for round_ in range(rounds):
            for connections in (1, 8):
                for name in specs:
                    url = f"http://127.0.0.1:{ports[name]}{path}"
                    if round_ == 0:
                        wrk(url, body, headers, connections, 1)  # warm
                    run = wrk_cpu(url, body, headers, connections, seconds, pids[name])
                    runs.setdefault((connections, name), []).append(run)
    return [
        {"connections": c, "contender": name,
         "rps": round(statistics.median(r for r, _ in values)),
         "cpu_us": round(statistics.median(u for _, u in values) * 1e6)}
        for (c, name), values in runs.items()
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", type=Path)
    parser.add_argument("--loops", action="store_true")
    parser.add_argument("--cpu", action="store_true", help="req/s and server CPU a request")
    parser.add_argument(
        "--setting", action="append", default=[], metavar="SCE_X=value",
        help="with --cpu: this tree with this setting too (repeatable)",
    )  # fmt: skip
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if args.loops:
        print(json.dumps(loops(args.seconds), indent=1))
        return
    if args.cpu:
        specs = {"after": (servers.ROOT, {})}
        if args.base is not None:
            specs["before"] = (args.base.resolve(), {})
        for setting in args.setting:
            key, _, value = setting.partition("=")
            specs[f"after, {setting}"] = (servers.ROOT, {key: value})
        print(json.dumps(cpu_rates(specs, args.seconds, args.rounds), indent=1))
        return
    if args.base is None:
        parser.error("--base is needed (or --loops, or --cpu)")
    trees = {"before": args.base.resolve(), "after": servers.ROOT}
    report = {
        "engine_us": engine_times(trees),
        "http": http_rates(trees, args.seconds, args.rounds),
        "answers_s": answer_times(trees),
        "uploads_s": upload_times(trees),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
