"""Evaluation options in the engine against the float64 reference of the issue's formulas
(tests/reference.py `xent_with_options`): every dtype, ranks 1-4, every dim, broadcasting,
blocks, and every combination of reduction, weights, smoothing and ignore_index."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from service.engine import engine as engine_module
from service.engine.engine import Engine
from service.engine.types import DEFAULT_OPTIONS, SOFT_OP, SPARSE_OP, DType, Options
from service.errors import InvalidArgument, LabelOutOfRange, ShapeMismatch, UnsupportedDtype
from tests.reference import NUMPY, assert_close, random_distribution, xent_with_options

DTYPES = list(NUMPY)
RANK_DIMS = [(rank, dim) for rank in range(1, 5) for dim in range(-rank, rank)]
REDUCTIONS = ["none", "sum", "mean"]
# (class_weights, sample_weights, label_smoothing): every combination of the three
COMBOS = list(itertools.product([False, True], [False, True], [0.0, 0.1]))
# A mean of float16 outputs is computed from per-example losses rounded to float16.
REDUCED_TOLERANCE = {"float64": "float64", "float32": "float32", "float16": "float16"}


def _outputs(sparse: bool, reduction: str) -> list[str]:
    names = ["loss", "grad_logits"] + ([] if sparse else ["grad_labels"])
    return names + (["weight_sum"] if reduction != "none" else [])


def _compare(result, expected, dtype: str, what: str) -> None:
    for name, array in result.items():
        if name == "weight_sum":
            assert array.dtype == np.float64 and array.shape == ()
            np.testing.assert_allclose(array, expected[name], rtol=1e-12, err_msg=what)
            continue
        assert array.dtype == NUMPY[dtype], (name, array.dtype)
        assert_close(array, expected[name], dtype, f"{what} {name}")


def _weights(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    return (rng.random(shape) * 2).astype(NUMPY[dtype])


def _check(
    engine: Engine,
    sparse: bool,
    labels: np.ndarray,
    logits: np.ndarray,
    *,
    dtype: str = "float64",
    outputs: list[str] | None = None,
    dim: int = -1,
    grad_loss: np.ndarray | None = None,
    class_weights: np.ndarray | None = None,
    sample_weights: np.ndarray | None = None,
    options: Options = DEFAULT_OPTIONS,
) -> None:
    """One engine call against the reference of the same arguments."""
    op = engine.sparse_softmax_cross_entropy if sparse else engine.softmax_cross_entropy
    weights = {"class_weights": class_weights, "sample_weights": sample_weights}
    result = op(
        labels=labels,
        logits=logits,
        dim=dim,
        grad_loss=grad_loss,
        outputs=outputs or _outputs(sparse, options.reduction),
        options=options,
        **weights,
    )
    expected = xent_with_options(
        labels,
        logits,
        sparse=sparse,
        dim=dim,
        reduction=options.reduction,
        label_smoothing=options.label_smoothing,
        ignore_index=options.ignore_index,
        grad_loss=grad_loss,
        **weights,
    )
    given = [k for k, v in weights.items() if v is not None]
    _compare(result, expected, dtype, f"{'sparse' if sparse else 'soft'} {options} {given}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("rank", "dim"), RANK_DIMS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_soft_options_match_reference(
    engine: Engine, rng: np.random.Generator, dtype: str, rank: int, dim: int, reduction: str
) -> None:
    shape = tuple(int(s) for s in rng.integers(1, 5, size=rank))
    labels = random_distribution(rng, shape, dim).astype(NUMPY[dtype])
    logits = (rng.standard_normal(shape) * 3).astype(NUMPY[dtype])
    loss_shape = shape[: dim % rank] + shape[dim % rank + 1 :]
    for use_class, use_sample, eps in COMBOS:
        cw = _weights(rng, (shape[dim],), dtype) if use_class else None
        # sample weights broadcast: a trailing slice of the loss shape
        sw = _weights(rng, loss_shape[len(loss_shape) // 2 :], dtype) if use_sample else None
        grad = rng.standard_normal(() if reduction != "none" else loss_shape)
        grad_loss = grad.astype(NUMPY[dtype]) if rng.random() < 0.5 else None
        _check(
            engine,
            False,
            labels,
            logits,
            dtype=dtype,
            dim=dim,
            grad_loss=grad_loss,
            class_weights=cw,
            sample_weights=sw,
            options=Options(reduction, eps),
        )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("rank", "dim"), RANK_DIMS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_sparse_options_match_reference(
    engine: Engine, rng: np.random.Generator, dtype: str, rank: int, dim: int, reduction: str
) -> None:
    shape = tuple(int(s) for s in rng.integers(1, 5, size=rank))
    classes = shape[dim]
    logits = (rng.standard_normal(shape) * 3).astype(NUMPY[dtype])
    loss_shape = shape[: dim % rank] + shape[dim % rank + 1 :]
    for (use_class, use_sample, eps), ignore in itertools.product(COMBOS, [None, -100]):
        labels = rng.integers(0, classes, loss_shape).astype(rng.choice([np.int32, np.int64]))
        if ignore is not None and labels.size:
            labels.flat[rng.integers(0, labels.size)] = ignore
        cw = _weights(rng, (classes,), dtype) if use_class else None
        sw = _weights(rng, loss_shape, dtype) if use_sample else None
        grad_loss = None
        if rng.random() < 0.5:
            grad_loss = rng.standard_normal(() if reduction != "none" else loss_shape)
            grad_loss = grad_loss.astype(NUMPY[dtype])
        _check(
            engine,
            True,
            labels,
            logits,
            dtype=dtype,
            dim=dim,
            grad_loss=grad_loss,
            class_weights=cw,
            sample_weights=sw,
            options=Options(reduction, eps, ignore),
        )


@pytest.fixture(params=[1, 48], ids=["block=1B", "block=48B"])
def tiny_blocks(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of one class column, or of a few rows or columns: the options' per-example
    inputs are cut with the blocks."""
    monkeypatch.setattr(engine_module, "BLOCK_BYTES", request.param)


