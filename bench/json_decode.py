"""Big JSON (512 x 1000) into numpy: the service's decoder against json.loads + np.asarray."""

from __future__ import annotations

import json
import time

import numpy as np

from service.api.v1 import parse_arguments
from service.codecs import json_tensor
from service.engine.types import DType
from service.schemas import LossRequest


def measure(repeat: int = 7) -> dict[str, float]:
    rng = np.random.default_rng(0)
    document = {
        "labels": np.full((512, 1000), 1e-3).tolist(),
        "logits": rng.standard_normal((512, 1000)).tolist(),
    }
    body = json.dumps(document).encode()

    def service() -> object:
        args = parse_arguments(body, LossRequest)
        return [
            json_tensor.decode(v, DType.float32, n)
            for n, v in (("labels", args.labels), ("logits", args.logits))
        ]

    def baseline() -> object:
        parsed = json.loads(body)
        return [np.asarray(parsed["labels"], np.float32), np.asarray(parsed["logits"], np.float32)]

    best = {"service decoder": float("inf"), "json.loads + np.asarray": float("inf")}
    for _ in range(repeat):
        for name, fn in (("service decoder", service), ("json.loads + np.asarray", baseline)):
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


if __name__ == "__main__":
    print(measure())
