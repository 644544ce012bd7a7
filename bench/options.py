"""What the evaluation options cost (issue 13), in process, float32, side by side:

* time of each option against `reduction: none` at one size (8192 x 32000 by default),
  the loss alone and the loss with grad_logits, soft and integer labels, best of
  `--repeat` interleaved rounds;
* the JSON response of a reduced request against a per-example one (the service's own
  encoder);
* the engine's start (sessions built) and RSS after it, this tree against `--base` (a
  checkout of the commit before the options, e.g. `git worktree add /tmp/base c45ac14`),
  alternated in fresh processes;
* large vocabularies: chunked class sums (the default) against whole rows
  (SCE_CHUNKED_SOFTMAX=false), time at the same size and float32 error by class count
  beside TensorFlow 2.21's (tests/engine/test_accuracy.py's inputs and measures).

    python -m bench.options [--size 8192x32000] [--repeat 3] [--base /tmp/base]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from bench.engine import interleaved
from service.api.v1 import encode_json
from service.engine.engine import Engine
from service.engine.types import Options
from tests.engine.test_accuracy import TF_GRAD_ABS, TF_LOSS_REL, sparse_soft_inputs
from tests.reference import random_distribution, softmax_xent

START_SCRIPT = """
import resource, time
t = time.perf_counter()
from service.engine.engine import Engine
e = Engine()
took = time.perf_counter() - t
rss = int(open("/proc/self/statm").read().split()[1]) * 4096
print(took, rss)
"""


def option_times(n: int, c: int, repeat: int) -> list[dict[str, object]]:
    engine = Engine()
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((n, c), dtype=np.float32)
    soft = random_distribution(rng, (n, c), -1).astype(np.float32)
    targets = rng.integers(0, c, n)
    targets[rng.random(n) < 0.1] = -100
    class_weights = rng.random(c).astype(np.float32)
    sample_weights = rng.random(n).astype(np.float32)
    kinds: dict[str, dict[str, object]] = {
        "none": {},
        "mean": {"options": Options("mean")},
        "sum": {"options": Options("sum")},
        "mean + sample_weights": {"options": Options("mean"), "sample_weights": sample_weights},
        "mean + class_weights": {"options": Options("mean"), "class_weights": class_weights},
        "mean + label_smoothing 0.1": {"options": Options("mean", 0.1)},
    }
    rows: list[dict[str, object]] = []
    for op_name, op, labels, ignore in (
        ("soft", engine.softmax_cross_entropy, soft, None),
        ("sparse", engine.sparse_softmax_cross_entropy, targets, -100),
    ):
        for outputs in (["loss"], ["loss", "grad_logits"]):
            contenders: dict[str, Callable[[], object]] = {}
            for name, kwargs in kinds.items():
                kwargs = dict(kwargs)
                options = kwargs.pop("options", Options())
                assert isinstance(options, Options)
                options = Options(options.reduction, options.label_smoothing, ignore)
                contenders[name] = partial(
                    op, labels=labels, logits=logits, outputs=outputs, options=options, **kwargs
                )
            times = interleaved(contenders, repeat)
            for name, seconds in times.items():
                rows.append(
                    {
                        "op": op_name,
                        "outputs": "+".join(outputs),
                        "options": name,
                        "seconds": seconds,
                        "vs_none": seconds / times["none"],
                    }
                )
    return rows


def chunked_times(n: int, c: int, repeat: int) -> list[dict[str, object]]:
    engines = {"chunked": Engine(), "whole rows": Engine(chunked_softmax=False)}
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((n, c), dtype=np.float32)
    soft = random_distribution(rng, (n, c), -1).astype(np.float32)
    targets = rng.integers(0, c, n)
    rows: list[dict[str, object]] = []
    for op_name, labels in (("soft", soft), ("sparse", targets)):
        for outputs in (["loss"], ["loss", "grad_logits"]):
            contenders: dict[str, Callable[[], object]] = {}
            for name, engine in engines.items():
                op = (
                    engine.softmax_cross_entropy
                    if op_name == "soft"
                    else engine.sparse_softmax_cross_entropy
                )
                contenders[name] = partial(op, labels=labels, logits=logits, outputs=outputs)
            times = interleaved(contenders, repeat)
            rows.append(
                {
                    "op": op_name,
                    "outputs": "+".join(outputs),
                    **{k: round(v, 4) for k, v in times.items()},
                    "ratio": times["chunked"] / times["whole rows"],
                }
            )
    return rows


def chunked_accuracy() -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for chunked in (True, False):
        engine = Engine(chunked_softmax=chunked)
        for classes in (1_000, 32_000, 128_000, 256_000):
            for scale in (3.0, 6.0):
                y, x = sparse_soft_inputs(classes, scale, "float32")
                want = softmax_xent(y, x)
                got = engine.softmax_cross_entropy(
                    labels=y, logits=x, outputs=["loss", "grad_logits", "grad_labels"]
                )
                err = {n: np.abs(a.astype(np.float64) - want[n]) for n, a in got.items()}
                rows.append(
                    {
                        "sums": "chunked" if chunked else "whole rows",
                        "classes": classes,
                        "logits_scale": scale,
                        "loss_rel": float(np.max(err["loss"] / np.abs(want["loss"]))),
                        "grad_logits_abs": float(err["grad_logits"].max()),
                        "grad_labels_normwise": float(
                            err["grad_labels"].max() / np.abs(want["grad_labels"]).max()
                        ),
                        "tensorflow_loss_rel": TF_LOSS_REL,
                        "tensorflow_grad_logits_abs": TF_GRAD_ABS,
                    }
                )
    return rows


def response_sizes(n: int, c: int) -> dict[str, int]:
    engine = Engine()
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((n, c), dtype=np.float32)
    targets = rng.integers(0, c, n)
    sizes = {}
    for reduction in ("none", "mean"):
        outputs = ["loss"] + (["weight_sum"] if reduction != "none" else [])
        result = engine.sparse_softmax_cross_entropy(
            labels=targets, logits=logits, outputs=outputs, options=Options(reduction)
        )
        sizes[f"JSON, reduction {reduction}"] = len(encode_json(result, "eval-batch"))
    return sizes


def start_cost(base: Path | None, rounds: int = 5) -> dict[str, dict[str, float]]:
    trees = {"this tree": Path(__file__).resolve().parent.parent}
    if base is not None:
        trees["base"] = base
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in trees}
    for _ in range(rounds):
        for name, tree in trees.items():
            env = {**os.environ, "PYTHONPATH": str(tree)}
            out = subprocess.run(
                [sys.executable, "-c", START_SCRIPT], env=env, capture_output=True, text=True
            )
            took, rss = out.stdout.split()
            samples[name].append((float(took), float(rss)))
    return {
        name: {
            "start_seconds_median": statistics.median(t for t, _ in values),
            "rss_mib_median": statistics.median(r for _, r in values) / (1 << 20),
        }
        for name, values in samples.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="8192x32000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--base", type=Path)
    args = parser.parse_args()
    n, c = (int(v) for v in args.size.split("x"))
    report = {
        "start": start_cost(args.base),
        "response_bytes": response_sizes(n, c),
        "times": option_times(n, c, args.repeat),
        "chunked_times": chunked_times(n, c, args.repeat),
        "chunked_accuracy": chunked_accuracy(),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
