"""In-process engine figures: time against numpy and a memcpy of the inputs, and accuracy.

Usage: python bench/engine.py [--rows 8192 --classes 4096 --repeat 7]
Each contender runs interleaved with the others (round-robin), best of `repeat`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.engine.engine import Engine
from tests.reference import NUMPY, random_distribution, softmax_xent


def numpy_loss(labels: np.ndarray, logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return -(labels * log_p).sum(axis=-1)


def interleaved(contenders: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    best = dict.fromkeys(contenders, float("inf"))
    for fn in contenders.values():
        fn()  # warm-up
    for _ in range(repeat):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--classes", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    engine = Engine()
    rng = np.random.default_rng()
    shape = (args.rows, args.classes)
    labels = random_distribution(rng, shape, -1).astype(np.float32)
    logits = rng.standard_normal(shape, dtype=np.float32)
    everything = ["loss", "grad_logits", "grad_labels"]
    times = interleaved(
        {
            "memcpy of both inputs": lambda: (labels.copy(), logits.copy()),
            "engine loss": lambda: engine.softmax_cross_entropy(labels=labels, logits=logits),
            "numpy loss (float32)": lambda: numpy_loss(labels, logits),
            "engine loss + both gradients": lambda: engine.softmax_cross_entropy(
                labels=labels, logits=logits, outputs=everything
            ),
        },
        args.repeat,
    )
    floor = times["memcpy of both inputs"]
    print(f"## {args.rows} x {args.classes} float32, best of {args.repeat}, interleaved\n")
    print("| contender | ms | x memcpy |\n|---|---|---|")
    for name, seconds in times.items():
        print(f"| {name} | {seconds * 1e3:.1f} | {seconds / floor:.2f} |")

    print("\n## Error against the float64 reference (256 x 1000, random inputs)\n")
    print("| dtype | loss max rel err | grad_logits max abs err | grad_labels max rel err |")
    print("|---|---|---|---|")
    for dtype in NUMPY:
        y = random_distribution(rng, (256, 1000), -1).astype(NUMPY[dtype])
        x = (rng.standard_normal((256, 1000)) * 3).astype(NUMPY[dtype])
        got = engine.softmax_cross_entropy(labels=y, logits=x, outputs=everything)
        want = softmax_xent(y, x)
        err = {name: np.abs(array.astype(np.float64) - want[name]) for name, array in got.items()}
        rel = {
            name: float(np.max(e / np.maximum(np.abs(want[name]), 1e-30)))
            for name, e in err.items()
        }
        gx = float(err["grad_logits"].max())
        print(f"| {dtype} | {rel['loss']:.2e} | {gx:.2e} | {rel['grad_labels']:.2e} |")


if __name__ == "__main__":
    main()
