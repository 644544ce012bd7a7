"""Every broadcast computed in blocks (made tiny here, so that small arrays take many), and
`Engine.plan`: the same errors as the call, and the bytes the call returns."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from service.engine import engine as engine_module
from service.engine.engine import Engine, _pieces
from service.engine.types import SOFT_OP, SPARSE_OP, DType
from service.errors import (
    InvalidArgument,
    InvalidDim,
    ServiceError,
    ShapeMismatch,
    TooLarge,
    UnsupportedDtype,
)
from tests.reference import NUMPY, assert_close, softmax_xent, sparse_softmax_xent

ALL = ["loss", "grad_logits", "grad_labels"]
DTYPES = list(NUMPY)

# (labels shape, logits shape, dim): every way an input can cover the broadcast shape.
BROADCASTS = [
    ((1, 7), (5, 7), -1),  # TensorFlow's case: the labels' rows broadcast, passed whole
    ((5, 7), (1, 7), -1),  # the logits' rows broadcast: grad_logits summed by block
    ((7,), (4, 3, 7), -1),  # fewer leading dims
    ((3, 1), (3, 4), -1),  # labels broadcast along the class dimension
    ((2, 1, 4, 5), (2, 3, 4, 5), 2),  # labels' outer group partly broadcast
    ((2, 1, 3), (1, 4, 3), -1),  # both outer groups partly broadcast
    ((1, 3, 1), (4, 3, 5), 1),  # planes, both groups of the labels broadcast
    ((4, 3, 1), (1, 3, 5), 0),  # logits broadcast along the class dimension; inner mixed
    ((4, 3, 5), (4, 1, 5), 1),  # logits broadcast along the class dimension
    ((2, 3, 1, 5), (2, 3, 4, 1), 0),  # both inner groups partly broadcast
    ((1, 3, 4, 1), (2, 1, 1, 5), 1),  # everything at once
    ((16384 // 2048, 1), (1, 16384 // 2048), -1),  # the hardening issue's request, smaller
    ((6,), (6,), 0),  # rank 1, no broadcast
    ((3, 4, 5), (3, 4, 5), 1),  # no broadcast, planes: cut along inner
]


@pytest.fixture(params=[1, 48, 1000], ids=["block=1B", "block=48B", "block=1000B"])
def block_bytes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Blocks of one class column (1 byte), of a few rows or columns, of many rows."""
    size: int = request.param
    monkeypatch.setattr(engine_module, "BLOCK_BYTES", size)
    return size


def _inputs(
    rng: np.random.Generator,
    labels_shape: tuple[int, ...],
    logits_shape: tuple[int, ...],
    dtype: str,
) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.random(labels_shape).astype(NUMPY[dtype])
    logits = (rng.standard_normal(logits_shape) * 3).astype(NUMPY[dtype])
    return labels, logits


def _loss_shape(labels: tuple[int, ...], logits: tuple[int, ...], dim: int) -> tuple[int, ...]:
    full = np.broadcast_shapes(labels, logits)
    dim %= len(full)
    return full[:dim] + full[dim + 1 :]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_grad_loss", [False, True], ids=["ones", "grad_loss"])
@pytest.mark.parametrize(("labels_shape", "logits_shape", "dim"), BROADCASTS)
def test_broadcasts_in_blocks_match_reference(
    engine: Engine,
    rng: np.random.Generator,
    block_bytes: int,
    dtype: str,
    with_grad_loss: bool,
    labels_shape: tuple[int, ...],
    logits_shape: tuple[int, ...],
    dim: int,
) -> None:
    labels, logits = _inputs(rng, labels_shape, logits_shape, dtype)
    grad_loss = None
    if with_grad_loss:
        shape = _loss_shape(labels_shape, logits_shape, dim)
        grad_loss = rng.standard_normal(shape).astype(NUMPY[dtype])
    result = engine.softmax_cross_entropy(
        labels=labels, logits=logits, dim=dim, grad_loss=grad_loss, outputs=ALL
    )
    expected = softmax_xent(labels, logits, dim, grad_loss)
    assert [name for name, _ in result.items()] == ALL
    for name, array in result.items():
        assert array.dtype == NUMPY[dtype], name
        assert_close(array, expected[name], dtype, name)


