"""The engine's fast paths give what its general path gives, bit for bit.

A small call without options or broadcast is one plain ONNX Runtime run prepared once
for its shapes (engine._Direct), and every call's checks are remembered by their shapes
(Engine._checked). The general path (outputs bound in place, blocks) is the reference:
with SMALL_ELEMENTS at 0 no call takes the fast one.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.engine import engine as engine_module
from service.engine.engine import Engine, LossResult
from service.engine.types import Options
from service.errors import InvalidArgument, InvalidDim, LabelOutOfRange
from tests.reference import NUMPY

FAST_DTYPES = ["float16", "float32", "float64"]  # bfloat16 always takes the bound path


ENGINE = Engine()


def _both(call: object, monkeypatch: pytest.MonkeyPatch) -> tuple[LossResult, LossResult]:
    """The call through the fast path, then through the general one (the remembered
    checks, which hold the fast path's preparation, forgotten before each)."""
    ENGINE._checks.clear()
    fast = call()  # type: ignore[operator]
    ENGINE._checks.clear()
    with monkeypatch.context() as patch:
        patch.setattr(engine_module, "SMALL_ELEMENTS", 0)
        general = call()  # type: ignore[operator]
    ENGINE._checks.clear()
    return fast, general


def _same(fast: LossResult, general: LossResult) -> None:
    assert [n for n, _ in fast.items()] == [n for n, _ in general.items()]
    for (name, a), (_, b) in zip(fast.items(), general.items(), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        np.testing.assert_array_equal(a, b, err_msg=name)


@settings(max_examples=60, deadline=None)
@given(
    dtype=st.sampled_from(FAST_DTYPES),
    shape=st.lists(st.integers(1, 6), min_size=1, max_size=4).map(tuple),
    data=st.data(),
)
def test_small_soft_calls_match_the_general_path(
    dtype: str, shape: tuple[int, ...], data: st.DataObject
) -> None:
    engine = ENGINE
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    outputs = data.draw(
        st.lists(st.sampled_from(["loss", "grad_logits", "grad_labels"]), min_size=1, unique=True)
    )
    labels = rng.random(shape).astype(NUMPY[dtype])
    logits = (rng.standard_normal(shape) * 4).astype(NUMPY[dtype])
    logits.flat[0] = data.draw(st.sampled_from([0.0, np.inf, -np.inf, np.nan]))
    loss_shape = shape[: dim % len(shape)] + shape[dim % len(shape) + 1 :]
    grad_loss = None
    if outputs != ["loss"] and data.draw(st.booleans()):
        grad_loss = rng.standard_normal(loss_shape).astype(NUMPY[dtype])
    with pytest.MonkeyPatch.context() as monkeypatch:
        fast, general = _both(
            lambda: engine.softmax_cross_entropy(
                labels=labels, logits=logits, dim=dim, grad_loss=grad_loss, outputs=outputs
            ),
            monkeypatch,
        )
    _same(fast, general)


@settings(max_examples=40, deadline=None)
@given(
    dtype=st.sampled_from(FAST_DTYPES),
    label_dtype=st.sampled_from([np.int32, np.int64]),
    shape=st.lists(st.integers(1, 6), min_size=1, max_size=4).map(tuple),
    data=st.data(),
)
def test_small_sparse_calls_match_the_general_path(
    dtype: str, label_dtype: type, shape: tuple[int, ...], data: st.DataObject
) -> None:
    engine = ENGINE
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    loss_shape = shape[: dim % len(shape)] + shape[dim % len(shape) + 1 :]
    labels = rng.integers(0, shape[dim], loss_shape).astype(label_dtype)
    logits = (rng.standard_normal(shape) * 4).astype(NUMPY[dtype])
    outputs = data.draw(st.sampled_from([["loss"], ["grad_logits"], ["loss", "grad_logits"]]))
    grad_loss = None
    if "grad_logits" in outputs and data.draw(st.booleans()):
        grad_loss = rng.standard_normal(loss_shape).astype(NUMPY[dtype])
    with pytest.MonkeyPatch.context() as monkeypatch:
        fast, general = _both(
            lambda: engine.sparse_softmax_cross_entropy(
                labels=labels, logits=logits, dim=dim, grad_loss=grad_loss, outputs=outputs
            ),
            monkeypatch,
        )
    _same(fast, general)


def test_strided_inputs_take_the_fast_path_correctly(engine: Engine) -> None:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((10, 8))[:, ::2]  # not contiguous
    labels = np.full((10, 4), 0.25)[::1, :]
    fast = engine.softmax_cross_entropy(labels=labels, logits=logits, outputs=["grad_logits"])
    plain = engine.softmax_cross_entropy(
        labels=labels, logits=np.ascontiguousarray(logits), outputs=["grad_logits"]
    )
    np.testing.assert_array_equal(fast.grad_logits, plain.grad_logits)


def test_remembered_checks_still_refuse_each_time(engine: Engine) -> None:
    """Only successes are remembered; values (the label range) are checked on every call."""
    for _ in range(2):
        with pytest.raises(InvalidArgument, match="outputs must be"):
            engine.softmax_cross_entropy(labels=np.ones(3), logits=np.ones(3), outputs=["x"])
    logits = np.zeros((2, 3))
    engine.sparse_softmax_cross_entropy(labels=np.array([0, 2]), logits=logits)
    with pytest.raises(LabelOutOfRange):
        engine.sparse_softmax_cross_entropy(labels=np.array([0, 3]), logits=logits)
    # unhashable outputs are checked, not remembered
    with pytest.raises(InvalidArgument):
        engine.softmax_cross_entropy(labels=np.ones(3), logits=np.ones(3), outputs=[["loss"]])


def test_remembered_checks_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "CHECKED", 4)
    engine = Engine()
    for n in range(1, 10):
        engine.softmax_cross_entropy(labels=np.ones((n, 2)), logits=np.ones((n, 2)))
    assert len(engine._checks) == 4


def test_remembered_checks_tell_booleans_from_numbers(engine: Engine) -> None:
    """True == 1 and hash alike: a remembered dim=1 must not let dim=True through."""
    labels, logits = np.full((2, 3), 1 / 3), np.zeros((2, 3))
    engine.softmax_cross_entropy(labels=labels, logits=logits, dim=1)
    with pytest.raises(InvalidDim, match="dim must be an integer"):
        engine.softmax_cross_entropy(labels=labels, logits=logits, dim=True)
    engine.softmax_cross_entropy(labels=labels, logits=logits, options=Options(label_smoothing=1.0))
    with pytest.raises(InvalidArgument, match="label_smoothing"):
        engine.softmax_cross_entropy(
            labels=labels, logits=logits, options=Options(label_smoothing=True)
        )
