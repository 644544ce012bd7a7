"""Stream a dataset through the service in batches; print the exact mean loss and perplexity.

    python examples/evaluate.py --url http://127.0.0.1:8000 --samples 20000 --batch 1024
    python examples/evaluate.py --sparse   # integer labels, -100 marks padding

Makes a `.npz` dataset (logits, one-hot-ish soft labels, and integer labels with some
positions set to -100) if the file is missing, then sends it batch by batch with
`service.client` and shows a progress bar. Each batch asks for `reduction="sum"` and
the output `weight_sum`, so only two numbers come back per batch, and the dataset mean
is the sum of the batches' losses over the sum of their weights: exact, whatever the
batch sizes and however many positions a batch ignores (a mean of batch means is not).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from tqdm import tqdm

from service.client import Client

IGNORE_INDEX = -100  # PyTorch's default for padded positions


def make_dataset(path: Path, samples: int, classes: int, seed: int = 0) -> None:
    """Random logits, smoothed one-hot labels, and the same classes as integers with about
    one position in ten set to IGNORE_INDEX; saved as a .npz."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((samples, classes), dtype=np.float32) * 2
    targets = rng.integers(0, classes, samples)
    labels = np.full((samples, classes), 0.1 / (classes - 1), np.float32)
    labels[np.arange(samples), targets] = 0.9
    tokens = np.where(rng.random(samples) < 0.1, IGNORE_INDEX, targets).astype(np.int64)
    np.savez(path, logits=logits, labels=labels, tokens=tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--data", type=Path, default=Path("eval-data.npz"))
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument(
        "--sparse",
        action="store_true",
        help=f"integer labels (the sparse op), positions labelled {IGNORE_INDEX} ignored",
    )
    parser.add_argument("--transport", choices=["safetensors", "v2"], default="safetensors")
    parser.add_argument("--api-key")
    args = parser.parse_args()

    if not args.data.exists():
        make_dataset(args.data, args.samples, args.classes)
    data = np.load(args.data)
    logits = data["logits"]
    labels = data["tokens"] if args.sparse else data["labels"]
    total, weight = 0.0, 0.0
    with Client(args.url, transport=args.transport, api_key=args.api_key) as client:
        for start in tqdm(range(0, len(logits), args.batch), unit="batch", desc="evaluating"):
            batch = {"labels": labels[start : start + args.batch]}
            batch["logits"] = logits[start : start + args.batch]
            outputs = ["loss", "weight_sum"]
            if args.sparse:
                out = client.sparse_softmax_cross_entropy(
                    **batch, reduction="sum", ignore_index=IGNORE_INDEX, outputs=outputs
                )
            else:
                out = client.softmax_cross_entropy(**batch, reduction="sum", outputs=outputs)
            total += float(out["loss"])
            weight += float(out["weight_sum"])
    mean = total / weight if weight else math.nan
    what = "labelled positions" if args.sparse else "samples"
    print(f"mean loss over {weight:.0f} {what}: {mean:.6f}")
    print(f"perplexity: {math.exp(mean):.6f}")


if __name__ == "__main__":
    main()