@pytest.mark.parametrize(
    "outputs", [["loss"], ["grad_logits"], ["grad_labels"], ["loss", "grad_labels"]]
)
@pytest.mark.parametrize(("labels_shape", "logits_shape", "dim"), BROADCASTS[4:11])
def test_each_output_alone_in_blocks(
    engine: Engine,
    rng: np.random.Generator,
    block_bytes: int,
    outputs: list[str],
    labels_shape: tuple[int, ...],
    logits_shape: tuple[int, ...],
    dim: int,
) -> None:
    """Half types: a summed gradient switches the whole call to float32 and back."""
    labels, logits = _inputs(rng, labels_shape, logits_shape, "float16")
    result = engine.softmax_cross_entropy(labels=labels, logits=logits, dim=dim, outputs=outputs)
    expected = softmax_xent(labels, logits, dim)
    assert {name for name, _ in result.items()} == set(outputs)
    for name, array in result.items():
        assert_close(array, expected[name], "float16", name)


@pytest.mark.parametrize("rank", [1, 2, 3, 4])
def test_random_broadcasts_in_blocks(
    engine: Engine, rng: np.random.Generator, block_bytes: int, rank: int
) -> None:
    for _ in range(40):
        shape = tuple(int(s) for s in rng.integers(1, 5, size=rank))

        def squeeze(full: tuple[int, ...]) -> tuple[int, ...]:
            kept = tuple(1 if rng.random() < 0.4 else d for d in full)
            return kept[int(rng.integers(0, len(kept))) :]

        labels_shape = squeeze(shape) if rng.random() < 0.6 else shape
        logits_shape = squeeze(shape) if rng.random() < 0.6 else shape
        full = np.broadcast_shapes(labels_shape, logits_shape)
        dim = int(rng.integers(-len(full), len(full)))
        dtype = str(rng.choice(DTYPES))
        labels, logits = _inputs(rng, labels_shape, logits_shape, dtype)
        grad_loss = None
        if rng.random() < 0.5:
            shape_of_loss = _loss_shape(labels_shape, logits_shape, dim)
            grad_loss = rng.standard_normal(shape_of_loss).astype(NUMPY[dtype])
        result = engine.softmax_cross_entropy(
            labels=labels, logits=logits, dim=dim, grad_loss=grad_loss, outputs=ALL
        )
        expected = softmax_xent(labels, logits, dim, grad_loss)
        for name, array in result.items():
            case = f"{name} labels {labels_shape} logits {logits_shape} dim {dim}"
            assert_close(array, expected[name], dtype, case)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sparse_in_blocks(
    engine: Engine, rng: np.random.Generator, block_bytes: int, dtype: str
) -> None:
    logits = (rng.standard_normal((3, 5, 4)) * 3).astype(NUMPY[dtype])
    labels = rng.integers(0, 4, size=(3, 5)).astype(np.int32)
    grad_loss = rng.standard_normal((3, 5)).astype(NUMPY[dtype])
    result = engine.sparse_softmax_cross_entropy(
        labels=labels, logits=logits, grad_loss=grad_loss, outputs=["loss", "grad_logits"]
    )
    expected = sparse_softmax_xent(labels, logits, grad_loss)
    for name, array in result.items():
        assert_close(array, expected[name], dtype, name)


def test_pieces_tile_the_range_in_boxes(rng: np.random.Generator) -> None:
    """Each piece is a box of the broadcast shape, the pieces cover the range in order, and
    an input's own elements indexed by a piece are what broadcasting puts there."""
    for _ in range(300):
        full = tuple(int(s) for s in rng.integers(1, 5, size=int(rng.integers(1, 5))))
        own = tuple(1 if rng.random() < 0.5 else d for d in full)
        total = math.prod(full)
        start = int(rng.integers(0, total))
        stop = int(rng.integers(start + 1, total + 1))
        source = np.arange(math.prod(own)).reshape(own)
        expected = np.broadcast_to(source, full).reshape(-1)[start:stop]
        pieces = _pieces(own, full, start, stop)
        assert len(pieces) <= 2 * len(full)
        position = 0
        for piece in pieces:
            assert piece.offset == position and piece.count == math.prod(piece.box)
            got = np.broadcast_to(source[piece.own], piece.box).reshape(-1)
            np.testing.assert_array_equal(got, expected[position : position + piece.count])
            summed = np.broadcast_to(source[piece.own], piece.box).sum(
                axis=piece.reduce, keepdims=True
            )
            assert summed.shape == source[piece.own].shape
            position += piece.count
        assert position == stop - start