@pytest.mark.usefixtures("tiny_blocks")
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(
    ("labels_shape", "logits_shape", "dim"),
    [
        ((1, 7), (5, 7), -1),
        ((5, 7), (1, 7), -1),
        ((3, 1), (3, 4), -1),
        ((2, 1, 4, 5), (2, 3, 4, 5), 2),
        ((1, 3, 1), (4, 3, 5), 1),
        ((4, 3, 5), (4, 3, 5), 1),
    ],
)
def test_options_in_blocks_and_broadcasts(
    engine: Engine,
    rng: np.random.Generator,
    reduction: str,
    labels_shape: tuple[int, ...],
    logits_shape: tuple[int, ...],
    dim: int,
) -> None:
    full = np.broadcast_shapes(labels_shape, logits_shape)
    labels = random_distribution(rng, labels_shape, dim)
    logits = rng.standard_normal(logits_shape) * 3
    loss_shape = full[: dim % len(full)] + full[dim % len(full) + 1 :]
    cw, sw = rng.random(full[dim]), rng.random(loss_shape)
    weights = {"class_weights": cw, "sample_weights": sw}
    _check(engine, False, labels, logits, dim=dim, options=Options(reduction, 0.2), **weights)
    # the sparse op on the logits' shape, class dim `dim`
    if logits_shape == full:
        targets = rng.integers(0, logits_shape[dim], loss_shape)
        targets.flat[0] = -1
        options = Options(reduction, 0.2, -1)
        _check(engine, True, targets, logits, dim=dim, options=options, **weights)


def test_defaults_are_tensorflows_op_exactly(engine: Engine, rng: np.random.Generator) -> None:
    """No options, and options that change nothing, give the same bits as TensorFlow's op:
    its gradient p - y even for labels that do not sum to 1."""
    labels = rng.random((6, 9))  # not normalised
    logits = rng.standard_normal((6, 9))
    plain = engine.softmax_cross_entropy(
        labels=labels, logits=logits, outputs=["loss", "grad_logits"]
    )
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(plain.grad_logits, p - labels, rtol=1e-12)
    same = engine.softmax_cross_entropy(
        labels=labels,
        logits=logits,
        outputs=["loss", "grad_logits"],
        sample_weights=np.ones(6),
        options=Options("none", 0.0),
    )
    for name, array in plain.items():
        np.testing.assert_array_equal(getattr(same, name), array)


