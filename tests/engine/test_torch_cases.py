"""Cases whose expected numbers PyTorch computed (torch.nn.functional.cross_entropy).

The numbers were produced in float64 by torch 2.13.0+cpu with the script below, and pasted
in as literals (no random draws, so no seeds); torch is not needed to run these tests.
Every input is a multiple of 1/8, so it is exact in float32 as well as float64, and the
float32 runs see the same inputs.
PyTorch's layout is [N, C] or [N, C, T] (class dimension 1); its weighted mean divides
by the sum of weight[target] over the kept positions for integer targets, and by N for
probability targets: that denominator is what the engine reports as ``weight_sum``.

    import torch
    import torch.nn.functional as F

    D = torch.float64
    X = torch.tensor(X_LITERAL, dtype=D)  # [4, 5], as X below
    W = torch.tensor(W_LITERAL, dtype=D)  # [5], as W below
    Y = torch.tensor(Y_LITERAL, dtype=D)  # [4, 5] probabilities, as Y_SOFT below
    X3 = torch.tensor(X3_LITERAL, dtype=D)  # [2, 3, 4], as X3 below
    W3 = torch.tensor(W3_LITERAL, dtype=D)  # [3], as W3 below


    def run(x, target, **kw):
        x = x.clone().requires_grad_(True)
        loss = F.cross_entropy(x, target, **kw)
        if loss.dim() == 0:
            loss.backward()
        else:
            loss.backward(torch.ones_like(loss))
        return loss.detach().tolist(), x.grad.tolist()


    # a. probability targets, weight, label smoothing 0.1, mean
    run(X, Y, weight=W, label_smoothing=0.1, reduction="mean")
    # b. integer targets, one ignored, weight, mean and sum
    run(X, torch.tensor([3, -100, 1, 0]), weight=W, ignore_index=-100, reduction="mean")
    run(X, torch.tensor([3, -100, 1, 0]), weight=W, ignore_index=-100, reduction="sum")
    # c. integer targets, label smoothing 0.2, weight, none (backward with ones) and mean
    run(X, torch.tensor([4, 2, 1, 0]), weight=W, label_smoothing=0.2, reduction="none")
    run(X, torch.tensor([4, 2, 1, 0]), weight=W, label_smoothing=0.2, reduction="mean")
    # d. [N, C, T] logits, [N, T] targets with two ignored, weight, mean
    run(X3, torch.tensor([[2, 0, -100, 1], [1, -100, 0, 2]]), weight=W3,
        ignore_index=-100, reduction="mean")
    # e. every target ignored, mean: loss nan (0 / 0), gradient all zeros
    run(X, torch.tensor([-100] * 4), weight=W, ignore_index=-100, reduction="mean")
"""

from __future__ import annotations

import numpy as np
import pytest

from service.engine.engine import Engine, LossResult
from service.engine.types import Options

OUTPUTS = ["loss", "grad_logits", "weight_sum"]
# Relative to each element and to the largest element of the array (the gradient's entries
# are differences of terms about that large, so a float32 entry near zero carries an
# absolute error of float32's epsilon times that scale).
RTOL = {"float32": 1e-6, "float64": 1e-12}
DTYPES = list(RTOL)

X = [
    [1.25, -0.5, 0.375, 2.0, -1.125],
    [0.0, 0.75, -2.25, 1.5, 0.125],
    [-0.625, 3.0, 0.5, -1.0, 0.25],
    [2.5, 1.0, -0.375, 0.0, -1.75],
]
W = [0.5, 1.0, 2.0, 1.5, 0.25]
Y_SOFT = [
    [0.0, 0.25, 0.0, 0.75, 0.0],
    [0.5, 0.0, 0.125, 0.0, 0.375],
    [0.0, 1.0, 0.0, 0.0, 0.0],
    [0.25, 0.25, 0.25, 0.125, 0.125],
]
T_IGNORE = [3, -100, 1, 0]
T_SMOOTH = [4, 2, 1, 0]
T_ALL_IGNORED = [-100, -100, -100, -100]
X3 = [
    [[0.5, -1.0, 2.25, 0.0], [1.5, 0.25, -0.5, 1.0], [-0.75, 2.0, 0.125, -1.5]],
    [[0.0, 1.75, -0.25, 0.625], [-1.25, 0.5, 1.0, 2.0], [2.5, -0.375, 0.0, 0.75]],
]
W3 = [1.0, 0.5, 2.0]
T3 = [[2, 0, -100, 1], [1, -100, 0, 2]]