# --- plan -----------------------------------------------------------------------------

F32, F64, I32 = DType.float32, DType.float64, DType.int32

# (labels, logits, grad_loss, outputs, dim) as (shape, DType): each is refused.
INVALID_SOFT = [
    (((2, 3), F64), ((2, 2), F64), None, ["loss"], -1),  # shapes do not broadcast
    (((3,), F32), ((3,), F64), None, ["loss"], -1),  # dtypes differ
    (((3,), I32), ((3,), I32), None, ["loss"], -1),  # not a float dtype
    (((), F64), ((), F64), None, ["loss"], -1),  # scalars
    (((2, 3), F64), ((2, 3), F64), None, ["loss"], 2),  # dim out of range
    (((2, 3), F64), ((2, 3), F64), None, ["loss"], -3),
    (((2, 0), F64), ((2, 0), F64), None, ["loss"], -1),  # no class
    (((2, 3), F64), ((2, 3), F64), ((3,), F64), ["grad_logits"], -1),  # grad_loss shape
    (((2, 3), F64), ((2, 3), F64), ((2,), F32), ["grad_logits"], -1),  # grad_loss dtype
    (((2, 3), F64), ((2, 3), F64), ((2,), F64), ["loss"], -1),  # grad_loss with no gradient
    (((3,), F64), ((3,), F64), None, ["nope"], -1),  # unknown output
    (((3,), F64), ((3,), F64), None, [], -1),  # no output
    (((200, 1), F64), ((1, 200), F64), None, ["loss"], -1),  # past max_elements broadcast
    (((1,) * 33, F64), ((1,) * 33, F64), None, ["loss"], -1),  # past the rank limit
]
INVALID_SPARSE = [
    (((2,), I32), ((2, 3), F32), None, ["grad_labels"], -1),  # no grad_labels for sparse
    (((2,), DType.float32), ((2, 3), F32), None, ["loss"], -1),  # float labels
    (((3,), I32), ((2, 3), F32), None, ["loss"], -1),  # labels shape
    (((), I32), ((), F32), None, ["loss"], -1),  # scalar logits
    (((2,), I32), ((2, 0), F32), None, ["loss"], -1),  # no class
    (((2,), I32), ((2, 3), F32), ((2,), F32), ["loss"], -1),  # grad_loss unused
    (((2,), I32), ((2, 3), F32), ((3,), F32), ["grad_logits"], -1),  # grad_loss shape
    (((200,), I32), ((200, 200), F32), None, ["loss"], -1),  # past max_elements
    (((2,), I32), ((2, 3), F32), None, ["loss"], 0),  # labels without dim 0 are [3]
    (((2,), I32), ((2, 3), F32), None, ["loss"], 2),  # dim out of range
]


Spec = tuple[tuple[int, ...], DType]


def _array(spec: Spec) -> np.ndarray:
    return np.zeros(spec[0], spec[1].numpy)


def _maybe(spec: Spec | None) -> np.ndarray | None:
    return None if spec is None else _array(spec)


def _raised(call: Callable[[], object]) -> ServiceError:
    with pytest.raises(ServiceError) as caught:
        call()
    return caught.value


@pytest.fixture(scope="module")
def limited() -> Engine:
    return Engine(max_elements=10_000)


@pytest.mark.parametrize(
    ("op", "labels", "logits", "grad_loss", "outputs", "dim"),
    [(SOFT_OP, *case) for case in INVALID_SOFT] + [(SPARSE_OP, *case) for case in INVALID_SPARSE],
)
def test_plan_refuses_what_the_call_refuses(
    limited: Engine,
    op: str,
    labels: Spec,
    logits: Spec,
    grad_loss: Spec | None,
    outputs: list[str],
    dim: int,
) -> None:
    planned = _raised(
        lambda: limited.plan(
            op, labels=labels, logits=logits, grad_loss=grad_loss, outputs=outputs, dim=dim
        )
    )
    call = limited.softmax_cross_entropy if op == SOFT_OP else limited.sparse_softmax_cross_entropy
    called = _raised(
        lambda: call(
            labels=_array(labels),
            logits=_array(logits),
            grad_loss=_maybe(grad_loss),
            outputs=outputs,
            dim=dim,
        )
    )
    assert type(planned) is type(called)
    assert str(planned) == str(called)


