"""Large payloads: time for 2 x N MiB of FP32 and the loss back, via v2 binary, safetensors
and JSON, next to curl POSTing the same bytes to a bare FastAPI endpoint (the byte floor);
and the server's peak RSS per payload (a fresh server per size, VmHWM after the request).

    python -m bench.transport [--sizes 1 4 16 64 256 --repeat 3]

curl is the client for every row: httpx is itself the bottleneck for big bodies.
"""

from __future__ import annotations

import argparse
import json
import struct
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

from bench import servers
from bench.http import curl

INFER = "/v2/models/softmax_cross_entropy_with_logits/infer"
FLOOR = "byte floor (bare FastAPI)"
GRANIAN = "byte floor (bare FastAPI on granian)"
JSON_FLOOR = "JSON floor (orjson + np.asarray, in process)"
SOFT = "/v1/softmax_cross_entropy_with_logits"


def bodies(mib: float, tmp: Path) -> dict[str, tuple[Path, str, list[str]]]:
    """Files holding the same two tensors in each wire format, with their route and headers."""
    classes = 1024
    rows = max(1, int(mib * 2**20) // 4 // classes)
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((rows, classes), dtype=np.float32)
    labels = np.zeros((rows, classes), np.float32)
    labels[np.arange(rows), rng.integers(0, classes, rows)] = 1.0
    header = json.dumps({
        "inputs": [
            {"name": n, "shape": [rows, classes], "datatype": "FP32",
             "parameters": {"binary_data_size": a.nbytes}}
            for n, a in (("labels", labels), ("logits", logits))
        ],
        "outputs": [{"name": "loss", "parameters": {"binary_data": True}}],
    }).encode()  # fmt: skip
    raw = labels.tobytes() + logits.tobytes()
    (tmp / "v2").write_bytes(header + raw)
    st = json.dumps({
        "labels": {"dtype": "F32", "shape": [rows, classes], "data_offsets": [0, labels.nbytes]},
        "logits": {"dtype": "F32", "shape": [rows, classes],
                   "data_offsets": [labels.nbytes, 2 * labels.nbytes]},
    }).encode()  # fmt: skip
    st += b" " * (-len(st) % 8)
    (tmp / "st").write_bytes(struct.pack("<Q", len(st)) + st + raw)
    doc = {"labels": labels, "logits": logits}
    (tmp / "json").write_bytes(orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY))
    return {
        FLOOR: (tmp / "v2", "/echo-size", []),
        GRANIAN: (tmp / "v2", "/echo-size", []),
        "v2 binary": (tmp / "v2", INFER, [f"Inference-Header-Content-Length: {len(header)}"]),
        "safetensors": (
            tmp / "st", SOFT,
            ["Content-Type: application/x-safetensors", "Accept: application/x-safetensors"],
        ),
        "JSON": (tmp / "json", SOFT, ["Content-Type: application/json"]),
    }  # fmt: skip


ENV = {"SCE_MAX_REQUEST_BYTES": str(2 << 30), "SCE_MAX_JSON_BYTES": str(2 << 30),
       "SCE_LOG_LEVEL": "warning"}  # fmt: skip


def json_floor(path: Path, repeat: int) -> float:
    """Seconds to turn the JSON body into arrays in this process (orjson + np.asarray,
    the body already in memory): the floor of issue 11's JSON row."""
    body = path.read_bytes()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        document = orjson.loads(body)
        arrays = [np.asarray(document[name], np.float32) for name in ("labels", "logits")]
        best = min(best, time.perf_counter() - start)
        del document, arrays
    return best


def measure(sizes: list[float], repeat: int, json_up_to: float = 256) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for mib in sizes:
            cases = bodies(mib, tmp)
            sport, bport, gport = servers.free_port(), servers.free_port(), servers.free_port()
            command, ready, env = servers.service(sport, **ENV)
            floors = {FLOOR: bport, GRANIAN: gport}
            with (
                servers.running(command, ready, env) as pid,
                servers.running(*servers.bare(bport)),
                servers.running(*servers.granian(gport)),
            ):
                best = dict.fromkeys(cases, float("inf"))
                hwm = {}
                idle = servers.rss_kib(pid) / 1024
                for round_ in range(repeat):  # interleaved rounds
                    for name, (path, route, headers) in cases.items():
                        if name == "JSON" and mib > json_up_to:
                            continue
                        port = floors.get(name, sport)
                        url = f"http://127.0.0.1:{port}{route}"
                        servers.reset_peak_rss(pid)
                        best[name] = min(best[name], curl(url, path, headers))
                        # Peak RSS from the first round only: after a JSON request the
                        # allocator keeps its memory, which would show in later peaks.
                        if port == sport and round_ == 0:
                            hwm[name] = servers.rss_kib(pid, "VmHWM") / 1024
            if mib <= json_up_to:
                best[JSON_FLOOR] = json_floor(cases["JSON"][0], repeat)
                cases[JSON_FLOOR] = cases["JSON"]
            for name, seconds in best.items():
                if seconds != float("inf"):
                    body_mib = cases[name][0].stat().st_size / 2**20
                    rows.append({"path": name, "payload_mib": 2 * mib, "body_mib": body_mib,
                                 "seconds": seconds, "peak_rss_mib": hwm.get(name),
                                 "idle_rss_mib": idle})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=float, nargs="+", default=[0.5, 2, 8, 32, 128])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(measure(args.sizes, args.repeat), indent=1))


if __name__ == "__main__":
    main()
