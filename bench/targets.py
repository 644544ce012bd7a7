"""Issue 11's table: each row measured side by side in one run, with its floor or peer.

    python -m bench.targets [--seconds 5]      (make bench runs it too)

Rows, each next to what it is compared with, in the same run:
* the engine's 32 x 10 loss against a numpy loss in the same process;
* small v1 JSON (32 x 10, loss back) at 1 and 8 connections against a bare FastAPI
  endpoint that parses the same JSON into arrays and answers (wrk, both up at once,
  interleaved, best of 2), on the same uvicorn settings;
* small v2 JSON at 8 connections against MLServer 1.7.1 and KServe 0.21 with numpy
  models (if `make bench-peers` built their venvs), none writing access logs;
* 512 x 1000 x 2 float32 as v1 JSON end to end (curl), against orjson.loads +
  np.asarray of the same bytes in process, and the server's peak RSS growth per body byte;
* 256 MiB v2 binary (curl) against the bytes POSTed to a bare FastAPI endpoint on
  uvicorn and on granian;
* 1024 x 32000 loss + grad_logits as safetensors against v2 binary (curl);
* p99 / p50 of small v1 JSON at 64 connections on the default settings;
* 2 workers against 1 (v1 JSON at 64 connections), twice.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
from pathlib import Path

from bench import http, json_decode, servers, tiny, transport
from bench.transport import ENV

Row = dict[str, object]


def _row(work: str, measured: str, against: str, ratio: float, target: str, score: float) -> Row:
    """One row; `score` is how far the target is met (>= 1: met; the plot shows it)."""
    return {"work": work, "measured": measured, "against": against, "ratio": round(ratio, 2),
            "target": target, "score": round(score, 3), "met": score >= 1}  # fmt: skip


def engine_row() -> Row:
    times = tiny.engine_times({"service": servers.ROOT})["service"]
    ratio = times["engine loss"] / times["numpy loss"]
    return _row("engine, 32 x 10 loss, in process", f"{times['engine loss']:.1f} us",
                f"numpy loss {times['numpy loss']:.1f} us", ratio, "<= 1.5x numpy",
                1.5 / ratio)  # fmt: skip


def small_rows(seconds: float) -> list[Row]:
    paths = http.payloads()
    ports = {name: servers.free_port() for name in ("service", "quiet", "bare")}
    peers = {"MLServer": servers.mlserver(servers.free_port()),
             "KServe": servers.kserve(servers.free_port())}  # fmt: skip
    best: dict[str, dict[str, float]] = {}

    def run(key: str, port: int, path: str, connections: int) -> None:
        route, body, headers = paths[path]
        got = http.wrk(f"http://127.0.0.1:{port}{route}", body, headers, connections, seconds)
        if got["rps"] > best.get(key, {}).get("rps", 0.0):
            best[key] = got

    with contextlib.ExitStack() as stack:
        stack.enter_context(servers.running(*servers.service(ports["service"])))
        quiet = servers.service(ports["quiet"], SCE_ACCESS_LOG="false")
        stack.enter_context(servers.running(*quiet))
        stack.enter_context(servers.running(*servers.bare(ports["bare"])))
        for name, spec in peers.items():
            if spec is not None:
                stack.enter_context(servers.running(*spec))
                ports[name] = int(spec[1].split(":")[2].split("/")[0])
        for _ in range(2):  # interleaved rounds
            for connections in (1, 8):
                run(f"v1 {connections}", ports["service"], "v1 JSON", connections)
                run(f"bare {connections}", ports["bare"], http.BARE, connections)
            run("v2 service", ports["quiet"], "v2 JSON", 8)
            for name in peers:
                if name in ports:
                    run(f"v2 {name}", ports[name], "v2 JSON", 8)
            run("tail", ports["service"], "v1 JSON", 64)
    rows = []
    for connections in (1, 8):
        ours, bare = best[f"v1 {connections}"]["rps"], best[f"bare {connections}"]["rps"]
        rows.append(_row(f"small v1 JSON 32 x 10, {connections} connection(s)",
                         f"{ours:.0f} req/s", f"bare FastAPI parse {bare:.0f} req/s",
                         ours / bare, ">= 0.8x", ours / bare / 0.8))  # fmt: skip
    ours = best["v2 service"]["rps"]
    for name in peers:
        if f"v2 {name}" in best:
            theirs = best[f"v2 {name}"]["rps"]
            rows.append(_row("small v2 JSON 32 x 10, 8 connections", f"{ours:.0f} req/s",
                             f"{name} {theirs:.0f} req/s", ours / theirs, ">= 2x",
                             ours / theirs / 2))  # fmt: skip
        else:
            rows.append(_row("small v2 JSON 32 x 10, 8 connections", f"{ours:.0f} req/s",
                             f"{name}: not run (make bench-peers)", float("nan"), ">= 2x",
                             0.0))  # fmt: skip
    tail = best["tail"]
    ratio = tail["p99"] / tail["p50"]
    rows.append(_row("small v1 JSON, 64 connections, default settings",
                     f"p99 {tail['p99']:.1f} ms", f"p50 {tail['p50']:.1f} ms", ratio,
                     "p99 <= 3x p50", 3 / ratio))  # fmt: skip
    return rows


def json_row(repeat: int = 3) -> Row:
    body = json_decode.big_bodies()["orjson float32"]
    port = servers.free_port()
    server = servers.running(*servers.service(port, **ENV))
    with tempfile.TemporaryDirectory() as tmp, server as pid:
        path = Path(tmp) / "body.json"
        path.write_bytes(body)
        floor = transport.json_floor(path, repeat)
        idle = servers.rss_kib(pid) * 1024
        url = f"http://127.0.0.1:{port}/v1/softmax_cross_entropy_with_logits"
        seconds = tiny.curl(url, path, ["Content-Type: application/json"])
        growth = (servers.rss_kib(pid, "VmHWM") * 1024 - idle) / len(body)
        for _ in range(repeat - 1):
            seconds = min(seconds, tiny.curl(url, path, ["Content-Type: application/json"]))
    ratio = seconds / floor
    shape = " x ".join(map(str, json_decode.SHAPE))
    return _row(f"{len(body) / 2**20:.0f} MiB v1 JSON (2 tensors of {shape}), end to end",
                f"{seconds:.3f} s; peak RSS growth {growth:.2f}x the body",
                f"orjson + np.asarray in process {floor:.3f} s", ratio,
                "<= 0.5x; RSS <= 3x the body", min(0.5 / ratio, 3 / growth))  # fmt: skip


def big_body_row(repeat: int = 5, mib: int = 128) -> Row:
    labels, logits, header = tiny._binary_request(mib * 2**20 // 4 // 1024, 1024, ["loss"])
    ports = {name: servers.free_port() for name in ("service", "uvicorn", "granian")}
    infer = "/v2/models/softmax_cross_entropy_with_logits/infer"
    routes = {"service": infer, "uvicorn": "/echo-size", "granian": "/echo-size"}
    best = dict.fromkeys(ports, float("inf"))
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        stack.enter_context(servers.running(*servers.service(ports["service"], **ENV)))
        stack.enter_context(servers.running(*servers.bare(ports["uvicorn"])))
        stack.enter_context(servers.running(*servers.granian(ports["granian"])))
        path = Path(tmp) / "body"
        path.write_bytes(header + labels.tobytes() + logits.tobytes())
        del labels, logits
        headers = [f"Inference-Header-Content-Length: {len(header)}"]
        for _ in range(repeat):
            for name, port in ports.items():
                url = f"http://127.0.0.1:{port}{routes[name]}"
                best[name] = min(best[name], tiny.curl(url, path, headers))
    gib = 2 * mib / 1024
    rate = gib / best["service"]
    return _row(f"{2 * mib} MiB v2 binary, curl", f"{rate:.2f} GiB/s ({best['service']:.3f} s)",
                f"bare uvicorn {gib / best['uvicorn']:.2f} GiB/s, bare granian "
                f"{gib / best['granian']:.2f} GiB/s", best["uvicorn"] / best["service"],
                ">= 1 GiB/s", rate)  # fmt: skip


def safetensors_row() -> Row:
    times = tiny.answer_times({"service": servers.ROOT})
    st, v2 = times["safetensors, service"], times["v2 binary, service"]
    return _row("1024 x 32000 loss + grad_logits, safetensors vs v2 binary",
                f"safetensors {st:.3f} s", f"v2 binary {v2:.3f} s", st / v2,
                "equal within noise (<= 1.1x)", 1.1 * v2 / st)  # fmt: skip


def workers_row(seconds: float) -> Row:
    runs = [http.workers(seconds) for _ in range(2)]
    ratios = [run[2] / run[1] for run in runs]
    return _row("2 workers vs 1 on 2 CPUs, v1 JSON at 64 connections",
                ", ".join(f"{run[2]:.0f} vs {run[1]:.0f} req/s" for run in runs),
                "1 worker, same run", min(ratios), ">= 1.8x in every run",
                min(ratios) / 1.8)  # fmt: skip


def measure(seconds: float) -> list[Row]:
    return [engine_row(), *small_rows(seconds), json_row(), big_body_row(), safetensors_row(),
            workers_row(seconds)]  # fmt: skip


def section(rows: list[Row], command: str) -> list[str]:
    out = ["## Issue 11's targets, measured side by side", "",
           f"`{command}`: each row's contenders in the same run (module docstring of "
           "`bench/targets.py`).", "",
           "| work | measured | against | ratio | target | met |",
           "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        out.append(f"| {r['work']} | {r['measured']} | {r['against']} | {r['ratio']} | "
                   f"{r['target']} | {'yes' if r['met'] else 'no'} |")  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5)
    args = parser.parse_args()
    rows = measure(args.seconds)
    print(json.dumps(rows, indent=1))
    print("\n".join(section(rows, "python -m bench.targets")))


if __name__ == "__main__":
    main()
