"""Accuracy at large class counts, against TensorFlow 2.21's own error (the issue's figures).

float32 sums along the class axis added one element at a time lose ~C/16 units in the
last place: at 32 x 128,000 ONNX Runtime's LogSoftmax gave the loss 4x TensorFlow's
relative error and grad_logits 2-40x its absolute error. The engine sums more than 2048
classes in chunks (graphs._LogSoftmax); each output must stay within 2x TensorFlow's
error, float32 and half types (computed in float32 inside the graph: their check allows
the output's own rounding on top, which at these values hides float32's error: the half
case guards the cast path, it does not tell whole-row sums from chunked ones).
"""

from __future__ import annotations

import numpy as np
import pytest

from service.engine.engine import Engine
from service.engine.types import Options
from tests.reference import NUMPY, softmax_xent, xent_with_options

ALL = ["loss", "grad_logits", "grad_labels"]
# TensorFlow 2.21's float32 error at 32 rows, 1,000 to 128,000 classes (the issue):
# loss relative ~1.6e-7, grad_logits absolute ~2-3e-7 (grad_labels is taken normwise,
# max abs error over max |log p|, against the loss's figure).
TF_LOSS_REL = 1.6e-7
TF_GRAD_ABS = 2.5e-7
WITHIN = 2.0


def sparse_soft_inputs(
    classes: int, scale: float, dtype: str, rows: int = 32, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Soft labels on about a tenth of the classes, normal logits times `scale`."""
    rng = np.random.default_rng(seed)
    raw = rng.random((rows, classes)) * (rng.random((rows, classes)) < 0.1)
    raw[:, 0] += 1e-3  # no empty row
    labels = (raw / raw.sum(axis=-1, keepdims=True)).astype(NUMPY[dtype])
    logits = (rng.standard_normal((rows, classes)) * scale).astype(NUMPY[dtype])
    return labels, logits


def rounding(want: np.ndarray, dtype: str) -> np.ndarray:
    """The error of the exact answer rounded to `dtype`: what no engine can beat."""
    err: np.ndarray = np.abs(want.astype(NUMPY[dtype]).astype(np.float64) - want)
    return err


# Whole rows (the default, SCE_CHUNKED_SOFTMAX=false) miss the bound in float32: kept as
# a strict expected failure, so that a faster fix, or an ONNX Runtime whose sums no
# longer drift, shows up here.
WHOLE_ROWS_DRIFT = pytest.mark.xfail(
    strict=True, reason="float32 whole-row sums in ONNX Runtime grow with the class count"
)


@pytest.fixture(
    scope="module",
    params=[True, pytest.param(False, marks=WHOLE_ROWS_DRIFT)],
    ids=["chunked", "whole-rows"],
)
def sums(request: pytest.FixtureRequest) -> Engine:
    """The engine with chunked class sums, and without them (the default)."""
    return Engine(chunked_softmax=request.param)


@pytest.mark.parametrize("scale", [3.0, 6.0])
def test_float32_error_stays_within_twice_tensorflows_at_128k_classes(
    sums: Engine, scale: float
) -> None:
    check_error(sums, "float32", scale)


@pytest.mark.parametrize("scale", [3.0, 6.0])
def test_half_error_stays_within_twice_tensorflows_at_128k_classes(
    engine: Engine, scale: float
) -> None:
    check_error(engine, "float16", scale)


def check_error(engine: Engine, dtype: str, scale: float) -> None:
    labels, logits = sparse_soft_inputs(128_000, scale, dtype)
    want = softmax_xent(labels, logits)
    every = dict(engine.softmax_cross_entropy(labels=labels, logits=logits, outputs=ALL).items())
    loss_only = engine.softmax_cross_entropy(labels=labels, logits=logits).loss
    assert loss_only is not None
    failures = []
    for what, loss in (("loss", loss_only), ("loss (with gradients)", every["loss"])):
        err = np.abs(loss.astype(np.float64) - want["loss"]) - rounding(want["loss"], dtype)
        worst = float(np.max(err / np.abs(want["loss"])))
        if worst > WITHIN * TF_LOSS_REL:
            failures.append(f"{what}: relative error {worst:.3g}")
    err = np.abs(every["grad_logits"].astype(np.float64) - want["grad_logits"])
    worst = float(np.max(err - rounding(want["grad_logits"], dtype)))
    if worst > WITHIN * TF_GRAD_ABS:
        failures.append(f"grad_logits: absolute error {worst:.3g}")
    err = np.abs(every["grad_labels"].astype(np.float64) - want["grad_labels"])
    worst = float(np.max(err - rounding(want["grad_labels"], dtype)))
    worst /= float(np.abs(want["grad_labels"]).max())
    if worst > WITHIN * TF_LOSS_REL:
        failures.append(f"grad_labels: normwise relative error {worst:.3g}")
    assert not failures, f"{dtype}, logits x{scale}, over {WITHIN}x TensorFlow's: {failures}"


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_error_with_every_option_stays_within_twice_tensorflows(dtype: str) -> None:
    engine = Engine(chunked_softmax=True)
    """The options' graphs (class weights, smoothing) and their float64 reductions keep
    the same bound: per-example loss and gradients, and a mean."""
    labels, logits = sparse_soft_inputs(128_000, 3.0, dtype)
    rng = np.random.default_rng(2)
    weights = (rng.random(128_000) + 0.5).astype(NUMPY[dtype])
    samples = (rng.random(32) + 0.5).astype(NUMPY[dtype])
    options = {"class_weights": weights, "sample_weights": samples}
    failures = []
    for reduction in ("none", "mean"):
        got = engine.softmax_cross_entropy(
            labels=labels,
            logits=logits,
            outputs=["loss", "grad_logits", "grad_labels"],
            options=Options(reduction, 0.1),
            **options,
        )
        want = xent_with_options(
            labels, logits, sparse=False, reduction=reduction, label_smoothing=0.1, **options
        )
        for name, array in got.items():
            err = np.abs(array.astype(np.float64) - want[name]) - rounding(want[name], dtype)
            scale = np.abs(want[name]) if name == "loss" else np.abs(want[name]).max()
            worst = float(np.max(err / scale))
            bound = TF_LOSS_REL if name != "grad_logits" else TF_GRAD_ABS / scale
            # The options' own factors (1 - eps) w_c and s_n / W are rounded to float32 on
            # their way into the graph and multiplied in: three roundings more than
            # TensorFlow's op makes, allowed on top (2**-24 each, relative).
            if worst > WITHIN * float(np.max(bound)) + 3 * 2.0**-24:
                failures.append(f"{reduction} {name}: {worst:.3g}")
    assert not failures, f"{dtype}, over {WITHIN}x TensorFlow's: {failures}"