def test_mean_of_nothing_is_nan_with_zero_gradients(engine: Engine) -> None:
    logits = np.array([[1.0, 2.0, 3.0], [0.5, 0.1, 0.2]])
    result = engine.sparse_softmax_cross_entropy(
        labels=np.array([-100, -100]),
        logits=logits,
        outputs=["loss", "grad_logits", "weight_sum"],
        options=Options("mean", ignore_index=-100),
    )
    assert math.isnan(float(result.loss)) and result.loss.shape == ()
    assert float(result.weight_sum) == 0.0
    np.testing.assert_array_equal(result.grad_logits, np.zeros_like(logits))
    summed = engine.sparse_softmax_cross_entropy(
        labels=np.array([-100, -100]), logits=logits, options=Options("sum", ignore_index=-100)
    )
    assert float(summed.loss) == 0.0


def test_ignored_positions_are_zero_even_where_the_loss_is_not_finite(engine: Engine) -> None:
    logits = np.array([[np.inf, 0.0], [1.0, 2.0]])
    result = engine.sparse_softmax_cross_entropy(
        labels=np.array([-100, 1]),
        logits=logits,
        outputs=["loss", "grad_logits"],
        options=Options(ignore_index=-100),
    )
    assert result.loss[0] == 0.0 and np.isfinite(result.loss[1])


def test_empty_batches_reduce_to_zero_or_nan(engine: Engine) -> None:
    logits = np.zeros((0, 4), np.float32)
    for op, labels in (
        (engine.softmax_cross_entropy, np.zeros((0, 4), np.float32)),
        (engine.sparse_softmax_cross_entropy, np.zeros(0, np.int64)),
    ):
        total = op(
            labels=labels, logits=logits, outputs=["loss", "weight_sum"], options=Options("sum")
        )
        assert float(total.loss) == 0.0 and float(total.weight_sum) == 0.0
        mean = op(
            labels=labels, logits=logits, outputs=["loss", "grad_logits"], options=Options("mean")
        )
        assert math.isnan(float(mean.loss)) and mean.grad_logits.shape == (0, 4)


def test_weight_sum_alone_runs_no_graph(engine: Engine) -> None:
    result = engine.sparse_softmax_cross_entropy(
        labels=np.array([0, 2, -100, 1]),
        logits=np.zeros((4, 3)),
        outputs=["weight_sum"],
        class_weights=np.array([1.0, 2.0, 3.0]),
        options=Options("mean", ignore_index=-100),
    )
    assert [n for n, _ in result.items()] == ["weight_sum"]
    assert float(result.weight_sum) == 1.0 + 3.0 + 2.0


def test_batches_combine_exactly_through_weight_sum(
    engine: Engine, rng: np.random.Generator
) -> None:
    """With reduction sum, the dataset mean is the batches' losses over their weight sums."""
    logits = rng.standard_normal((40, 11))
    labels = rng.integers(0, 11, 40)
    labels[rng.random(40) < 0.3] = -100
    cw = rng.random(11)
    options = Options("sum", 0.1, -100)
    whole = engine.sparse_softmax_cross_entropy(
        labels=labels,
        logits=logits,
        class_weights=cw,
        options=Options("mean", 0.1, -100),
    )
    losses, weights = 0.0, 0.0
    for start in range(0, 40, 7):
        part = engine.sparse_softmax_cross_entropy(
            labels=labels[start : start + 7],
            logits=logits[start : start + 7],
            outputs=["loss", "weight_sum"],
            class_weights=cw,
            options=options,
        )
        losses += float(part.loss)
        weights += float(part.weight_sum)
    assert losses / weights == pytest.approx(float(whole.loss), rel=1e-12)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_mean_gradients_keep_their_precision_in_half_types(
    engine: Engine, rng: np.random.Generator, dtype: str
) -> None:
    """1 / (sum of weights) is carried to the graphs in float32: in float16 a mean over
    100k examples would lose it (1e-5 is below float16's normal range)."""
    logits = rng.standard_normal((100_000, 2)).astype(NUMPY[dtype])
    labels = rng.integers(0, 2, 100_000)
    result = engine.sparse_softmax_cross_entropy(
        labels=labels, logits=logits, outputs=["grad_logits"], options=Options("mean")
    )
    expected = xent_with_options(labels, logits, sparse=True, reduction="mean")
    assert_close(result.grad_logits, expected["grad_logits"], dtype, "grad_logits")


