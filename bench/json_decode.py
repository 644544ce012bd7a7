"""Big JSON into numpy: the service's decoder against orjson.loads + np.asarray.

The same bytes go to both: a native-API body with labels and logits of 512 x 1000 x 2
float32 (~27 MiB of JSON, as orjson writes float32), and a float64 one written by
Python's json (", " separators, 17 digits). Time is the best of `repeat` runs; memory
is tracemalloc's peak beyond the body (numpy reports its buffers to tracemalloc).

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


def bodies() -> dict[str, bytes]:
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


def service(body: bytes) -> list[np.ndarray]:
    document = json_document.loads(body, bare_non_finite=False)
    return [json_tensor.decode(document[n], DType.float32, n) for n in ("labels", "logits")]


def baseline(body: bytes) -> list[np.ndarray]:
    parsed = orjson.loads(body)
    return [np.asarray(parsed[n], np.float32) for n in ("labels", "logits")]


def peak(fn: Callable[[bytes], object], body: bytes) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        result = fn(body)
        del result
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def measure(repeat: int = 5) -> dict[str, dict[str, float]]:
    figures: dict[str, dict[str, float]] = {}
    for label, body in bodies().items():
        for name, fn in (("service", service), ("orjson + np.asarray", baseline)):
            best = float("inf")
            for _ in range(repeat):
                start = time.perf_counter()
                fn(body)
                best = min(best, time.perf_counter() - start)
            figures[f"{label}, {name}"] = {
                "body MiB": len(body) / 2**20,
                "seconds": best,
                "peak MiB": peak(fn, body) / 2**20,
            }
        figures[f"{label}, parse_cost bound"] = {
            "peak MiB": json_document.parse_cost(len(body)) / 2**20
        }
    return figures


if __name__ == "__main__":
    for key, row in measure().items():
        print(f"{key:45s} " + "  ".join(f"{k} {v:8.3f}" for k, v in row.items()))
