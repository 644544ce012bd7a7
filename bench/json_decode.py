"""JSON into numpy: the service's decoder against orjson.loads + np.asarray.

The same bytes go to both. Big bodies: labels and logits of 512 x 1000 x 2 float32, as
orjson writes float32 (~23 MiB), and as Python's json writes float64 (", " separators,
17 digits, ~42 MiB); time is the best of `repeat` runs, memory tracemalloc's peak
(numpy reports its buffers to tracemalloc), the output (8 MiB) included. Then bodies
from 133 bytes to 4 MiB ([n, 10] float32 labels and logits), time only: up to
json_document.SMALL_BODY the service reads with orjson first, above it the general way.

    python -m bench.json_decode
"""

from __future__ import annotations

import gc
import json
import time
import tracemalloc
from collections.abc import Callable

import numpy as np
import orjson

from service.codecs import json_document, json_tensor
from service.engine.types import DType

SHAPE = (512, 1000, 2)
ROWS = (8, 128, 512, 4096, 32768)
EXAMPLE = (
    b'{"labels": [[0.0, 1.0], [0.5, 0.5]], "logits": [[2.0, -1.0], [0.3, 0.1]], '
    b'"outputs": ["loss", "grad_logits"], "name": "eval-step-42"}'
)


def big_bodies() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    labels = rng.dirichlet(np.ones(2), SHAPE[:2]).astype(np.float32)
    logits = rng.standard_normal(SHAPE).astype(np.float32)
    numpy = orjson.OPT_SERIALIZE_NUMPY
    return {
        "orjson float32": orjson.dumps({"labels": labels, "logits": logits}, option=numpy),
        "json float64": json.dumps(
            {"labels": labels.astype(np.float64).tolist(), "logits": logits.tolist()}
        ).encode(),
    }


def sized_bodies() -> dict[str, bytes]:
    rng = np.random.default_rng(1)
    bodies = {"README example": EXAMPLE}
    for rows in ROWS:
        document = {
            "labels": rng.dirichlet(np.ones(10), rows).astype(np.float32),
            "logits": rng.standard_normal((rows, 10)).astype(np.float32),
            "outputs": ["loss"],
        }
        body = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
        bodies[f"[{rows}, 10]"] = body
    return bodies


def service(body: bytes) -> list[np.ndarray]:
    document = json_document.loads(body, bare_non_finite=False)
    return [json_tensor.decode(document[n], DType.float32, n) for n in ("labels", "logits")]


def baseline(body: bytes) -> list[np.ndarray]:
    parsed = orjson.loads(body)
    return [np.asarray(parsed[n], np.float32) for n in ("labels", "logits")]


def best(fn: Callable[[bytes], object], body: bytes, budget: float = 0.5) -> float:
    """The best time of one call, over about `budget` seconds of calls."""
    start = time.perf_counter()
    fn(body)
    once = time.perf_counter() - start
    number = max(1, min(1000, int(budget / 5 / max(once, 1e-7))))
    times = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(number):
            fn(body)
        times.append((time.perf_counter() - start) / number)
    return min(times)


def peak(fn: Callable[[bytes], object], body: bytes) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        result = fn(body)
        del result
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def measure() -> dict[str, dict[str, float]]:
    figures: dict[str, dict[str, float]] = {}
    for label, body in big_bodies().items():
        for name, fn in (("service", service), ("orjson + np.asarray", baseline)):
            figures[f"{label}, {name}"] = {
                "body MiB": len(body) / 2**20,
                "seconds": best(fn, body, budget=3.0),
                "peak MiB": peak(fn, body) / 2**20,
            }
        figures[f"{label}, parse_cost bound"] = {"MiB": json_document.parse_cost(len(body)) / 2**20}
    for label, body in sized_bodies().items():
        figures[f"{label}, {len(body)} bytes"] = {
            "service us": best(service, body) * 1e6,
            "orjson + np.asarray us": best(baseline, body) * 1e6,
        }
    return figures


if __name__ == "__main__":
    for key, row in measure().items():
        print(f"{key:45s} " + "  ".join(f"{k} {v:10.3f}" for k, v in row.items()))
