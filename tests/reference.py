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
    """Elementwise |actual - expected| <= tol * (|expected| + scale), scale from the output;
    NaN exactly where the reference has NaN (an empty mean)."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    a = np.asarray(actual, dtype=np.float64)
    nan = np.isnan(expected)
    assert np.array_equal(np.isnan(a), nan), f"{what} ({dtype}): NaN where the reference has none"
    a, expected = np.where(nan, 0.0, a), np.where(nan, 0.0, expected)
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


def _class_axis(values: np.ndarray, rank: int, dim: int) -> np.ndarray:
    """A per-class vector shaped to broadcast along `dim` of a rank-`rank` array."""
    shape = [1] * rank
    shape[dim] = values.size
    return values.astype(np.float64).reshape(shape)


def xent_with_options(
    labels: np.ndarray,
    logits: np.ndarray,
    *,
    sparse: bool,
    dim: int = -1,
    class_weights: np.ndarray | None = None,
    sample_weights: np.ndarray | None = None,
    reduction: str = "none",
    label_smoothing: float = 0.0,
    ignore_index: int | None = None,
    grad_loss: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The issue's formulas, term by term, in float64 (README "Evaluation options").

    Soft labels y (or a one-hot of integer labels) are smoothed, y' = y (1 - eps) + eps/C,
    weighed by class, w; each example's loss is -sum_c w_c y'_c log p_c, times its sample
    weight s_n (and 0 where ignored); `mean` divides the sum by the total weight: s_n
    (soft) or s_n w_{y_n} over kept positions (integer labels). Gradients are those of the
    (reduced) loss: TensorFlow's p - y without class weights or smoothing, else the exact
    p sum_c(w_c y'_c) - w y'.
    """
    x = logits.astype(np.float64)
    rank = x.ndim
    dim %= rank
    classes = x.shape[dim]
    kept = None
    if sparse:
        index = labels.astype(np.int64)
        if ignore_index is not None:
            kept = index != ignore_index
            index = np.where(kept, index, 0)
        y = np.moveaxis(np.eye(classes)[index], -1, dim)
    else:
        y, x = np.broadcast_arrays(labels.astype(np.float64), x)
    log_p = log_softmax(x, dim)
    p = np.exp(log_p)
    w = np.ones((1,) * rank) if class_weights is None else _class_axis(class_weights, rank, dim)
    smoothed = y * (1 - label_smoothing) + label_smoothing / classes
    per_example = -(w * smoothed * log_p).sum(axis=dim)
    exact = class_weights is not None or label_smoothing != 0.0 or sparse
    if exact:
        grad_x = p * (w * smoothed).sum(axis=dim, keepdims=True) - w * smoothed
    else:
        grad_x = p - y
    grad_y = -(1 - label_smoothing) * w * log_p
    loss_shape = per_example.shape
    s = np.ones(loss_shape)
    if sample_weights is not None:
        s = np.broadcast_to(sample_weights.astype(np.float64), loss_shape)
    if kept is not None:
        s = np.where(kept, s, 0.0)
        per_example = np.where(kept, per_example, 0.0)
    if sparse:
        label_w = (w * y).sum(axis=dim)  # w at each label
        weight = s * label_w
    else:
        weight = s
    total = float(weight.sum())
    if reduction == "none":
        loss = per_example * s
        g = np.ones(loss_shape) if grad_loss is None else grad_loss.astype(np.float64)
        factor = g * s
    else:
        g = 1.0 if grad_loss is None else float(grad_loss)
        summed = (per_example * s).sum()
        if reduction == "sum":
            loss, factor = np.asarray(summed), g * s
        else:
            loss = np.asarray(summed / total if total else np.nan)
            factor = g * s / total if total else np.zeros(loss_shape)
    factor = np.expand_dims(factor, dim)
    out = {
        "loss": loss,
        "grad_logits": unbroadcast(factor * grad_x, logits.shape),
        "weight_sum": np.asarray(total),
    }
    if not sparse:
        out["grad_labels"] = unbroadcast(factor * grad_y, labels.shape)
    return out