def test_infinite_logit_makes_the_row_nan_in_every_dtype(engine: Engine) -> None:
    """TensorFlow 2.21: logits [inf, 0], labels [1, 0] give grad_logits [nan, nan] (float64
    in ONNX Runtime gave [nan, 0.0]); the other row is untouched."""
    for dtype in NUMPY.values():
        logits = np.array([[np.inf, 0.0], [1.0, 2.0]], dtype)
        labels = np.array([[1.0, 0.0], [0.0, 1.0]], dtype)
        result = engine.softmax_cross_entropy(
            labels=labels, logits=logits, outputs=["loss", "grad_logits", "grad_labels"]
        )
        for name in ("loss", "grad_logits", "grad_labels"):
            values = getattr(result, name).astype(np.float64)
            assert np.isnan(values[0]).all(), (dtype, name, values)
            assert np.isfinite(values[1]).all(), (dtype, name, values)
        sparse = engine.sparse_softmax_cross_entropy(
            labels=np.array([0, 1]), logits=logits, outputs=["grad_logits"]
        )
        assert np.isnan(sparse.grad_logits[0].astype(np.float64)).all(), dtype
        weighted = engine.softmax_cross_entropy(
            labels=labels,
            logits=logits,
            outputs=["grad_logits"],
            class_weights=np.array([1.0, 2.0], dtype),
        )
        assert np.isnan(weighted.grad_logits[0].astype(np.float64)).all(), dtype


X = np.zeros((4, 3))
Y = np.full((4, 3), 1 / 3)
T = np.array([0, 1, 2, 0])


