"""TensorFlow's own published cases for this op, transcribed with their expected numbers.

Source: tensorflow/python/kernel_tests/nn_ops/xent_op_test_base.py (XentOpTestBase).
"""

from __future__ import annotations

import numpy as np
import pytest

from service.engine.engine import Engine
from service.errors import ShapeMismatch
from tests.reference import NUMPY, assert_close, softmax_xent

ALL = ["loss", "grad_logits", "grad_labels"]
HALF_RTOL = {"float16": 1e-2, "bfloat16": 2e-2, "float32": 1e-3, "float64": 1e-3}


@pytest.mark.parametrize("dtype", list(NUMPY))
def test_np_xent_values(engine: Engine, dtype: str) -> None:
    """testNpXent / testHalf / testBfloat16 / testFloat / testDouble."""
    logits = np.array([[1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0]], NUMPY[dtype])
    labels = np.array([[0.0, 0.0, 0.0, 1.0], [0.0, 0.5, 0.5, 0.0]], NUMPY[dtype])
    result = engine.softmax_cross_entropy(labels=labels, logits=logits, outputs=ALL)
    tol = HALF_RTOL[dtype]
    np.testing.assert_allclose(result.loss.astype(np.float64), [1.3862, 1.9401], rtol=tol, atol=tol)
    np.testing.assert_allclose(
        result.grad_logits.astype(np.float64),
        [[0.25, 0.25, 0.25, -0.75], [0.0321, -0.4129, -0.2632, 0.6439]],
        rtol=tol,
        atol=tol,
    )


@pytest.mark.parametrize("dtype", ["float16", "float32", "bfloat16"])
def test_single_class(engine: Engine, dtype: str) -> None:
    """testSingleClass: labels outside [0, 1] give TensorFlow's exact softmax - labels."""
    result = engine.softmax_cross_entropy(
        labels=np.array([[-1.0], [0.0], [1.0], [1.0]], NUMPY[dtype]),
        logits=np.array([[1.0], [-1.0], [0.0], [1.0]], NUMPY[dtype]),
        outputs=ALL,
    )
    np.testing.assert_allclose(result.loss.astype(np.float64), [0.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(result.grad_logits.astype(np.float64), [[2.0], [1.0], [0.0], [0.0]])


def test_labels_broadcast(engine: Engine) -> None:
    """testLabelsBroadcast (float16), including labels broadcast along the class dimension."""
    f16 = np.float16
    cases = [
        (np.array([[0.0, 0.0, 0.0, 1.0]], f16), np.array([[1, 1, 1, 1], [1, 2, 3, 4]], f16)),
        (np.array([[1.0]], f16), np.array([[1.0], [2.0]], f16)),
    ]
    for labels, logits in cases:
        result = engine.softmax_cross_entropy(labels=labels, logits=logits, outputs=ALL)
        expected = softmax_xent(labels, logits)
        np.testing.assert_allclose(result.loss.astype(np.float64), expected["loss"], rtol=1e-2)
        assert_close(result.grad_logits, expected["grad_logits"], "float16")
    labels = np.array([[0.0], [2.0], [0.25]], f16)
    logits = np.array([[1, 1, 1, 1], [1, 2, 3, 4], [1, 2, 3, 4]], f16)
    result = engine.softmax_cross_entropy(labels=labels, logits=logits, outputs=["grad_logits"])
    np.testing.assert_allclose(
        result.grad_logits.astype(np.float64),
        [
            [0.25, 0.25, 0.25, 0.25],
            [-1.968, -1.913, -1.763, -1.355],
            [-0.218, -0.163, -0.013, 0.394],
        ],
        rtol=1e-3,
        atol=1e-3,
    )


def test_shape_mismatch(engine: Engine) -> None:
    """testShapeMismatch."""
    with pytest.raises(ShapeMismatch):
        engine.softmax_cross_entropy(
            labels=np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]),
            logits=np.array([[0.0, 1.0], [2.0, 3.0]]),
        )


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_3d(engine: Engine, dim: int) -> None:
    """test3D: every dim of a rank-3 input."""
    labels = np.array(
        [
            [[0.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0]],
            [[0.0, 0.5, 0.5, 0.0], [0.5, 0.5, 0.0, 0.0]],
            [[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]],
        ],
        np.float32,
    )
    logits = np.array(
        [
            [[1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0]],
            [[2.0, 3.0, 4.0, 5.0], [6.0, 7.0, 8.0, 9.0]],
            [[5.0, 4.0, 3.0, 2.0], [1.0, 2.0, 3.0, 4.0]],
        ],
        np.float32,
    )
    result = engine.softmax_cross_entropy(labels=labels, logits=logits, dim=dim)
    assert_close(result.loss, softmax_xent(labels, logits, dim)["loss"], "float32")


def test_zero_dimension(engine: Engine) -> None:
    """testZeroDimension."""
    empty = np.zeros([0, 2, 4], np.float32)
    result = engine.softmax_cross_entropy(labels=empty, logits=empty)
    assert result.loss is not None and result.loss.shape == (0, 2)


def _gradient_error(engine: Engine, wrt: str) -> float:
    """TensorFlow's compute_gradient_error: max |analytic - numeric| Jacobian entry."""
    labels = np.array([0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.5, 0.0, 0.5]).reshape(3, 4)
    logits = np.array([0.1, 0.2, 0.3, 0.4, 0.1, 0.4, 0.9, 1.6, 0.1, 0.8, 2.7, 6.4]).reshape(3, 4)
    point = {"labels": labels, "logits": logits}
    name = f"grad_{wrt}"
    error, delta = 0.0, 1e-3
    for row in range(3):  # Jacobian row by row: one-hot upstream gradients
        upstream = np.eye(3)[row]
        analytic = getattr(
            engine.softmax_cross_entropy(**point, grad_loss=upstream, outputs=[name]), name
        )
        for index in np.ndindex(3, 4):
            shifted = {k: v.copy() for k, v in point.items()}
            shifted[wrt][index] += delta
            up = engine.softmax_cross_entropy(**shifted).loss[row]
            shifted[wrt][index] -= 2 * delta
            down = engine.softmax_cross_entropy(**shifted).loss[row]
            error = max(error, abs(analytic[index] - (up - down) / (2 * delta)))
    return error


@pytest.mark.parametrize("wrt", ["logits", "labels"])
def test_gradient_error(engine: Engine, wrt: str) -> None:
    """testGradient / testGradientLabelWithV2: gradient error < 5e-8 in float64."""
    assert _gradient_error(engine, wrt) < 5e-8
