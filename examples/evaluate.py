"""Stream a dataset through the service in batches; print the exact mean loss and perplexity.

    pip install './clients/python[progress]'     # the client alone; tqdm for the bar
    python examples/evaluate.py --url http://127.0.0.1:8000 --samples 20000 --batch 1024
    python examples/evaluate.py --sparse   # integer labels, -100 marks padding

Makes a `.npz` dataset (logits, smoothed one-hot labels, and integer labels with some
positions set to -100) when the file is missing or was made by this script for another
`--samples`/`--classes`, then sends it batch by batch with `sce_client.evaluate`
(a progress bar when tqdm is installed). Each batch asks for `reduction="sum"` and the
output `weight_sum`, so only two numbers come back per batch, and the dataset mean is
the sum of the batches' losses over the sum of their weights: exact, whatever the batch
sizes and however many positions a batch ignores (a mean of batch means is not).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from sce_client import Client, Error, evaluate

IGNORE_INDEX = -100  # PyTorch's default for padded positions
DEFAULT_SAMPLES = 20000
MADE_HERE = "made_by_examples_evaluate"  # marks files this script may remake


def make_dataset(path: Path, samples: int, classes: int, seed: int = 0) -> None:
    """Random logits, smoothed one-hot labels, and the same classes as integers with about
    one position in ten set to IGNORE_INDEX; saved as a .npz."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((samples, classes), dtype=np.float32) * 2
    targets = rng.integers(0, classes, samples)
    labels = np.full((samples, classes), 0.1 / (classes - 1), np.float32)
    labels[np.arange(samples), targets] = 0.9
    tokens = np.where(rng.random(samples) < 0.1, IGNORE_INDEX, targets).astype(np.int64)
    with path.open("wb") as file:  # (np.savez would add .npz to a name without it)
        np.savez(file, logits=logits, labels=labels, tokens=tokens, **{MADE_HERE: np.array(1)})


def load_dataset(path: Path, samples: int | None, classes: int) -> dict[str, np.ndarray]:
    """The dataset at `path`, made (again) when missing or made here for another size; a
    file from elsewhere is never overwritten."""
    if path.exists():
        with np.load(path) as data:
            arrays = {name: data[name] for name in data.files}
        shape = arrays["logits"].shape
        if samples is None or shape == (samples, classes):
            return arrays
        if MADE_HERE not in arrays:
            raise SystemExit(
                f"{path} holds {shape[0]} x {shape[1]} logits, not {samples} x {classes}, and "
                "was not made by this script: choose another --data or leave out --samples"
            )
    count = DEFAULT_SAMPLES if samples is None else samples
    make_dataset(path, count, classes)
    print(f"made {path}: {count} samples, {classes} classes", file=sys.stderr)
    with np.load(path) as data:
        return {name: data[name] for name in data.files}


def batches(
    labels: np.ndarray, logits: np.ndarray, size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for start in range(0, len(logits), size):
        yield labels[start : start + size], logits[start : start + size]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--data", type=Path, default=Path("eval-data.npz"))
    parser.add_argument(
        "--samples",
        type=int,
        help=f"dataset size (default: the file's, or {DEFAULT_SAMPLES} for a new file)",
    )
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument(
        "--sparse",
        action="store_true",
        help=f"integer labels (the sparse op), positions labelled {IGNORE_INDEX} ignored",
    )
    parser.add_argument("--transport", choices=["v2", "safetensors"], default="v2")
    parser.add_argument("--api-key")
    args = parser.parse_args()

    data = load_dataset(args.data, args.samples, args.classes)
    labels = data["tokens"] if args.sparse else data["labels"]
    try:
        with Client(args.url, transport=args.transport, api_key=args.api_key) as client:
            client.metadata()  # an absent server fails here, in one line, before the bar
            result = evaluate(
                client,
                batches(labels, data["logits"], args.batch),
                sparse=args.sparse,
                ignore_index=IGNORE_INDEX if args.sparse else None,
                total=math.ceil(len(labels) / args.batch),
            )
    except Error as exc:
        print(f"evaluate.py: {exc}", file=sys.stderr)
        return 1
    what = "labelled positions" if args.sparse else "samples"
    print(f"mean loss over {result.weight_sum:.0f} {what}: {result.mean:.6f}")
    print(f"perplexity: {math.exp(result.mean):.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
