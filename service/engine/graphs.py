"""ONNX graphs for softmax cross entropy and its gradients, built in code.

Every request is reshaped (as a view, no copy) to one of two layouts so that a
handful of graphs serve every rank and `dim`:

* rows   ``[N, C]``        the class dimension is the last one (the common case);
* planes ``[outer, C, inner]`` the class dimension has something after it.

The class axis is always 1. `labels` and `logits` may differ where one of them has
a 1 (ONNX broadcasting does the rest), so ``[1, C]`` labels against ``[N, C]``
logits never materialise. float16/bfloat16 are cast to float32 inside the graph
and the outputs cast back, as TensorFlow computes them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import onnx
from onnx import TensorProto, helper

from service.engine.types import DType, Output

OPSET = 18
CLASS_AXIS = 1
ONNX_TYPES = {
    DType.float16: TensorProto.FLOAT16,
    DType.bfloat16: TensorProto.BFLOAT16,
    DType.float32: TensorProto.FLOAT,
    DType.float64: TensorProto.DOUBLE,
    DType.int32: TensorProto.INT32,
    DType.int64: TensorProto.INT64,
}


def _dims(prefix: str, rank: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(rank)]


class _Builder:
    """Collects nodes; casts half inputs up to float32 and outputs back down."""

    def __init__(self, dtype: DType) -> None:
        self.dtype = dtype
        self.nodes: list[onnx.NodeProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        compute = TensorProto.FLOAT if dtype.value.half else ONNX_TYPES[dtype]
        self.compute = compute
        self.initializers: list[onnx.TensorProto] = [
            helper.make_tensor("class_axes", TensorProto.INT64, [1], [CLASS_AXIS]),
            helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
            helper.make_tensor("zero", compute, [], [0.0]),
        ]

    def node(self, op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output

    def float_input(self, name: str, dims: list[str]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, ONNX_TYPES[self.dtype], dims))
        if self.dtype.value.half:
            return self.node("Cast", [name], f"{name}_f32", to=TensorProto.FLOAT)
        return name

    def compute_input(self, name: str, dims: list[str]) -> str:
        """An input prepared by the engine in the compute type (float32 for half types)."""
        self.inputs.append(helper.make_tensor_value_info(name, self.compute, dims))
        return name

    def index_input(self, name: str, dtype: DType, dims: list[str]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, ONNX_TYPES[dtype], dims))
        if dtype is DType.int64:
            return name
        return self.node("Cast", [name], f"{name}_i64", to=TensorProto.INT64)

    def output(self, name: str, value: str, dims: list[str]) -> None:
        if self.dtype.value.half:
            self.node("Cast", [value], name, to=ONNX_TYPES[self.dtype])
        else:
            self.node("Identity", [value], name)
        self.outputs.append(helper.make_tensor_value_info(name, ONNX_TYPES[self.dtype], dims))

    def model(self, name: str) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, name, self.inputs, self.outputs, initializer=self.initializers
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        onnx.checker.check_model(model, full_check=True)
        return model


def _loss_dims(rank: int) -> list[str]:
    return [d for i, d in enumerate(_dims("d", rank)) if i != CLASS_AXIS]


def _class_dims(rank: int) -> list[str]:
    """A per-class input: [1, C] or [1, C, 1] (or all 1s: the same for every class)."""
    return ["o", "c", *(["i"] if rank == 3 else [])]


def _nan_rows(b: _Builder, log_p: str, softmax: str | None) -> str | None:
    """0 for each row, NaN for a row that TensorFlow makes NaN throughout; float64 only.

    A row with a +inf logit is NaN in every class in TensorFlow (inf - max is NaN, and so
    is the row's sum). ONNX Runtime's float32 LogSoftmax agrees; its float64 one leaves
    the other classes' log-probabilities at -inf (softmax 0, gradient 0): the row's sum of
    softmax, 1 or NaN, times 0 puts the NaN back. None for the other dtypes.
    """
    if b.dtype is not DType.float64:
        return None
    p = softmax or b.node("Exp", [log_p], "softmax_for_nan")
    total = b.node("ReduceSum", [p, "class_axes"], "softmax_sum", keepdims=1)
    return b.node("Mul", [total, "zero"], "nan_rows")


def soft_graph(
    dtype: DType, rank: int, outputs: Iterable[Output], *, weighted: bool = False
) -> onnx.ModelProto:
    """Loss and/or gradients of softmax cross entropy on a rows or planes layout.

    Inputs ``labels``, ``logits`` (rank `rank`, class axis 1) and, when a gradient is
    asked for, ``grad_loss`` with the class axis kept as 1, in the compute type (float32
    for half types: it carries the scale of a mean, 1 / sum of weights, which float16
    cannot hold to its precision). Outputs exactly `outputs`.

    `weighted`: class weights and label smoothing, through two per-class inputs in the
    compute type, ``keep_w`` = (1 - eps) w and ``spread_w`` = (eps / C) w, so that the
    labels the loss sees are ``y' w = y keep_w + spread_w``:
    loss = -sum_c y'_c w_c log p_c; grad_logits = p sum_c(y'_c w_c) - y' w (the exact
    gradient: TensorFlow's ``p - y`` takes labels to sum to 1, which weights undo);
    grad_labels = -keep_w log p (with respect to the labels as sent).
    """
    wanted = frozenset(outputs)
    if not wanted:
        raise ValueError("at least one output")
    b = _Builder(dtype)
    labels = b.float_input("labels", _dims("l", rank))
    logits = b.float_input("logits", _dims("x", rank))
    # LogSoftmax is one fused kernel in ONNX Runtime (max, sum of exp, subtract).
    log_p = b.node("LogSoftmax", [logits], "log_p", axis=CLASS_AXIS)
    target = labels
    if weighted:
        keep_w = b.compute_input("keep_w", _class_dims(rank))
        spread_w = b.compute_input("spread_w", _class_dims(rank))
        scaled = b.node("Mul", [labels, keep_w], "labels_keep_w")
        target = b.node("Add", [scaled, spread_w], "weighted_labels")
    if "loss" in wanted:
        weighted_log_p = b.node("Mul", [target, log_p], "weighted")
        neg_loss = b.node("ReduceSum", [weighted_log_p, "class_axes"], "neg_loss", keepdims=0)
        b.output("loss", b.node("Neg", [neg_loss], "loss_c"), _loss_dims(rank))
    if wanted & {"grad_logits", "grad_labels"}:
        grad_loss = b.compute_input("grad_loss", _dims("g", rank))
        softmax = b.node("Exp", [log_p], "softmax") if "grad_logits" in wanted else None
        nan_rows = _nan_rows(b, log_p, softmax)
        if softmax is not None:
            if weighted:
                mass = b.node("ReduceSum", [target, "class_axes"], "target_mass", keepdims=1)
                softmax = b.node("Mul", [softmax, mass], "softmax_mass")
            # TensorFlow's fused kernel: softmax - labels, exact when labels do not sum to 1.
            diff = b.node("Sub", [softmax, target], "softmax_minus_labels")
            if nan_rows is not None:
                diff = b.node("Add", [diff, nan_rows], "diff_nan_rows")
            b.output("grad_logits", b.node("Mul", [diff, grad_loss], "gx"), _dims("d", rank))
        if "grad_labels" in wanted:
            neg_grad = b.node("Neg", [grad_loss], "neg_grad_loss")
            if weighted:
                neg_grad = b.node("Mul", [neg_grad, keep_w], "neg_grad_keep_w")
            if nan_rows is not None:
                log_p = b.node("Add", [log_p, nan_rows], "log_p_nan_rows")
            b.output("grad_labels", b.node("Mul", [neg_grad, log_p], "gl"), _dims("d", rank))
    kind = "weighted_" if weighted else ""
    return b.model(f"softmax_xent_{kind}{dtype.name}_r{rank}")


def sparse_graph(
    dtype: DType,
    label_dtype: DType,
    outputs: Iterable[Output],
    *,
    rank: int = 2,
    smoothed: bool = False,
) -> onnx.ModelProto:
    """Loss and/or grad_logits of sparse softmax cross entropy on ``[N, C]`` logits (rank
    2) or ``[outer, C, inner]`` (rank 3).

    ``labels`` are class indices of the logits' shape without the class axis (checked to
    be in range before the run); ``grad_loss`` is that shape too, or all 1s.

    `smoothed`: label smoothing eps and class weights w, through inputs in the compute
    type: ``keep_w_y`` = (1 - eps) w_y per example, ``spread_w`` = (eps / C) w per class
    and, for the gradient, ``mass`` = (1 - eps) w_y + (eps / C) sum_c w_c per example.
    loss = -(keep_w_y log p_y + sum_c spread_w_c log p_c); grad_logits = p mass -
    spread_w - keep_w_y onehot(y), the gradient of that loss (PyTorch's).
    """
    wanted = frozenset(outputs)
    if not wanted or not wanted <= {"loss", "grad_logits"}:
        raise ValueError(f"sparse outputs are loss and grad_logits, not {sorted(wanted)}")
    b = _Builder(dtype)
    per_example = _loss_dims(rank)
    labels = b.index_input("labels", label_dtype, per_example)
    logits = b.float_input("logits", _dims("d", rank))
    log_p = b.node("LogSoftmax", [logits], "log_p", axis=CLASS_AXIS)
    index = b.node("Unsqueeze", [labels, "class_axes"], "index")
    if smoothed:
        keep_w_y = b.node(
            "Unsqueeze", [b.compute_input("keep_w_y", per_example), "class_axes"], "keep_col"
        )
        spread_w = b.compute_input("spread_w", _class_dims(rank))
    if "loss" in wanted:
        picked = b.node("GatherElements", [log_p, index], "picked", axis=CLASS_AXIS)
        if smoothed:
            picked = b.node("Mul", [picked, keep_w_y], "picked_keep")
            spread = b.node("Mul", [log_p, spread_w], "log_p_spread")
            total = b.node("ReduceSum", [spread, "class_axes"], "spread_sum", keepdims=1)
            picked = b.node("Add", [picked, total], "picked_total")
        neg_loss = b.node("Squeeze", [picked, "class_axes"], "neg_loss")
        b.output("loss", b.node("Neg", [neg_loss], "loss_c"), per_example)
    if "grad_logits" in wanted:
        grad_loss = b.compute_input("grad_loss", ["g"] * (rank - 1))
        softmax = b.node("Exp", [log_p], "softmax")
        nan_rows = _nan_rows(b, log_p, softmax)
        if nan_rows is not None:
            softmax = b.node("Add", [softmax, nan_rows], "softmax_nan_rows")
        if smoothed:
            mass = b.node(
                "Unsqueeze", [b.compute_input("mass", per_example), "class_axes"], "mass_col"
            )
            weighted = b.node("Mul", [softmax, mass], "softmax_mass")
            softmax = b.node("Sub", [weighted, spread_w], "softmax_mass_spread")
            minus = keep_w_y
        else:
            minus = b.node("CastLike", ["one", softmax], "one_c")
        # softmax - onehot(labels): subtract at each row's label, in place of a one-hot.
        at_label = b.node("GatherElements", [softmax, index], "at_label", axis=CLASS_AXIS)
        less = b.node("Sub", [at_label, minus], "at_label_minus")
        diff = b.node(
            "ScatterElements", [softmax, index, less], "softmax_minus_onehot", axis=CLASS_AXIS
        )
        scale = b.node("Unsqueeze", [grad_loss, "class_axes"], "grad_loss_col")
        b.output("grad_logits", b.node("Mul", [diff, scale], "gx"), _dims("d", rank))
    kind = "smoothed_" if smoothed else ""
    return b.model(f"sparse_softmax_xent_{kind}{dtype.name}_{label_dtype.name}_r{rank}")