def test_plan_error_types_are_the_documented_ones(limited: Engine) -> None:
    expected = [ShapeMismatch, UnsupportedDtype, UnsupportedDtype, ShapeMismatch, InvalidDim]
    expected += [InvalidDim, InvalidArgument, ShapeMismatch, UnsupportedDtype, InvalidArgument]
    expected += [InvalidArgument, InvalidArgument, TooLarge, TooLarge]
    for case, error in zip(INVALID_SOFT, expected, strict=True):
        labels, logits, grad_loss, outputs, dim = case
        with pytest.raises(error):
            limited.plan(
                SOFT_OP, labels=labels, logits=logits, grad_loss=grad_loss, outputs=outputs, dim=dim
            )


def test_sparse_plan_takes_the_class_dim_out_of_the_labels_shape(engine: Engine) -> None:
    def plan(op: str, labels: tuple[int, ...], dim: int) -> object:
        return engine.plan(
            op,
            labels=(labels, I32),
            logits=((4, 3), F32),
            grad_loss=None,
            outputs=["loss"],
            dim=dim,
        )

    for labels, dim in (((4,), -1), ((4,), 1), ((3,), 0), ((3,), -2)):
        plan(SPARSE_OP, labels, dim)
    for labels, dim in (((3,), -1), ((4,), 0)):
        with pytest.raises(ShapeMismatch, match="without its class dimension"):
            plan(SPARSE_OP, labels, dim)
    for dim in (2, -3):
        with pytest.raises(InvalidDim):
            plan(SPARSE_OP, (4,), dim)
    with pytest.raises(ValueError, match="unknown op"):
        plan("softmax", (4,), -1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("labels_shape", "logits_shape", "dim"), BROADCASTS)
def test_plan_counts_what_the_call_returns(
    engine: Engine,
    rng: np.random.Generator,
    dtype: str,
    labels_shape: tuple[int, ...],
    logits_shape: tuple[int, ...],
    dim: int,
) -> None:
    labels, logits = _inputs(rng, labels_shape, logits_shape, dtype)
    for outputs in (["loss"], ["grad_labels"], ALL):
        plan = engine.plan(
            SOFT_OP,
            labels=(labels.shape, DType[dtype]),
            logits=(logits.shape, DType[dtype]),
            grad_loss=None,
            outputs=outputs,
            dim=dim,
        )
        result = engine.softmax_cross_entropy(
            labels=labels, logits=logits, dim=dim, outputs=outputs
        )
        assert plan.output_bytes == sum(array.nbytes for _, array in result.items())
        assert plan.elements == math.prod(np.broadcast_shapes(labels_shape, logits_shape))
        assert plan.work_bytes > 0


def test_sparse_plan_counts_what_the_call_returns(engine: Engine) -> None:
    plan = engine.plan(
        SPARSE_OP,
        labels=((6, 2), DType.int64),
        logits=((6, 2, 5), DType.bfloat16),
        grad_loss=((6, 2), DType.bfloat16),
        outputs=["grad_logits", "loss"],
    )
    assert plan.elements == 60
    assert plan.output_bytes == (12 + 60) * 2
    assert plan.work_bytes > 0


def test_empty_work_plans_no_work(engine: Engine) -> None:
    plan = engine.plan(
        SOFT_OP, labels=((0, 4), F32), logits=((0, 4), F32), grad_loss=None, outputs=ALL
    )
    assert plan == engine_module.Plan(elements=0, output_bytes=0, work_bytes=0)


def test_the_hardening_issue_request_plans_blocks_not_its_broadcast(engine: Engine) -> None:
    """[16384, 1] x [1, 16384] float64 with every output: 2 GiB per full-size buffer, which
    the engine no longer makes; what it holds is a few blocks."""
    plan = engine.plan(
        SOFT_OP,
        labels=((16384, 1), F64),
        logits=((1, 16384), F64),
        grad_loss=None,
        outputs=ALL,
    )
    assert plan.elements == 16384 * 16384
    assert plan.output_bytes == 3 * 16384 * 8
    assert plan.work_bytes <= 256 << 20
