"""The engine against the float64 numpy reference, on fresh random inputs."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from service.engine import graphs
from service.engine.engine import Engine
from service.engine.types import DType
from service.errors import (
    InvalidArgument,
    InvalidDim,
    LabelOutOfRange,
    ShapeMismatch,
    UnsupportedDtype,
)
from tests.reference import (
    NUMPY,
    assert_close,
    random_distribution,
    softmax_xent,
    sparse_softmax_xent,
)

ALL = ["loss", "grad_logits", "grad_labels"]
DTYPES = list(NUMPY)
RANK_DIMS = [(rank, dim) for rank in range(1, 5) for dim in range(-rank, rank)]


def _draw(rng: np.random.Generator, shape: tuple[int, ...], dim: int, dtype: str):
    labels = random_distribution(rng, shape, dim).astype(NUMPY[dtype])
    logits = (rng.standard_normal(shape) * 3).astype(NUMPY[dtype])
    return labels, logits


def _check(result, expected, dtype: str) -> None:
    for name, array in result.items():
        assert array.dtype == NUMPY[dtype], name
        assert_close(array, expected[name], dtype, name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("rank", "dim"), RANK_DIMS)
def test_loss_and_gradients_match_reference(
    engine: Engine, rng: np.random.Generator, dtype: str, rank: int, dim: int
) -> None:
    shape = tuple(int(s) for s in rng.integers(1, 6, size=rank))
    labels, logits = _draw(rng, shape, dim, dtype)
    grad_loss = None
    if rng.random() < 0.5:
        loss_shape = shape[: dim % rank] + shape[dim % rank + 1 :]
        grad_loss = rng.standard_normal(loss_shape).astype(NUMPY[dtype])
    result = engine.softmax_cross_entropy(
        labels=labels, logits=logits, dim=dim, grad_loss=grad_loss, outputs=ALL
    )
    assert [name for name, _ in result.items()] == ALL
    _check(result, softmax_xent(labels, logits, dim, grad_loss), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("labels_shape", "logits_shape", "dim"),
    [
        ((1, 7), (5, 7), -1),  # TensorFlow's own case: one row of labels for the batch
        ((5, 7), (1, 7), -1),  # broadcast logits: grad_logits is summed back
        ((7,), (4, 3, 7), -1),  # fewer leading dims
        ((3, 1), (3, 4), -1),  # labels broadcast along the class dimension
        ((2, 1, 4, 5), (2, 3, 4, 5), 2),  # a partly broadcast outer group is materialised
        ((1, 3, 1), (4, 3, 5), 1),  # planes layout with both groups broadcast
        ((4, 3, 1), (1, 3, 5), 0),  # logits broadcast along the class dimension
        ((4, 3, 5), (4, 1, 5), 1),
    ],
)
def test_broadcast_inputs_get_gradients_in_their_own_shape(
    engine: Engine,
    rng: np.random.Generator,
    dtype: str,
    labels_shape: tuple[int, ...],
    logits_shape: tuple[int, ...],
    dim: int,
) -> None:
    labels = rng.random(labels_shape).astype(NUMPY[dtype])
    logits = (rng.standard_normal(logits_shape) * 3).astype(NUMPY[dtype])
    result = engine.softmax_cross_entropy(labels=labels, logits=logits, dim=dim, outputs=ALL)
    assert result.grad_labels is not None and result.grad_labels.shape == labels_shape
    assert result.grad_logits is not None and result.grad_logits.shape == logits_shape
    _check(result, softmax_xent(labels, logits, dim), dtype)


@pytest.mark.parametrize("outputs", [["loss"], ["grad_logits"], ["grad_labels", "loss"]])
def test_only_requested_outputs_are_returned(
    engine: Engine, rng: np.random.Generator, outputs: list[str]
) -> None:
    labels, logits = _draw(rng, (3, 5), -1, "float32")
    result = engine.softmax_cross_entropy(labels=labels, logits=logits, outputs=outputs)
    assert {name for name, _ in result.items()} == set(outputs)


def test_gradients_match_central_differences_in_float64(
    engine: Engine, rng: np.random.Generator
) -> None:
    shape, dim, eps = (3, 4, 2), 1, 1e-6
    labels, logits = _draw(rng, shape, dim, "float64")
    grad_loss = rng.standard_normal((3, 2))

    def objective(y: np.ndarray, x: np.ndarray) -> float:
        loss = engine.softmax_cross_entropy(labels=y, logits=x, dim=dim).loss
        assert loss is not None
        return float((grad_loss * loss).sum())

    result = engine.softmax_cross_entropy(
        labels=labels, logits=logits, dim=dim, grad_loss=grad_loss, outputs=ALL
    )
    for name, point in (("grad_logits", logits), ("grad_labels", labels)):
        numeric = np.zeros(shape)
        for index in np.ndindex(shape):
            step = np.zeros(shape)
            step[index] = eps
            args = {"grad_logits": (labels, point + step), "grad_labels": (point + step, logits)}
            plus = objective(*args[name])
            args = {"grad_logits": (labels, point - step), "grad_labels": (point - step, logits)}
            numeric[index] = (plus - objective(*args[name])) / (2 * eps)
        np.testing.assert_allclose(getattr(result, name), numeric, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("label_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_sparse_matches_reference(
    engine: Engine, rng: np.random.Generator, dtype: str, label_dtype: type, rank: int
) -> None:
    shape = tuple(int(s) for s in rng.integers(1, 6, size=rank))
    logits = (rng.standard_normal(shape) * 3).astype(NUMPY[dtype])
    labels = rng.integers(0, shape[-1], size=shape[:-1]).astype(label_dtype)
    grad_loss = rng.standard_normal(shape[:-1]).astype(NUMPY[dtype])
    result = engine.sparse_softmax_cross_entropy(
        labels=labels, logits=logits, grad_loss=grad_loss, outputs=["loss", "grad_logits"]
    )
    _check(result, sparse_softmax_xent(labels, logits, grad_loss), dtype)


def test_empty_batch_gives_empty_result(engine: Engine) -> None:
    empty = np.zeros((0, 2, 4), np.float32)
    result = engine.softmax_cross_entropy(labels=empty, logits=empty, outputs=ALL)
    assert result.loss is not None and result.loss.shape == (0, 2)
    assert result.grad_logits is not None and result.grad_logits.shape == (0, 2, 4)


def test_non_finite_logits_propagate_as_in_tensorflow(engine: Engine) -> None:
    logits = np.array([[-np.inf, 0.0], [np.nan, 1.0], [1.0, 2.0]], np.float32)
    labels = np.array([[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]], np.float32)
    loss = engine.softmax_cross_entropy(labels=labels, logits=logits).loss
    assert loss is not None
    assert np.isnan(loss[0]) and np.isnan(loss[1]) and np.isfinite(loss[2])


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"labels": np.zeros((2, 3)), "logits": np.zeros((2, 2))}, ShapeMismatch, "[2, 3]"),
        ({"labels": np.zeros(3, np.float32), "logits": np.zeros(3)}, UnsupportedDtype, "share"),
        (
            {"labels": np.zeros(3, np.int32), "logits": np.zeros(3, np.int32)},
            UnsupportedDtype,
            "supported",
        ),
        ({"labels": np.zeros(()), "logits": np.zeros(())}, ShapeMismatch, "rank >= 1"),
        ({"labels": np.zeros((2, 3)), "logits": np.zeros((2, 3)), "dim": 2}, InvalidDim, "-2..1"),
        ({"labels": np.zeros((2, 3)), "logits": np.zeros((2, 3)), "dim": -3}, InvalidDim, "rank"),
        ({"labels": np.zeros((2, 0)), "logits": np.zeros((2, 0))}, InvalidArgument, "one class"),
        (
            {
                "labels": np.zeros((2, 3)),
                "logits": np.zeros((2, 3)),
                "grad_loss": np.ones(3),
                "outputs": ["grad_logits"],
            },
            ShapeMismatch,
            "grad_loss",
        ),
        (
            {"labels": np.zeros(3), "logits": np.zeros(3), "outputs": ["nope"]},
            InvalidArgument,
            "outputs must be",
        ),
    ],
)
def test_engine_rejects_invalid_arguments(
    engine: Engine, kwargs: dict, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message.replace("[", r"\[").replace(".", r"\.")):
        engine.softmax_cross_entropy(**kwargs)


@pytest.mark.parametrize("bad", [-1, 3])
def test_sparse_rejects_labels_out_of_range(engine: Engine, bad: int) -> None:
    with pytest.raises(LabelOutOfRange, match=r"\[0, 3\)"):
        engine.sparse_softmax_cross_entropy(
            labels=np.array([0, bad]), logits=np.zeros((2, 3), np.float32)
        )


def test_sparse_rejects_label_shape_mismatch(engine: Engine) -> None:
    with pytest.raises(ShapeMismatch, match=r"\[2\]"):
        engine.sparse_softmax_cross_entropy(
            labels=np.array([0, 1, 2]), logits=np.zeros((2, 3), np.float32)
        )


def test_graphs_carry_the_oldest_ir_version_of_their_opset() -> None:
    """onnx writes its newest IR version by default (14 in onnx 1.23), which an older ONNX
    Runtime refuses (onnxruntime-gpu 1.31 reads up to 13): the graphs name the oldest IR
    that carries their opset, so any runtime with the opset loads them."""
    oldest = helper.find_min_ir_version_for([helper.make_opsetid("", graphs.OPSET)])
    models = [
        graphs.soft_graph(DType.float32, 2, ["loss", "grad_logits"]),
        graphs.soft_graph(DType.bfloat16, 3, ["grad_labels"], weighted=True, chunked=True),
        graphs.sparse_graph(DType.float16, DType.int64, ["loss"], rank=2),
    ]
    assert oldest == 8
    assert {m.ir_version for m in models} == {oldest}
