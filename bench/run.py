"""`make bench`: every benchmark in one run, written to docs/benchmarks.md and a plot.

    python -m bench.run [--quick]

Sections: issue 11's targets, each row with its floor or peer (bench/targets.py); (a)
engine vs memcpy, numpy and PyTorch (if installed); (b) small requests at concurrency
1/8/64 next to bare FastAPI endpoints (wrk); (c) large payloads next to the byte floors
on uvicorn and granian (curl), with (e) the server's peak RSS; (d) MLServer and KServe
(if `make bench-peers` built their venvs) with the same clients; (f) 1 vs 2 workers;
big JSON decode.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from bench import engine, http, json_decode, pressure, targets, transport

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
PLOT = ROOT / "docs" / "benchmarks.png"
RAW = ROOT / "bench" / ".last-run.json"  # the figures of the last run (not committed)


def _engine_section(rows: list[dict], accuracy: list[dict]) -> list[str]:
    out = ["## (a) Engine, in process (float32, 2 intra-op threads)", ""]
    sizes = list(dict.fromkeys(r["size"] for r in rows))
    names = list(dict.fromkeys(r["contender"] for r in rows))
    out.append("| contender | " + " | ".join(f"{s} ms" for s in sizes) + " |")
    out.append("|---|" + "---|" * len(sizes))
    get = {(r["size"], r["contender"]): r["seconds"] for r in rows}
    for name in names:
        cells = [f"{get[s, name] * 1e3:.3f}" if (s, name) in get else "" for s in sizes]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    out += ["", "| ratio | " + " | ".join(sizes) + " |", "|---|" + "---|" * len(sizes)]
    ratios = {
        "engine loss / memcpy": ("engine loss", "memcpy of both inputs", 1),
        "engine loss+grads / (3 x memcpy)": ("engine loss + grads", "memcpy of both inputs", 3),
        "numpy loss / engine loss": ("numpy loss", "engine loss", 1),
        "PyTorch loss / engine loss": ("PyTorch loss", "engine loss", 1),
        "PyTorch loss+grads / engine loss+grads": (
            "PyTorch loss + grads",
            "engine loss + grads",
            1,
        ),
        "TensorFlow loss / engine loss": ("TensorFlow loss", "engine loss", 1),
        "TensorFlow loss+grads / engine loss+grads": (
            "TensorFlow loss + grads",
            "engine loss + grads",
            1,
        ),
        "TensorFlow loss+grads / TensorFlow loss": (
            "TensorFlow loss + grads",
            "TensorFlow loss",
            1,
        ),
    }
    for label, (a, b, k) in ratios.items():
        if any((s, a) in get for s in sizes):
            out.append(f"| {label} | " + " | ".join(
                f"{get[s, a] / (k * get[s, b]):.2f}" if (s, a) in get else "" for s in sizes
            ) + " |")  # fmt: skip
    out += ["", "Error against the float64 numpy reference (256 x 1000, random inputs):", ""]
    out += ["| dtype | loss rel | grad_logits abs | grad_labels rel |", "|---|---|---|---|"]
    for row in accuracy:
        out.append(
            f"| {row['dtype']} | {row['loss']:.2e} | {row['grad_logits_abs']:.2e} | "
            f"{row['grad_labels']:.2e} |"
        )
    return out


def _small_section(
    small: list[dict], workers: dict, peers: dict | None, big_json: dict
) -> list[str]:
    out = ["", "## (b) Small requests (32 x 10 FP32), wrk, same uvicorn settings", ""]
    out += [f"The floor is `{http.BARE}`: a bare FastAPI endpoint that parses the same JSON "
            "into arrays (orjson, np.asarray) and answers, on the loop the service's one "
            "worker runs on (asyncio's).", ""]  # fmt: skip
    out += ["| path | concurrency | req/s | p50 ms | p99 ms | x bare FastAPI parse req/s |",
            "|---|---|---|---|---|---|"]  # fmt: skip
    bare = {r["concurrency"]: r["rps"] for r in small if r["path"] == http.BARE}
    for r in small:
        ratio = r["rps"] / bare[r["concurrency"]]
        out.append(f"| {r['path']} | {r['concurrency']} | {r['rps']:.0f} | {r['p50']:.2f} | "
                   f"{r['p99']:.1f} | {ratio:.2f} |")  # fmt: skip
    out += ["", "## (f) Workers: v1 JSON 32 x 10 at 64 connections (wrk)", "",
            "| workers | req/s |", "|---|---|"]  # fmt: skip
    out += [f"| {k} | {v:.0f} |" for k, v in workers.items()]
    w = list(workers.values())
    out += ["", f"2 workers / 1 worker: **{w[1] / w[0]:.2f}x**"]
    out += ["", "## (d) MLServer 1.7.1 and KServe 0.21 (numpy models), same clients, "
            "none writing access logs", ""]  # fmt: skip
    if peers is None:
        out.append("Not run: bench/.venv-mlserver and .venv-kserve are missing "
                   "(see `make bench-peers`).")  # fmt: skip
    else:
        out += ["| measure | value |", "|---|---|"]
        out += [f"| {k} | {v:.3f} |" for k, v in peers.items()]
    out += ["", "## Big JSON decode (512 x 1000 x 2 tensors), in process", "",
            "`python -m bench.json_decode`'s figures: best of the runs, tracemalloc's peak.",
            "", "```"]  # fmt: skip
    out += [f"{k:45s} " + "  ".join(f"{n} {v:10.3f}" for n, v in row.items())
            for k, row in big_json.items()]  # fmt: skip
    out += ["```"]
    return out


def _payload_section(rows: list[dict]) -> list[str]:
    out = ["", "## (c, e) Large payloads: 2 tensors, loss back (curl); server peak RSS", ""]
    out += ["| path | payload MiB | body MiB | seconds | MiB/s of payload | x floor throughput | "
            "peak RSS MiB | peak RSS / payload | (peak - idle) / payload |",
            "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    floor = {r["payload_mib"]: r["seconds"] for r in rows if r["path"] == transport.FLOOR}
    for r in rows:
        rss, mib = r["peak_rss_mib"], r["payload_mib"]
        memory = (
            f"{rss:.0f} | {rss / mib:.2f} | {(rss - r['idle_rss_mib']) / mib:.2f} |"
            if rss
            else " | | |"
        )
        out.append(
            f"| {r['path']} | {mib:g} | {r['body_mib']:.0f} | {r['seconds']:.3f} | "
            f"{mib / r['seconds']:.0f} | {floor[mib] / r['seconds']:.2f} | {memory}"
        )
    return out


def _kept(old: str, lines: list[str]) -> list[str]:
    """The sections of the old page that this run does not write (those of bench.options,
    bench.tiny, bench.tracing: run by hand, with their own commands), in their order."""
    written = {line for line in lines if line.startswith("## ")}
    kept: list[str] = []
    keep = False
    for line in old.splitlines():
        if line.startswith("## "):
            keep = line not in written
        if keep:
            kept.append(line)
    return kept


def plot(small: list[dict], payloads: list[dict], goals: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(17, 9))
    grid = fig.add_gridspec(2, 3)
    speed, latency, small_p99 = (fig.add_subplot(grid[0, k]) for k in range(3))
    scores = fig.add_subplot(grid[1, :])
    labels = [f"{g['work']} vs {g['against'].split(' ')[0]}" for g in goals]
    values = [g["score"] for g in goals]
    scores.barh(labels, values, color=["tab:green" if g["met"] else "tab:red" for g in goals])
    scores.axvline(1.0, color="black", linewidth=1)
    scores.invert_yaxis()
    scores.tick_params(axis="y", labelsize="small")
    scores.set(xlabel="how far each target is met (1: exactly; more is better)",
               title="Issue 11's targets, side by side in this run")  # fmt: skip
    for name in dict.fromkeys(r["path"] for r in payloads):
        pts = [r for r in payloads if r["path"] == name]
        sizes = [r["payload_mib"] for r in pts]
        speed.plot(sizes, [r["payload_mib"] / r["seconds"] for r in pts], marker="o", label=name)
        latency.plot(sizes, [r["seconds"] for r in pts], marker="o", label=name)
    speed.set(xscale="log", yscale="log", xlabel="payload MiB (2 tensors)",
              ylabel="MiB/s of payload", title="Throughput vs payload size (curl)")  # fmt: skip
    latency.set(xscale="log", yscale="log", xlabel="payload MiB (2 tensors)",
                ylabel="seconds per request", title="Latency vs payload size (curl)")  # fmt: skip
    for name in dict.fromkeys(r["path"] for r in small):
        pts = [r for r in small if r["path"] == name]
        small_p99.plot([r["concurrency"] for r in pts], [r["p99"] for r in pts], marker="o",
                       label=name)  # fmt: skip
    small_p99.set(xscale="log", yscale="log", xlabel="concurrent connections",
                  ylabel="p99 latency ms", title="Small requests (32 x 10): p99 (wrk)")  # fmt: skip
    for axes in (speed, latency, small_p99):
        axes.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(PLOT, dpi=110)


def measure(quick: bool) -> dict[str, Any]:
    """Every figure of the page, JSON-serialisable (saved to RAW before the page is made)."""
    sizes = [(32, 10), (1024, 1000), (8192, 4096)] + ([] if quick else [(8192, 32000)])
    seconds = 2 if quick else 5
    figures: dict[str, Any] = {
        "quick": quick,
        "started": time.strftime("%Y-%m-%d %H:%M"),
        "speed": engine.measure(sizes, 3 if quick else 5),
        "accuracy": engine.accuracy(),
        "peers": http.peers(seconds),
        "workers": http.workers(seconds),
        "small": http.small_requests(seconds),
        "payloads": (  # the targets' 256 MiB v2 binary row is read from these
            transport.measure([0.5, 8, targets.BIG_MIB], 2, json_up_to=8)
            if quick
            else transport.measure([0.5, 2, 8, 32, targets.BIG_MIB], 5)
        ),
        "big_json": json_decode.measure(),
        "resources": pressure.run(quick),
    }
    figures["goals"] = targets.rows(figures, seconds)
    return figures


def write(figures: dict[str, Any]) -> None:
    """docs/benchmarks.md and its plot from a run's figures."""
    command = f"python -m bench.run{' --quick' * figures['quick']}"
    lines = [
        "# Benchmarks",
        "",
        f"Produced by `make bench` (`{command}`) on {figures['started']}, "
        f"{platform.machine()}, {len(os.sched_getaffinity(0))} CPUs, Python "
        f"{sys.version.split()[0]}: one run, contenders interleaved, best of the repeats. "
        "The machine is shared and noisy: the ratios are the meaningful part.",
        "",
        "![throughput and latency](benchmarks.png)",
        "",
        *targets.section(figures["goals"], command=command),
        "",
        *_engine_section(figures["speed"], figures["accuracy"]),
        *_small_section(
            figures["small"], {int(k): v for k, v in figures["workers"].items()},
            figures["peers"], figures["big_json"],
        ),
        *_payload_section(figures["payloads"]),
        "",
        *pressure.section(*figures["resources"], command=command),
        "",
    ]  # fmt: skip
    DOC.write_text("\n".join([*lines, *_kept(DOC.read_text(), lines)]))
    plot(figures["small"], figures["payloads"], figures["goals"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small sizes, short runs")
    parser.add_argument("--from-json", type=Path, help=f"make the page from saved figures ({RAW})")
    args = parser.parse_args()
    if args.from_json is None:
        figures = measure(args.quick)
        RAW.write_text(json.dumps(figures, indent=1))  # kept if making the page fails
    else:
        figures = json.loads(args.from_json.read_text())
    write(figures)
    print(DOC.read_text())


if __name__ == "__main__":
    main()
