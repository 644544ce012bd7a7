"""What v1 and v2 share once a request is decoded: the class dimension and the engine call."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from service.api import metrics
from service.engine.engine import Engine, LossResult
from service.engine.types import SPARSE_OP
from service.errors import InvalidArgument


def class_dim(dim: object, axis: object) -> int:
    """`dim`, else TensorFlow 2's `axis`, else -1; both given and different is an error."""
    if dim is not None and axis is not None and dim != axis:
        raise InvalidArgument(f"dim ({dim}) and axis ({axis}) disagree; give one")
    value = dim if dim is not None else axis if axis is not None else -1
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgument(f"dim must be an integer; got {value!r}")
    return value


def compute(
    engine: Engine,
    op: str,
    arrays: Mapping[str, np.ndarray],
    *,
    outputs: Sequence[str],
    dim: int = -1,
) -> LossResult:
    """Run `op` on named arrays (labels, logits, optional grad_loss), timed for /metrics."""

    def run() -> LossResult:
        if op == SPARSE_OP:
            return engine.sparse_softmax_cross_entropy(
                labels=arrays["labels"],
                logits=arrays["logits"],
                grad_loss=arrays.get("grad_loss"),
                outputs=outputs,
            )
        return engine.softmax_cross_entropy(
            labels=arrays["labels"],
            logits=arrays["logits"],
            grad_loss=arrays.get("grad_loss"),
            dim=dim,
            outputs=outputs,
        )

    return metrics.timed_inference(op, engine.providers[0], run)
