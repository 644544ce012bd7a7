"""An independent float64 reference, in plain numpy, for every check of the numbers."""

from __future__ import annotations

import ml_dtypes
import numpy as np

# Worst relative error we accept per dtype, against the float64 reference of the same
# (already rounded) inputs: a few units in the last place of the output dtype.
TOLERANCE = {
    "float64": 1e-12,
    "float32": 2e-6,
    "float16": 2e-3,
    "bfloat16": 1.6e-2,
}
NUMPY = {
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
}


def log_softmax(logits: np.ndarray, dim: int) -> np.ndarray:
    x = logits.astype(np.float64)
    shifted = x - x.max(axis=dim, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=dim, keepdims=True))


def unbroadcast(grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum `grad` over the axes along which an input of `shape` was broadcast."""
    while grad.ndim > len(shape):
        grad = grad.sum(axis=0)
    for axis, size in enumerate(shape):
        if size == 1 and grad.shape[axis] != 1:
            grad = grad.sum(axis=axis, keepdims=True)
    return grad


def softmax_xent(
    labels: np.ndarray,
    logits: np.ndarray,
    dim: int = -1,
    grad_loss: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """loss, grad_logits, grad_labels in float64, each in its input's shape."""
    y, x = np.broadcast_arrays(labels.astype(np.float64), logits.astype(np.float64))
    log_p = log_softmax(x, dim)
    loss = -(y * log_p).sum(axis=dim)
    g = np.ones_like(loss) if grad_loss is None else grad_loss.astype(np.float64)
    g = np.expand_dims(g, dim)
    return {
        "loss": loss,
        "grad_logits": unbroadcast(g * (np.exp(log_p) - y), logits.shape),
        "grad_labels": unbroadcast(-g * log_p, labels.shape),
    }


def sparse_softmax_xent(
    labels: np.ndarray, logits: np.ndarray, grad_loss: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """loss and grad_logits of the sparse op in float64."""
    classes = logits.shape[-1]
    onehot = np.eye(classes)[labels]
    log_p = log_softmax(logits, -1)
    loss = -(onehot * log_p).sum(axis=-1)
    g = np.ones_like(loss) if grad_loss is None else grad_loss.astype(np.float64)
    return {"loss": loss, "grad_logits": g[..., None] * (np.exp(log_p) - onehot)}


def assert_close(actual: np.ndarray, expected: np.ndarray, dtype: str, what: str = "") -> None:
    """Elementwise |actual - expected| <= tol * (|expected| + scale), scale from the output."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    a = np.asarray(actual, dtype=np.float64)
    tol = TOLERANCE[dtype]
    scale = float(np.abs(expected).max(initial=0.0)) + 1.0
    err = np.abs(a - expected)
    worst = float(err.max(initial=0.0))
    assert np.all(err <= tol * (np.abs(expected) + scale)), (
        f"{what} ({dtype}): max abs error {worst:.3g} over tolerance {tol:g} x {scale:.3g}"
    )


def random_distribution(rng: np.random.Generator, shape: tuple[int, ...], dim: int) -> np.ndarray:
    """Random probability distributions along `dim`."""
    raw = rng.random(shape) + 1e-3
    return raw / raw.sum(axis=dim, keepdims=True)
