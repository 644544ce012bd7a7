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
        opsets = [helper.make_opsetid("", OPSET)]
        # The oldest IR version that carries the opset, not onnx's newest: onnx 1.23 writes
        # IR 14 by default, which onnxruntime-gpu 1.31 (max IR 13) refuses to load.
        ir_version = helper.find_min_ir_version_for(opsets)
        model = helper.make_model(graph, opset_imports=opsets, ir_version=ir_version)
        onnx.checker.check_model(model, full_check=True)
        return model


def _loss_dims(rank: int) -> list[str]:
    return [d for i, d in enumerate(_dims("d", rank)) if i != CLASS_AXIS]


def _class_dims(rank: int) -> list[str]:
    """A per-class input: [1, C] or [1, C, 1] (or all 1s: the same for every class)."""
    return ["o", "c", *(["i"] if rank == 3 else [])]


class _LogSoftmax:
    """log softmax along the class axis, built as it is used; `chunked`: with float32 sums
    that do not drift with the class count.

    ONNX Runtime's LogSoftmax adds the row's exponentials up a few lanes at a time, so
    that its float32 error grows with C (4e-6 relative on the loss at 128k classes,
    against TensorFlow's 1.6e-7). Chunked, the row is viewed as ``k`` chunks of ``q``
    classes (input ``chunks``: the reshape, [0, k, q] or [0, k, q, -1]); each chunk's
    LogSoftmax sums only q terms, the chunks' log-sum-exps are combined in float64, and
    each chunk's offset to the row's is added back: to every class (`full`), or only at
    the labels (`at`, the sparse loss: no pass over the row). bench/options.py measures it.
    """

    def __init__(self, b: _Builder, logits: str, chunked: bool) -> None:
        self.b, self.logits, self.chunked = b, logits, chunked
        self._full: str | None = None
        if not chunked:
            if b.dtype is not DType.float64:
                # One fused kernel in ONNX Runtime (max, sum of exp, subtract).
                self._full = b.node("LogSoftmax", [logits], "log_p", axis=CLASS_AXIS)
                return
            # float64: composed of ops that keep float64 on every provider. The CUDA
            # provider's LogSoftmax is accurate to ~1e-6 on short rows (10 classes; ORT
            # 1.31.1, H100); the CPU one took 1.3-1.8x the time of these (1024x1000 and
            # 8192x4096, loss and loss + grads, 2 threads), and left a row with a +inf
            # logit at -inf where TensorFlow (and this) makes it NaN.
            top = b.node("ReduceMax", [logits, "class_axes"], "logit_max", keepdims=1)
            shifted = b.node("Sub", [logits, top], "shifted")
            total = b.node("ReduceSum", [b.node("Exp", [shifted], "exp_shifted"), "class_axes"],
                           "exp_sum", keepdims=1)  # fmt: skip
            self._full = b.node("Sub", [shifted, b.node("Log", [total], "lse")], "log_p")
            return
        b.inputs.append(helper.make_tensor_value_info("chunks", TensorProto.INT64, ["r"]))
        b.initializers.append(
            helper.make_tensor("chunk_axis", TensorProto.INT64, [1], [CLASS_AXIS + 1])
        )
        x = b.node("Reshape", [logits, "chunks"], "logits_chunked")
        self.within = b.node("LogSoftmax", [x], "log_p_within", axis=CLASS_AXIS + 1)
        # each chunk's log-sum-exp: any of its logits less its log-probability; the
        # largest's, whose log-probability is the smallest in size (the fewest rounding
        # errors: the first's would bring in |x_0 - max| ulps)
        x0 = b.node("ReduceMax", [x, "chunk_axis"], "logit_top", keepdims=1)
        p0 = b.node("ReduceMax", [self.within, "chunk_axis"], "log_p_top", keepdims=1)
        lse = b.node(
            "Cast", [b.node("Sub", [x0, p0], "chunk_lse")], "chunk_lse64", to=TensorProto.DOUBLE
        )
        total = b.node("ReduceLogSumExp", [lse, "class_axes"], "row_lse64", keepdims=1)
        offset = b.node("Sub", [lse, total], "offset64")
        self.offset = b.node("Cast", [offset], "offset", to=b.compute)  # [r, k, 1(, i)]

    def full(self) -> str:
        """log p of every class, in the logits' shape."""
        if self._full is None:
            b = self.b
            shifted = b.node("Add", [self.within, self.offset], "log_p_chunked")
            shape = b.node("Shape", [self.logits], "logits_shape")
            self._full = b.node("Reshape", [shifted, shape], "log_p")
        return self._full

    def at(self, index: str) -> str:
        """log p at `index` (class indices, the class axis kept as 1)."""
        b = self.b
        if not self.chunked or self._full is not None:
            return b.node("GatherElements", [self.full(), index], "picked", axis=CLASS_AXIS)
        shape = b.node("Shape", [self.logits], "logits_shape_at")
        within = b.node("Reshape", [self.within, shape], "log_p_within_flat")
        picked = b.node("GatherElements", [within, index], "picked_within", axis=CLASS_AXIS)
        size = b.node("Gather", ["chunks", "chunk_axis"], "chunk_size")
        chunk = b.node("Div", [index, size], "chunk_of_label")
        offsets = b.node("Squeeze", [self.offset, "chunk_axis"], "offsets")
        offset = b.node("GatherElements", [offsets, chunk], "picked_offset", axis=CLASS_AXIS)
        return b.node("Add", [picked, offset], "picked")


