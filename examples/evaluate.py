"""Stream a dataset through the service in batches and print the mean loss.

    python examples/evaluate.py --url http://127.0.0.1:8000 --samples 20000 --batch 1024

Makes a `.npz` dataset (logits and one-hot-ish soft labels) if the file is missing,
then sends it batch by batch with `service.client` and shows a progress bar.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from tqdm import tqdm

from service.client import Client


def make_dataset(path: Path, samples: int, classes: int, seed: int = 0) -> None:
    """Random logits and smoothed one-hot labels, saved as a .npz."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((samples, classes), dtype=np.float32) * 2
    labels = np.full((samples, classes), 0.1 / (classes - 1), np.float32)
    labels[np.arange(samples), rng.integers(0, classes, samples)] = 0.9
    np.savez(path, logits=logits, labels=labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--data", type=Path, default=Path("eval-data.npz"))
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--transport", choices=["safetensors", "v2"], default="safetensors")
    parser.add_argument("--api-key")
    args = parser.parse_args()

    if not args.data.exists():
        make_dataset(args.data, args.samples, args.classes)
    data = np.load(args.data)
    logits, labels = data["logits"], data["labels"]
    total, count = 0.0, 0
    with Client(args.url, transport=args.transport, api_key=args.api_key) as client:
        for start in tqdm(range(0, len(logits), args.batch), unit="batch", desc="evaluating"):
            stop = start + args.batch
            out = client.softmax_cross_entropy(labels=labels[start:stop], logits=logits[start:stop])
            total += float(out["loss"].sum(dtype=np.float64))
            count += len(out["loss"])
    print(f"mean loss over {count} samples: {total / count:.6f}")


if __name__ == "__main__":
    main()
