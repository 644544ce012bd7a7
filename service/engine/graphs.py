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
        self.initializers: list[onnx.TensorProto] = [
            helper.make_tensor("class_axes", TensorProto.INT64, [1], [CLASS_AXIS])
        ]

    def node(self, op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output

    def float_input(self, name: str, dims: list[str]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, ONNX_TYPES[self.dtype], dims))
        if self.dtype.value.half:
            return self.node("Cast", [name], f"{name}_f32", to=TensorProto.FLOAT)
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


def soft_graph(dtype: DType, rank: int, outputs: Iterable[Output]) -> onnx.ModelProto:
    """Loss and/or gradients of softmax cross entropy on a rows or planes layout.

    Inputs ``labels``, ``logits`` (rank `rank`, class axis 1) and, when a gradient is
    asked for, ``grad_loss`` with the class axis kept as 1. Outputs exactly `outputs`.
    """
    wanted = frozenset(outputs)
    if not wanted:
        raise ValueError("at least one output")
    b = _Builder(dtype)
    labels = b.float_input("labels", _dims("l", rank))
    logits = b.float_input("logits", _dims("x", rank))
    # LogSoftmax is one fused kernel in ONNX Runtime (max, sum of exp, subtract).
    log_p = b.node("LogSoftmax", [logits], "log_p", axis=CLASS_AXIS)
    if "loss" in wanted:
        weighted = b.node("Mul", [labels, log_p], "weighted")
        neg_loss = b.node("ReduceSum", [weighted, "class_axes"], "neg_loss", keepdims=0)
        b.output("loss", b.node("Neg", [neg_loss], "loss_c"), _loss_dims(rank))
    if wanted & {"grad_logits", "grad_labels"}:
        grad_loss = b.float_input("grad_loss", _dims("g", rank))
        if "grad_logits" in wanted:
            # TensorFlow's fused kernel: softmax - labels, exact when labels do not sum to 1.
            softmax = b.node("Exp", [log_p], "softmax")
            diff = b.node("Sub", [softmax, labels], "softmax_minus_labels")
            b.output("grad_logits", b.node("Mul", [diff, grad_loss], "gx"), _dims("d", rank))
        if "grad_labels" in wanted:
            neg_grad = b.node("Neg", [grad_loss], "neg_grad_loss")
            b.output("grad_labels", b.node("Mul", [neg_grad, log_p], "gl"), _dims("d", rank))
    return b.model(f"softmax_xent_{dtype.name}_r{rank}")


def sparse_graph(dtype: DType, label_dtype: DType, outputs: Iterable[Output]) -> onnx.ModelProto:
    """Loss and/or grad_logits of sparse softmax cross entropy on ``[N, C]`` logits.

    ``labels`` are ``[N]`` class indices (checked to be in range before the run);
    ``grad_loss`` is ``[N]`` or ``[1]``.
    """
    wanted = frozenset(outputs)
    if not wanted or not wanted <= {"loss", "grad_logits"}:
        raise ValueError(f"sparse outputs are loss and grad_logits, not {sorted(wanted)}")
    b = _Builder(dtype)
    labels = b.index_input("labels", label_dtype, ["n"])
    logits = b.float_input("logits", ["n", "c"])
    log_p = b.node("LogSoftmax", [logits], "log_p", axis=1)
    index = b.node("Unsqueeze", [labels, "class_axes"], "index")
    if "loss" in wanted:
        picked = b.node("GatherElements", [log_p, index], "picked", axis=1)
        neg_loss = b.node("Squeeze", [picked, "class_axes"], "neg_loss")
        b.output("loss", b.node("Neg", [neg_loss], "loss_c"), ["n"])
    if "grad_logits" in wanted:
        grad_loss = b.float_input("grad_loss", ["g"])
        softmax = b.node("Exp", [log_p], "softmax")
        # softmax - onehot(labels): subtract 1 at each row's label, in place of a one-hot.
        at_label = b.node("GatherElements", [softmax, index], "at_label", axis=1)
        one = b.node("CastLike", ["one", at_label], "one_c")
        b.initializers.append(helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]))
        minus_one = b.node("Sub", [at_label, one], "at_label_minus_one")
        diff = b.node(
            "ScatterElements", [softmax, index, minus_one], "softmax_minus_onehot", axis=1
        )
        scale = b.node("Unsqueeze", [grad_loss, "class_axes"], "grad_loss_col")
        b.output("grad_logits", b.node("Mul", [diff, scale], "gx"), ["n", "c"])
    return b.model(f"sparse_softmax_xent_{dtype.name}_{label_dtype.name}")