@pytest.mark.parametrize(
    ("sparse", "kwargs", "error", "match"),
    [
        (False, {"options": Options("avg")}, InvalidArgument, "one of none, sum, mean"),
        (False, {"options": Options(label_smoothing=1.5)}, InvalidArgument, r"\[0, 1\]"),
        (False, {"options": Options(label_smoothing=-0.1)}, InvalidArgument, r"\[0, 1\]"),
        (False, {"options": Options(label_smoothing=math.nan)}, InvalidArgument, r"\[0, 1\]"),
        (False, {"options": Options(label_smoothing=True)}, InvalidArgument, r"\[0, 1\]"),
        (False, {"options": Options(ignore_index=-100)}, InvalidArgument, "sparse op"),
        (True, {"options": Options(ignore_index=1.0)}, InvalidArgument, "integer"),
        (False, {"outputs": ["loss", "weight_sum"]}, InvalidArgument, "reduction sum or mean"),
        (False, {"class_weights": np.ones(4)}, ShapeMismatch, r"shape \[3\]"),
        (True, {"class_weights": np.ones((1, 3))}, ShapeMismatch, r"shape \[3\]"),
        (False, {"class_weights": np.ones(3, np.int64)}, UnsupportedDtype, "class_weights"),
        (False, {"class_weights": np.array([1.0, -1.0, 1.0])}, InvalidArgument, ">= 0"),
        (True, {"class_weights": np.array([1.0, np.nan, 1.0])}, InvalidArgument, "finite"),
        (False, {"sample_weights": np.ones(3)}, ShapeMismatch, r"loss's shape \[4\]"),
        (True, {"sample_weights": np.ones((4, 1))}, ShapeMismatch, "broadcast"),
        (True, {"sample_weights": np.array([1.0, 1.0, np.inf, 1.0])}, InvalidArgument, "finite"),
        (
            False,
            {"options": Options("mean"), "grad_loss": np.ones(4), "outputs": ["grad_logits"]},
            ShapeMismatch,
            r"scalar \(shape \[\]\)",
        ),
        (
            True,
            {"options": Options("none"), "grad_loss": np.ones(()), "outputs": ["grad_logits"]},
            ShapeMismatch,
            r"loss's shape \[4\]",
        ),
    ],
)
def test_bad_options_are_refused_with_what_was_expected(
    engine: Engine, sparse: bool, kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    op = engine.sparse_softmax_cross_entropy if sparse else engine.softmax_cross_entropy
    with pytest.raises(error, match=match):
        op(labels=T if sparse else Y, logits=X, **kwargs)  # type: ignore[arg-type]
    # and the plan refuses the same, where shapes and scalars decide it
    values_only = "class_weights" in kwargs and np.asarray(kwargs["class_weights"]).shape == (3,)
    values_only |= "sample_weights" in kwargs and "finite" in match
    if values_only:
        return

    def spec(a: object) -> object:
        array = np.asarray(a)
        return None if a is None else (array.shape, DType.of(array) or DType.int64)

    extra = {k: spec(kwargs[k]) for k in ("class_weights", "sample_weights") if k in kwargs}
    with pytest.raises(error, match=match):
        engine.plan(
            SPARSE_OP if sparse else SOFT_OP,
            labels=spec(T if sparse else Y),  # type: ignore[arg-type]
            logits=spec(X),  # type: ignore[arg-type]
            grad_loss=spec(kwargs.get("grad_loss")),  # type: ignore[arg-type]
            outputs=kwargs.get("outputs", ["loss"]),  # type: ignore[arg-type]
            options=kwargs.get("options", Options()),  # type: ignore[arg-type]
            **extra,  # type: ignore[arg-type]
        )


def test_out_of_range_labels_suggest_ignore_index(engine: Engine) -> None:
    with pytest.raises(LabelOutOfRange, match="set ignore_index"):
        engine.sparse_softmax_cross_entropy(labels=np.array([0, -100, 1, 2]), logits=X)
    with pytest.raises(LabelOutOfRange, match="found 7"):
        engine.sparse_softmax_cross_entropy(
            labels=np.array([0, -100, 7, 2]), logits=X, options=Options(ignore_index=-100)
        )


def test_option_graphs_are_built_on_first_use_only() -> None:
    engine = Engine()
    built = len(engine._sessions)
    assert built == 80  # TensorFlow's ops: 4 dtypes x (2 layouts x 7 + 2 label dtypes x 3)
    engine.softmax_cross_entropy(labels=Y, logits=X, options=Options(label_smoothing=0.1))
    engine.softmax_cross_entropy(labels=Y, logits=X, options=Options(label_smoothing=0.2))
    assert len(engine._sessions) == built + 1


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize(
    ("shape", "dim", "labels_shape"),
    [
        ((3, 2560), -1, None),  # rows: 2 chunks of 1280 classes
        ((2, 2560, 3), 1, None),  # planes: the chunk axis before the inner one
        ((3, 2560), -1, (3, 1)),  # labels broadcast along the classes
        ((3, 2560), -1, (1, 2560)),
        ((3, 2053), -1, None),  # a prime class count: whole rows
    ],
)
@pytest.mark.parametrize("block", [4 << 20, 1])
def test_chunked_class_sums_match_reference(
    chunked: Engine,
    rng: np.random.Generator,
    monkeypatch: pytest.MonkeyPatch,
    dtype: str,
    shape: tuple[int, ...],
    dim: int,
    labels_shape: tuple[int, ...] | None,
    block: int,
) -> None:
    """More than 2048 classes take the chunked graphs, every output and option, in whole
    blocks or one class column at a time."""
    engine = chunked
    monkeypatch.setattr(engine_module, "BLOCK_BYTES", block)
    classes = shape[dim]
    logits = rng.standard_normal(shape).astype(NUMPY[dtype])
    labels = random_distribution(rng, labels_shape or shape, dim)
    if labels.shape[dim] == 1:  # one label for every class: a distribution still
        labels /= classes
    labels = labels.astype(NUMPY[dtype])
    loss_shape = shape[: dim % len(shape)] + shape[dim % len(shape) + 1 :]
    targets = rng.integers(0, classes, loss_shape)
    targets.flat[0] = -100
    for reduction, (use_class, use_sample, eps) in itertools.product(["none", "mean"], COMBOS):
        cw = _weights(rng, (classes,), dtype) if use_class else None
        sw = _weights(rng, loss_shape, dtype) if use_sample else None
        weights = {"class_weights": cw, "sample_weights": sw}
        options = Options(reduction, eps)
        _check(engine, False, labels, logits, dtype=dtype, dim=dim, options=options, **weights)
        options = Options(reduction, eps, -100)
        for outputs in (["loss"], _outputs(True, reduction)):  # the loss alone: at the labels
            _check(
                engine,
                True,
                targets,
                logits,
                dtype=dtype,
                dim=dim,
                outputs=outputs,
                options=options,
                **weights,
            )


@pytest.fixture(scope="module")
def chunked() -> Engine:
    return Engine(chunked_softmax=True)


def test_whole_row_sums_are_the_default(rng: np.random.Generator) -> None:
    whole = Engine()
    logits = rng.standard_normal((2, 4096)).astype(np.float32)
    labels = random_distribution(rng, (2, 4096), -1).astype(np.float32)
    result = whole.softmax_cross_entropy(labels=labels, logits=logits)
    assert_close(result.loss, xent_with_options(labels, logits, sparse=False)["loss"], "float32")
    assert not any(key[-1] for key in whole._sessions)  # no chunked graph was built