def _class_sum(b: _Builder, value: str, name: str, *, keepdims: int, chunked: bool) -> str:
    """The sum along the class axis of `value` (of the logits' shape); chunked: per chunk,
    then across the chunks in float64 (a whole-row float32 sum drifts with C, as above)."""
    if not chunked:
        return b.node("ReduceSum", [value, "class_axes"], name, keepdims=keepdims)
    parts = b.node("Reshape", [value, "chunks"], f"{name}_chunked")
    sums = b.node("ReduceSum", [parts, "chunk_axis"], f"{name}_chunks", keepdims=0)
    wide = b.node("Cast", [sums], f"{name}_chunks64", to=TensorProto.DOUBLE)
    total = b.node("ReduceSum", [wide, "class_axes"], f"{name}64", keepdims=keepdims)
    return b.node("Cast", [total], name, to=b.compute)


def soft_graph(
    dtype: DType,
    rank: int,
    outputs: Iterable[Output],
    *,
    weighted: bool = False,
    chunked: bool = False,
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
    log_p = _LogSoftmax(b, logits, chunked).full()
    target = labels
    if weighted:
        keep_w = b.compute_input("keep_w", _class_dims(rank))
        spread_w = b.compute_input("spread_w", _class_dims(rank))
        scaled = b.node("Mul", [labels, keep_w], "labels_keep_w")
        target = b.node("Add", [scaled, spread_w], "weighted_labels")
    if "loss" in wanted:
        weighted_log_p = b.node("Mul", [target, log_p], "weighted")
        neg_loss = _class_sum(b, weighted_log_p, "neg_loss", keepdims=0, chunked=chunked)
        b.output("loss", b.node("Neg", [neg_loss], "loss_c"), _loss_dims(rank))
    if wanted & {"grad_logits", "grad_labels"}:
        grad_loss = b.compute_input("grad_loss", _dims("g", rank))
        softmax = b.node("Exp", [log_p], "softmax") if "grad_logits" in wanted else None
        if softmax is not None:
            if weighted:
                mass = _class_sum(b, target, "target_mass", keepdims=1, chunked=chunked)
                softmax = b.node("Mul", [softmax, mass], "softmax_mass")
            # TensorFlow's fused kernel: softmax - labels, exact when labels do not sum to 1.
            diff = b.node("Sub", [softmax, target], "softmax_minus_labels")
            b.output("grad_logits", b.node("Mul", [diff, grad_loss], "gx"), _dims("d", rank))
        if "grad_labels" in wanted:
            neg_grad = b.node("Neg", [grad_loss], "neg_grad_loss")
            if weighted:
                neg_grad = b.node("Mul", [neg_grad, keep_w], "neg_grad_keep_w")
            b.output("grad_labels", b.node("Mul", [neg_grad, log_p], "gl"), _dims("d", rank))
    kind = ("weighted_" if weighted else "") + ("chunked_" if chunked else "")
    return b.model(f"softmax_xent_{kind}{dtype.name}_r{rank}")


def sparse_graph(
    dtype: DType,
    label_dtype: DType,
    outputs: Iterable[Output],
    *,
    rank: int = 2,
    smoothed: bool = False,
    chunked: bool = False,
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
    log_softmax = _LogSoftmax(b, logits, chunked)
    if "grad_logits" in wanted or smoothed:
        log_softmax.full()  # used whole: the offsets added once, to every class
    index = b.node("Unsqueeze", [labels, "class_axes"], "index")
    if smoothed:
        keep_w_y = b.node(
            "Unsqueeze", [b.compute_input("keep_w_y", per_example), "class_axes"], "keep_col"
        )
        spread_w = b.compute_input("spread_w", _class_dims(rank))
    if "loss" in wanted:
        picked = log_softmax.at(index)
        if smoothed:
            picked = b.node("Mul", [picked, keep_w_y], "picked_keep")
            spread = b.node("Mul", [log_softmax.full(), spread_w], "log_p_spread")
            total = _class_sum(b, spread, "spread_sum", keepdims=1, chunked=chunked)
            picked = b.node("Add", [picked, total], "picked_total")
        neg_loss = b.node("Squeeze", [picked, "class_axes"], "neg_loss")
        b.output("loss", b.node("Neg", [neg_loss], "loss_c"), per_example)
    if "grad_logits" in wanted:
        grad_loss = b.compute_input("grad_loss", ["g"] * (rank - 1))
        log_p = log_softmax.full()
        softmax = b.node("Exp", [log_p], "softmax")
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
    kind = ("smoothed_" if smoothed else "") + ("chunked_" if chunked else "")
    return b.model(f"sparse_softmax_xent_{kind}{dtype.name}_{label_dtype.name}_r{rank}")
