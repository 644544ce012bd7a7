"""sce_client's two transports, for the client's default: 1024 x 32000 float32 loss and
grad_logits (2 x 125 MiB in, 125 MiB out), v2 binary against safetensors.

    python -m bench.client [--rounds 5 --rows 1024 --classes 32000]

One server, transports interleaved round by round; the best of the rounds is printed
(the least disturbed by whatever else runs on the machine), with the median beside it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from sce_client import Client, Transport

from bench import servers

TRANSPORTS: tuple[Transport, ...] = ("v2", "safetensors")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--classes", type=int, default=32000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((args.rows, args.classes), dtype=np.float32)
    labels = np.zeros_like(logits)
    labels[np.arange(args.rows), rng.integers(0, args.classes, args.rows)] = 1.0
    port = servers.free_port()
    times: dict[str, list[float]] = {t: [] for t in TRANSPORTS}
    with servers.running(*servers.service(port)):
        clients = {t: Client(f"http://127.0.0.1:{port}", transport=t) for t in TRANSPORTS}
        for _ in range(args.rounds + 1):  # the first round warms up and is not counted
            for transport, client in clients.items():
                start = time.perf_counter()
                out = client.softmax_cross_entropy(
                    labels=labels, logits=logits, outputs=["loss", "grad_logits"]
                )
                times[transport].append(time.perf_counter() - start)
                assert out["grad_logits"].shape == logits.shape
        for client in clients.values():
            client.close()
    best = {t: min(v[1:]) for t, v in times.items()}
    for transport, values in times.items():
        print(
            f"{transport:12s} best {best[transport]:.3f} s, "
            f"median {statistics.median(values[1:]):.3f} s"
        )
    print(f"safetensors / v2 (best): {best['safetensors'] / best['v2']:.2f}x")


if __name__ == "__main__":
    main()