def _close(actual: np.ndarray, expected: object, dtype: str) -> None:
    expected = np.asarray(expected, np.float64)
    rtol = RTOL[dtype]
    atol = rtol * float(np.abs(expected).max())
    np.testing.assert_allclose(actual.astype(np.float64), expected, rtol=rtol, atol=atol)


def _check(
    result: LossResult,
    dtype: str,
    loss: object,
    grad: object,
    weight_sum: float | None = None,
) -> None:
    assert result.loss.dtype == np.dtype(dtype)
    assert result.grad_logits.dtype == np.dtype(dtype)
    assert result.loss.shape == np.shape(loss)
    assert result.grad_logits.shape == np.shape(grad)
    _close(result.loss, loss, dtype)
    _close(result.grad_logits, grad, dtype)
    if weight_sum is not None:
        assert result.weight_sum.shape == ()
        np.testing.assert_allclose(result.weight_sum, weight_sum, rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_soft_weighted_smoothed_mean(engine: Engine, dtype: str) -> None:
    result = engine.softmax_cross_entropy(
        labels=np.array(Y_SOFT, dtype),
        logits=np.array(X, dtype),
        dim=-1,
        outputs=OUTPUTS,
        class_weights=np.array(W, dtype),
        sample_weights=None,
        options=Options(reduction="mean", label_smoothing=0.1),
    )
    loss = 1.6529144771407525
    grad = [
        [
            0.08580725233528781,
            -0.04590450052642351,
            0.026811939560747747,
            -0.07367854533917605,
            0.006963853969563965,
        ],
        [
            -0.04066247397142617,
            0.03329129290297298,
            -0.06434358878234578,
            0.0735626677117146,
            -0.0018478978609156103,
        ],
        [
            0.003121924146964554,
            -0.019038852760879087,
            0.007316745480819349,
            -0.0036361118076151783,
            0.01223629494071032,
        ],
        [
            0.16731426474016659,
            -0.01708378015886418,
            -0.11133303082714364,
            -0.033439655726187886,
            -0.005457798027970934,
        ],
    ]
    _check(result, dtype, loss, grad, weight_sum=4.0)  # soft targets: divided by N


@pytest.mark.parametrize("label_dtype", ["int64", "int32"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_b_ignore_index_weighted_mean(engine: Engine, dtype: str, label_dtype: str) -> None:
    result = engine.sparse_softmax_cross_entropy(
        labels=np.array(T_IGNORE, label_dtype),
        logits=np.array(X, dtype),
        dim=1,
        outputs=OUTPUTS,
        class_weights=np.array(W, dtype),
        options=Options(reduction="mean", ignore_index=-100),
    )
    loss = 0.4040284096570055
    grad = [
        [
            0.1315564280600191,
            0.022861079290244307,
            0.05484087830278995,
            -0.2214950396114354,
            0.012236653958382072,
        ],
        [0.0, 0.0, 0.0, 0.0, 0.0],
        [
            0.007458605833452145,
            -0.05345121427645645,
            0.022974123357637613,
            0.005126219824059464,
            0.017892265261307223,
        ],
        [
            -0.045533439057461635,
            0.027028476475738118,
            0.006833869067343725,
            0.009943220821610014,
            0.001727872692769748,
        ],
    ]
    _check(result, dtype, loss, grad, weight_sum=3.0)  # w[3] + w[1] + w[0]


@pytest.mark.parametrize("dtype", DTYPES)
def test_b_ignore_index_weighted_sum(engine: Engine, dtype: str) -> None:
    result = engine.sparse_softmax_cross_entropy(
        labels=np.array(T_IGNORE, np.int64),
        logits=np.array(X, dtype),
        dim=1,
        outputs=["loss", "grad_logits"],
        class_weights=np.array(W, dtype),
        options=Options(reduction="sum", ignore_index=-100),
    )
    loss = 1.2120852289710164
    grad = [
        [
            0.3946692841800573,
            0.06858323787073292,
            0.16452263490836985,
            -0.6644851188343062,
            0.03670996187514622,
        ],
        [0.0, 0.0, 0.0, 0.0, 0.0],
        [
            0.022375817500356436,
            -0.16035364282936937,
            0.06892237007291284,
            0.015378659472178395,
            0.05367679578392168,
        ],
        [
            -0.1366003171723849,
            0.08108542942721436,
            0.020501607202031175,
            0.029829662464830042,
            0.005183618078309244,
        ],
    ]
    _check(result, dtype, loss, grad)


@pytest.mark.parametrize("dtype", DTYPES)
def test_c_smoothed_weighted_none(engine: Engine, dtype: str) -> None:
    """Unreduced: the engine's gradient (grad_loss of ones) is torch's backward(ones)."""
    result = engine.sparse_softmax_cross_entropy(
        labels=np.array(T_SMOOTH, np.int64),
        logits=np.array(X, dtype),
        dim=-1,
        outputs=["loss", "grad_logits"],
        class_weights=np.array(W, dtype),
        options=Options(reduction="none", label_smoothing=0.2),
    )
    loss = [1.141170613530623, 7.602693382713096, 0.7165222239514729, 0.6771539373036436]
    grad = [
        [
            0.08787627100921568,
            -0.021253914981999668,
            -0.03503047979171224,
            0.168374067518623,
            -0.1999659437541267,
        ],
        [
            0.18481515299608925,
            0.3935936822952483,
            -1.6584126416956928,
            0.8579178326221916,
            0.22208597378216385,
        ],
        [
            0.0025995756753600004,
            0.008042820742336865,
            -0.010388406226358034,
            -0.04446755393309982,
            0.04421356374176089,
        ],
        [
            0.02334761304969044,
            0.058924223901201535,
            -0.054988039213521966,
            -0.02360781179290734,
            -0.0036759859444627217,
        ],
    ]
    _check(result, dtype, loss, grad)


@pytest.mark.parametrize("dtype", DTYPES)
def test_c_smoothed_weighted_mean(engine: Engine, dtype: str) -> None:
    result = engine.sparse_softmax_cross_entropy(
        labels=np.array(T_SMOOTH, np.int64),
        logits=np.array(X, dtype),
        dim=-1,
        outputs=OUTPUTS,
        class_weights=np.array(W, dtype),
        options=Options(reduction="mean", label_smoothing=0.2),
    )
    loss = 2.7033440419996895
    grad = [
        [
            0.02343367226912418,
            -0.0056677106618665775,
            -0.00934146127778993,
            0.04489975133829946,
            -0.05332425166776712,
        ],
        [
            0.04928404079895713,
            0.10495831527873288,
            -0.44224337111885137,
            0.22877808869925106,
            0.059222926341910356,
        ],
        [
            0.0006932201800959999,
            0.002144752197956495,
            -0.0027702416603621427,
            -0.011858014382159953,
            0.01179028366446957,
        ],
        [
            0.006226030146584138,
            0.015713126373653748,
            -0.014663477123605856,
            -0.006295416478108624,
            -0.000980262918523392,
        ],
    ]
    _check(result, dtype, loss, grad, weight_sum=3.75)  # w[4] + w[2] + w[1] + w[0]


@pytest.mark.parametrize("dtype", DTYPES)
def test_d_nct_layout_ignore_index_mean(engine: Engine, dtype: str) -> None:
    result = engine.sparse_softmax_cross_entropy(
        labels=np.array(T3, np.int64),
        logits=np.array(X3, dtype),
        dim=1,
        outputs=OUTPUTS,
        class_weights=np.array(W3, dtype),
        options=Options(reduction="mean", ignore_index=-100),
    )
    loss = 2.2434075727002134
    grad = [
        [
            [0.07134319813892968, -0.13704424242180074, 0.0, 0.018122584402501803],
            [0.1939309190852057, 0.02028901609692319, 0.0, -0.022166279562535456],
            [-0.26527411722413535, 0.11675522632487753, 0.0, 0.0040436951600336625],
        ],
        [
            [0.005303183459606449, 0.0, -0.11811726940246703, 0.046928994486139027],
            [-0.06990918392876456, 0.0, 0.08635064308102491, 0.1856077737221966],
            [0.06460600046915811, 0.0, 0.031766626321442115, -0.23253676820833563],
        ],
    ]
    _check(result, dtype, loss, grad, weight_sum=7.0)  # W3 of targets 2, 0, 1, 1, 0, 2


@pytest.mark.parametrize("dtype", DTYPES)
def test_e_all_ignored_mean(engine: Engine, dtype: str) -> None:
    """PyTorch: loss nan (0 / 0) and a gradient of zeros; the denominator is 0."""
    result = engine.sparse_softmax_cross_entropy(
        labels=np.array(T_ALL_IGNORED, np.int64),
        logits=np.array(X, dtype),
        dim=1,
        outputs=OUTPUTS,
        class_weights=np.array(W, dtype),
        options=Options(reduction="mean", ignore_index=-100),
    )
    assert result.loss.shape == ()
    assert np.isnan(result.loss)
    np.testing.assert_array_equal(result.grad_logits, np.zeros((4, 5)))
    assert result.weight_sum == 0.0
