"""The engine: softmax cross entropy on numpy arrays, through ONNX Runtime sessions.

Knows arrays, shapes, providers and sessions; nothing of HTTP or wire formats.

Every call runs in blocks of the broadcast work, whatever the broadcast: the work is
viewed as ``[outer, C, inner]`` (``C`` the class dimension), and each ONNX Runtime run
gets a block of whole rows, or of one row and a range of ``inner`` when a row alone is
too big. An input is materialised only one block at a time (and not at all when it is
already laid out: then blocks are views); the gradient of a broadcast input is summed
block by block into an array of the input's own shape. Peak memory is then inputs +
outputs + O(block), and `Engine.plan` says how much, from shapes and dtypes alone.

The evaluation options (README, "Evaluation options") keep to that: class weights and
label smoothing act along the class dimension inside their own graphs; what is per
example (sample weights, the ignore mask, a label's class weight for the sparse op, the
scale of a reduced loss's gradient) is O(N) numpy in float64 around the runs, fed to
the graphs as grad_loss, and the reductions are float64 sums of the per-example losses.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeVar

import numpy as np

from service.engine import graphs, sessions
from service.engine.types import (
    DEFAULT_OPTIONS,
    FLOAT_DTYPES,
    INDEX_DTYPES,
    MAX_RANK,
    REDUCTIONS,
    SOFT_OP,
    SOFT_OUTPUTS,
    SPARSE_OP,
    SPARSE_OUTPUTS,
    DType,
    Options,
    Output,
)
from service.errors import (
    InvalidArgument,
    InvalidDim,
    LabelOutOfRange,
    ShapeMismatch,
    TooLarge,
    UnsupportedDtype,
)

log = logging.getLogger(__name__)

Shape = tuple[int, ...]

# The size of one block-sized buffer (an input block, an intermediate, an output block)
# at the graph's compute itemsize. 4 MiB measured best for 8192x4096 float32 (1 MiB: 1.5x
# the time, 64 MiB: 1.3x; bench/engine_memory.py). Read at each call, so that tests can
# make it tiny and exercise the blocks on small arrays.
BLOCK_BYTES = 4 << 20
# Up to this many elements a call without options or broadcast is one plain run, ONNX
# Runtime allocating its outputs (_Direct); above, outputs are bound in place, no copy.
SMALL_ELEMENTS = 1 << 14
# How many validated calls an engine remembers (Engine._checked).
CHECKED = 1024
# What `Engine.plan` counts per block, in block-sized buffers. ONNX Runtime holds at most
# one per graph node (each node's output is at most a block) and its kernels' scratch
# (LogSoftmax along a dim other than the last transposes its input and its output: two),
# and its CPU arena grows by doubling regions: twice that. numpy holds at most this many
# around a run: two input blocks and their dtype copies, an output block per output, and
# the temporaries of summing a broadcast input's gradient back (class, group, box sums).
KERNEL_SCRATCH = 2
ARENA_FACTOR = 2
NUMPY_BLOCKS = 12


@dataclass(frozen=True)
class LossResult:
    """What one call computed: only the outputs that were asked for are set."""

    dtype: DType
    loss: np.ndarray | None = None
    grad_logits: np.ndarray | None = None
    grad_labels: np.ndarray | None = None
    weight_sum: np.ndarray | None = None  # float64, 0-d: the denominator of a reduction

    def items(self) -> list[tuple[Output, np.ndarray]]:
        """The computed outputs, in the order loss, grad_logits, grad_labels, weight_sum."""
        return [(n, a) for n in SOFT_OUTPUTS if (a := getattr(self, n)) is not None]


@dataclass(frozen=True)
class Plan:
    """What one call costs, known from shapes and dtypes before anything is allocated."""

    elements: int  # elements of labels and logits broadcast together (the work)
    output_bytes: int  # bytes of the outputs asked for, as returned to the caller
    # upper bound of what one call holds beyond its inputs and outputs: blocks, the
    # intermediates ONNX Runtime allocates per block, accumulators, dtype copies
    work_bytes: int


# Enum properties cost a lookup each: these tables are read on every call.
_DTYPES = {d.numpy: d for d in DType}
_LOSS_ONLY = frozenset({"loss"})
_NUMPY = {d: d.numpy for d in DType}
_HALF = {d: d.value.half for d in DType}
# Bytes per element of ONNX Runtime's intermediates: half types are computed in float32.
_ORT_ITEMSIZE = {d: 4 if d.value.half else d.numpy.itemsize for d in DType}
# The dtype of the inputs that the engine prepares (grad_loss, weights): the compute type.
_ORT_NUMPY = {d: np.dtype(np.float32) if d.value.half else d.numpy for d in DType}
# What the graphs compute; weight_sum is the engine's own (numpy, per example).
_SOFT_GRAPH_OUTPUTS: tuple[Output, ...] = ("loss", "grad_logits", "grad_labels")
_SPARSE_GRAPH_OUTPUTS: tuple[Output, ...] = ("loss", "grad_logits")


def _subsets(names: Sequence[Output]) -> list[frozenset[Output]]:
    return [
        frozenset(c) for k in range(1, len(names) + 1) for c in itertools.combinations(names, k)
    ]


def _shape_text(shape: Shape) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


# --- validation, from shapes and dtypes only (shared by the calls and by `plan`) ----------

Spec = tuple[Shape, np.dtype[np.generic]]  # an array's shape and dtype


def _check_outputs(outputs: Sequence[str], allowed: tuple[Output, ...]) -> frozenset[Output]:
    # Requests name the same few lists over and over: remember the answers (not errors).
    try:
        return _WANTED[allowed, tuple(outputs)]
    except (KeyError, TypeError):  # TypeError: something unhashable in the list
        pass
    wanted = _wanted(outputs, allowed)
    if len(_WANTED) < 256:
        _WANTED[allowed, tuple(outputs)] = wanted
    return wanted


_WANTED: dict[tuple[tuple[Output, ...], tuple[str, ...]], frozenset[Output]] = {}


def _wanted(outputs: Sequence[str], allowed: tuple[Output, ...]) -> frozenset[Output]:
    unknown = [o for o in outputs if o not in allowed]
    if unknown or not outputs:
        raise InvalidArgument(
            f"outputs must be a non-empty list drawn from {list(allowed)}; got {list(outputs)}"
        )
    return frozenset(o for o in allowed if o in outputs)


def _float_dtype(name: str, dtype: np.dtype[np.generic]) -> DType:
    found = _DTYPES.get(dtype)
    if found is None or found not in FLOAT_DTYPES:
        raise UnsupportedDtype(
            f"{name} has dtype {dtype}; supported: {[d.name for d in FLOAT_DTYPES]}"
        )
    return found


def _check_size(what: str, shape: Shape, max_elements: int) -> None:
    """Refuse, before any output is allocated, work past the configured bounds."""
    if len(shape) > MAX_RANK:
        raise TooLarge(f"{what} to rank {len(shape)}; at most {MAX_RANK} is supported")
    if math.prod(shape) > max_elements:
        raise TooLarge(
            f"{what} to shape {_shape_text(shape)}, {math.prod(shape)} elements; the limit "
            f"is {max_elements} (SCE_MAX_ELEMENTS)"
        )


def _padded(shape: Shape, rank: int) -> Shape:
    """`shape` with leading 1s to `rank` (how it broadcasts)."""
    return (1,) * (rank - len(shape)) + shape


@dataclass(frozen=True, slots=True)
class _Extras:
    """A call's validated evaluation options: what to weigh, reduce and smooth."""

    reduction: str
    eps: float
    ignore_index: int | None
    class_weights: bool
    sample_weights: Shape | None

    @property
    def active(self) -> bool:
        """Anything beyond TensorFlow's op (the calls take their plain path otherwise)."""
        return (
            self.reduction != "none"
            or self.eps != 0.0
            or self.ignore_index is not None
            or self.class_weights
            or self.sample_weights is not None
        )


def _class_dim(dim: object, rank: int) -> int:
    """`dim` as an index in [0, rank): an int (not a bool) in [-rank, rank)."""
    if type(dim) is not int:
        raise InvalidDim(f"dim must be an integer; got {_clip(dim)}")
    if not -rank <= dim < rank:
        raise InvalidDim(f"dim {dim} is out of range for rank {rank} (use {-rank}..{rank - 1})")
    return dim % rank


def _clip(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_extras(
    sparse: bool,
    wanted: frozenset[Output],
    dtype: DType,
    loss_shape: Shape,
    classes: int,
    grad_loss: Spec | None,
    class_weights: Spec | None,
    sample_weights: Spec | None,
    options: Options,
) -> _Extras:
    """The options' checks that shapes, dtypes and scalars decide; grad_loss's too, whose
    shape the reduction decides. Weight values are checked by the call."""
    reduction, eps, ignore = options.reduction, options.label_smoothing, options.ignore_index
    if reduction not in REDUCTIONS:
        raise InvalidArgument(
            f"reduction must be one of {', '.join(REDUCTIONS)}; got {_clip(reduction)}"
        )
    if type(eps) not in (int, float) or not math.isfinite(eps) or not 0 <= eps <= 1:
        raise InvalidArgument(f"label_smoothing must be a number in [0, 1]; got {_clip(eps)}")
    if ignore is not None:
        if not sparse:
            raise InvalidArgument(
                "ignore_index applies to integer class labels (the sparse op); with "
                "probability labels, give a position no weight with sample_weights"
            )
        if type(ignore) is not int:
            raise InvalidArgument(f"ignore_index must be an integer; got {_clip(ignore)}")
    reduced = reduction != "none"
    if "weight_sum" in wanted and not reduced:
        raise InvalidArgument(
            "weight_sum is the denominator of a reduction: ask for reduction sum or mean"
        )
    if grad_loss is not None:
        if not wanted & {"grad_logits", "grad_labels"}:
            raise InvalidArgument("grad_loss is only used when a gradient output is asked for")
        if _DTYPES.get(grad_loss[1]) is not dtype:
            raise UnsupportedDtype(f"grad_loss must have dtype {dtype.name}")
        if reduced and grad_loss[0] != ():
            raise ShapeMismatch(
                f"grad_loss must be a scalar (shape []) with reduction {reduction}, as the "
                f"loss is; got {_shape_text(grad_loss[0])}"
            )
        if not reduced and grad_loss[0] != loss_shape:
            raise ShapeMismatch(
                f"grad_loss must have the loss's shape {_shape_text(loss_shape)}; "
                f"got {_shape_text(grad_loss[0])}"
            )
    if class_weights is not None:
        _float_dtype("class_weights", class_weights[1])
        if class_weights[0] != (classes,):
            raise ShapeMismatch(
                f"class_weights must have shape [{classes}], one weight per class; got "
                f"{_shape_text(class_weights[0])}"
            )
    if sample_weights is not None:
        _float_dtype("sample_weights", sample_weights[1])
        try:
            fits = np.broadcast_shapes(sample_weights[0], loss_shape) == loss_shape
        except ValueError:
            fits = False
        if not fits:
            raise ShapeMismatch(
                f"sample_weights must broadcast to the per-example loss's shape "
                f"{_shape_text(loss_shape)}; got {_shape_text(sample_weights[0])}"
            )
    return _Extras(
        reduction,
        float(eps),
        ignore,
        class_weights is not None,
        None if sample_weights is None else sample_weights[0],
    )


FULL, ONE, MIXED = 0, 1, 2  # how an input covers one group of dims of the broadcast shape


def _kind(own: Shape, full: Shape) -> int:
    if own == full:
        return FULL
    if all(d == 1 for d in own):
        return ONE
    return MIXED


# not frozen: that makes every call slower, and only `direct` and `plan` change, once
@dataclass(slots=True, kw_only=True)
class _Work:
    """What a validated call of either op holds: what to compute, on which geometry, in
    blocks of what size, with which options; and what the engine prepares for it once."""

    wanted: frozenset[Output]
    dtype: DType
    compute: DType  # float32 for half types summed back or rescaled after the run
    labels: Shape
    logits: Shape
    outer: int  # the work is [outer, classes, inner]
    classes: int
    inner: int
    rows_layout: bool  # the class dimension is the last one: the rank-2 graphs
    block_rows: int
    block_inner: int
    extras: _Extras
    # The small call's one run (_Direct), made on the first call; False where there is none
    direct: object = None
    plan: Plan | None = None  # Engine.plan's answer, made on the first plan

    @property
    def rank(self) -> int:
        """The graphs' rank: [outer, classes] or [outer, classes, inner]."""
        return 2 if self.rows_layout else 3

    @property
    def layout(self) -> Shape:
        """The logits' shape in the graph."""
        if self.rows_layout:
            return (self.outer, self.classes)
        return (self.outer, self.classes, self.inner)

    @property
    def example_layout(self) -> Shape:
        """A per-example tensor's shape in the graph (the layout without its classes)."""
        return (self.outer,) if self.rows_layout else (self.outer, self.inner)

    def class_layout(self, size: int) -> Shape:
        """A per-class tensor's shape in the graph: `size` (C, or 1) along the classes."""
        return (1, size) if self.rows_layout else (1, size, 1)


@dataclass(slots=True, kw_only=True)
class _Soft(_Work):
    """A validated soft call."""

    numpy: np.dtype[np.generic]  # dtype's and compute's, looked up once
    numpy_compute: np.dtype[np.generic]
    full: Shape
    dim: int
    loss_shape: Shape


def _check_soft(
    labels: Spec,
    logits: Spec,
    grad_loss: Spec | None,
    outputs: Sequence[str],
    dim: int,
    max_elements: int,
    class_weights: Spec | None = None,
    sample_weights: Spec | None = None,
    options: Options = DEFAULT_OPTIONS,
) -> _Soft:
    """Every check of a soft call that shapes and dtypes decide, in the order the call makes."""
    wanted = _check_outputs(outputs, SOFT_OUTPUTS)
    dtype = _float_dtype("logits", logits[1])
    if _DTYPES.get(labels[1]) is not dtype:
        raise UnsupportedDtype(
            f"labels and logits must share one dtype; got labels {labels[1]}, logits {logits[1]}"
        )
    for name, (shape, _) in (("labels", labels), ("logits", logits)):
        if not shape:
            raise ShapeMismatch(f"{name} must have rank >= 1; got a scalar")
    try:
        full: Shape = (
            logits[0] if labels[0] == logits[0] else np.broadcast_shapes(labels[0], logits[0])
        )
    except ValueError:
        raise ShapeMismatch(
            f"labels shape {_shape_text(labels[0])} and logits shape "
            f"{_shape_text(logits[0])} do not broadcast against each other"
        ) from None
    _check_size("labels and logits broadcast", full, max_elements)
    rank = len(full)
    dim = _class_dim(dim, rank)
    if full[dim] == 0:
        raise InvalidArgument(
            f"the class dimension (dim {dim}) must have at least one class; "
            f"shape is {_shape_text(full)}"
        )
    loss_shape = full[:dim] + full[dim + 1 :]
    extras = _check_extras(
        False,
        wanted,
        dtype,
        loss_shape,
        full[dim],
        grad_loss,
        class_weights,
        sample_weights,
        options,
    )
    # A half-precision gradient that is summed back is summed in float32, then cast once;
    # a half-precision loss that is weighted or reduced after the run is too.
    summed = ("grad_logits" in wanted and _padded(logits[0], rank) != full) or (
        "grad_labels" in wanted and _padded(labels[0], rank) != full
    )
    compute = DType.float32 if _HALF[dtype] and (summed or _rescaled(extras, wanted)) else dtype
    outer, classes, inner = math.prod(full[:dim]), full[dim], math.prod(full[dim + 1 :])
    block_rows, block_inner = _block_geometry(outer, classes, inner, _ORT_ITEMSIZE[dtype])
    return _Soft(
        wanted=wanted,
        dtype=dtype,
        compute=compute,
        numpy=_NUMPY[dtype],
        numpy_compute=_NUMPY[compute],
        full=full,
        dim=dim,
        loss_shape=loss_shape,
        labels=labels[0],
        logits=logits[0],
        outer=outer,
        classes=classes,
        inner=inner,
        rows_layout=dim == rank - 1,
        block_rows=block_rows,
        block_inner=block_inner,
        extras=extras,
    )


@dataclass(slots=True, kw_only=True)
class _Sparse(_Work):
    """A validated sparse call."""

    label_dtype: DType


def _check_sparse(
    labels: Spec,
    logits: Spec,
    grad_loss: Spec | None,
    outputs: Sequence[str],
    dim: int,
    max_elements: int,
    class_weights: Spec | None = None,
    sample_weights: Spec | None = None,
    options: Options = DEFAULT_OPTIONS,
) -> _Sparse:
    """Every check of a sparse call that shapes and dtypes decide (not the label range)."""
    wanted = _check_outputs(outputs, SPARSE_OUTPUTS)
    dtype = _float_dtype("logits", logits[1])
    label_dtype = _DTYPES.get(labels[1])
    if label_dtype is None or label_dtype not in INDEX_DTYPES:
        raise UnsupportedDtype(f"sparse labels must be int32 or int64; got {labels[1]}")
    shape = logits[0]
    if not shape:
        raise ShapeMismatch("logits must have rank >= 1; got a scalar")
    rank = len(shape)
    dim = _class_dim(dim, rank)
    loss_shape = shape[:dim] + shape[dim + 1 :]
    if labels[0] != loss_shape:
        raise ShapeMismatch(
            f"sparse labels must have the logits' shape without its class dimension (dim "
            f"{dim}), {_shape_text(loss_shape)}; got {_shape_text(labels[0])}"
        )
    _check_size("logits", shape, max_elements)
    classes = shape[dim]
    if classes == 0:
        raise InvalidArgument(
            f"logits must have at least one class (dim {dim}); shape is {_shape_text(shape)}"
        )
    extras = _check_extras(
        True, wanted, dtype, loss_shape, classes, grad_loss, class_weights, sample_weights, options
    )
    outer, inner = math.prod(shape[:dim]), math.prod(shape[dim + 1 :])
    block_rows, block_inner = _block_geometry(outer, classes, inner, _ORT_ITEMSIZE[dtype])
    return _Sparse(
        wanted=wanted,
        dtype=dtype,
        compute=DType.float32 if _HALF[dtype] and _rescaled(extras, wanted) else dtype,
        label_dtype=label_dtype,
        labels=labels[0],
        logits=shape,
        outer=outer,
        classes=classes,
        inner=inner,
        rows_layout=dim == rank - 1,
        block_rows=block_rows,
        block_inner=block_inner,
        extras=extras,
    )


def _spec(array: np.ndarray | None) -> Spec | None:
    return None if array is None else (array.shape, array.dtype)


# --- blocks ------------------------------------------------------------------------------


def _block_geometry(outer: int, classes: int, inner: int, itemsize: int) -> tuple[int, int]:
    """Rows of `outer` and elements of `inner` per block, for [outer, classes, inner] work.

    Whole rows while a row fits in BLOCK_BYTES; else one row and a range of `inner`. The
    class dimension is never cut (the softmax needs all of it), so the smallest block is
    one column of `classes`.
    """
    target = max(1, BLOCK_BYTES // itemsize)
    row = classes * inner
    if row <= target:
        return max(1, min(outer, target // max(row, 1))), inner
    return 1, max(1, min(inner, target // classes))


@dataclass(frozen=True, slots=True)
class _Piece:
    """A run of a block along one group of dims (outer or inner) that is a box of the
    broadcast shape: `count` flat positions from `offset` in the block, shaped `box`.
    `own` indexes the input's own dims of the group (an int for each fixed leading dim);
    `reduce` are the axes of `box` along which the input is broadcast."""

    offset: int
    count: int
    box: Shape
    own: tuple[int | slice, ...]
    reduce: tuple[int, ...] = ()


def _pieces(own: Shape, full: Shape, start: int, stop: int) -> list[_Piece]:
    """Cut the flat range [start, stop) of `full` into boxes, at most two per dim: each is a
    fixed index of the leading dims, a range of one dim, and the whole of the dims after it.
    An input of shape `own` (each dim full's or 1) is then a broadcast view on each box."""
    tiles = [math.prod(full[k + 1 :]) for k in range(len(full))]
    pieces = []
    position = start
    while position < stop:
        # the outermost dim whose tile starts here and fits (the last dim's tile is 1)
        k = next(k for k, t in enumerate(tiles) if position % t == 0 and t <= stop - position)
        tile = tiles[k]
        low = position // tile % full[k]
        high = min(full[k], low + (stop - position) // tile)
        fixed = tuple(0 if own[d] == 1 else position // tiles[d] % full[d] for d in range(k))
        box = (high - low, *full[k + 1 :])
        index: tuple[int | slice, ...] = (*fixed, slice(0, 1) if own[k] == 1 else slice(low, high))
        index += (slice(None),) * (len(full) - k - 1)
        reduce = tuple(a for a, (o, f) in enumerate(zip(own[k:], box, strict=True)) if o < f)
        pieces.append(_Piece(position - start, (high - low) * tile, box, index, reduce))
        position += (high - low) * tile
    return pieces


class _Source:
    """One input of a soft call, cut into blocks of the [outer, classes, inner] work.

    Each of its groups of dims (those before the class dim, those after) is the broadcast
    shape's (FULL), all ones (ONE: passed as size 1, ONNX Runtime broadcasts it) or partly
    broadcast (MIXED: gathered into each block, box by box, and summed back the same way).
    Blocks come in the graph's rank: [rows, classes] when the class dim is the last one.
    """

    __slots__ = (
        "array",
        "broadcast",
        "classes",
        "flat",
        "full_inner",
        "full_outer",
        "inner",
        "outer",
        "own_inner",
        "own_outer",
        "view",
    )

    def __init__(self, array: np.ndarray, s: _Soft) -> None:
        full, dim = s.full, s.dim
        self.full_outer, self.full_inner = full[:dim], full[dim + 1 :]
        if array.shape == full:  # the common case: blocks are views
            self.broadcast, self.outer, self.inner, self.classes = False, FULL, FULL, s.classes
            self.own_outer, self.own_inner = self.full_outer, self.full_inner
            self.array = self.view = np.ascontiguousarray(array).reshape(
                s.outer, s.classes, s.inner
            )
        else:
            padded = _padded(array.shape, len(full))
            self.broadcast = padded != full  # its gradient is summed back to its own shape
            self.own_outer, self.own_inner = padded[:dim], padded[dim + 1 :]
            self.outer = _kind(self.own_outer, self.full_outer)
            self.inner = _kind(self.own_inner, self.full_inner)
            self.classes = padded[dim]
            self.array = np.ascontiguousarray(array).reshape(
                math.prod(self.own_outer), self.classes, math.prod(self.own_inner)
            )
            # The same, with the dims of a MIXED group kept: each box of it is then a view.
            self.view = self.array.reshape(
                *(self.own_outer if self.outer == MIXED else self.array.shape[:1]),
                self.classes,
                *(self.own_inner if self.inner == MIXED else self.array.shape[2:]),
            )
        # the rank-2 graphs' [rows, classes] (inner is 1 there); else unused
        self.flat = self.array.reshape(self.array.shape[:2]) if s.rows_layout else self.array

    def _pieces(self, outer: bool, part: slice) -> list[_Piece]:
        kind = self.outer if outer else self.inner
        if kind == FULL:
            return [_Piece(0, part.stop - part.start, (part.stop - part.start,), (part,))]
        if kind == ONE:
            return [_Piece(0, 1, (1,), (slice(0, 1),))]
        own, full = (
            (self.own_outer, self.full_outer) if outer else (self.own_inner, self.full_inner)
        )
        return _pieces(own, full, part.start, part.stop)

    def block(
        self,
        rows: slice,
        cols: slice | None,
        classes: int,
        dtype: np.dtype[np.generic],
    ) -> np.ndarray:
        """This input's part of a block, C-contiguous in `dtype`, with `classes` classes
        (logits broadcast along the class dimension are broadcast here, in the block);
        `cols` is None for the rank-2 graphs."""
        if self.outer != MIXED and self.inner != MIXED:
            r = rows if self.outer == FULL else slice(0, 1)
            if cols is None:
                a = self.flat[r]
            else:
                a = self.array[r, :, cols if self.inner == FULL else slice(0, 1)]
            if a.dtype != dtype:
                a = a.astype(dtype)
            if a.shape[1] != classes:
                out = np.empty((a.shape[0], classes, *a.shape[2:]), dtype)
                out[...] = a
                return out
            return np.ascontiguousarray(a)
        across = self._pieces(True, rows)
        along = self._pieces(False, slice(0, 1) if cols is None else cols)
        out = np.empty((sum(p.count for p in across), classes, sum(q.count for q in along)), dtype)
        for p in across:
            for q in along:
                source = self.view[(*p.own, slice(None), *q.own)]
                if source.dtype != dtype:  # cast before broadcasting: far faster
                    source = source.astype(dtype)
                part = out[p.offset : p.offset + p.count, :, q.offset : q.offset + q.count]
                part.reshape(*p.box, classes, *q.box)[...] = source
        return out if cols is not None else out.reshape(out.shape[:2])

    def accumulate(
        self, into: np.ndarray, grad: np.ndarray, rows: slice, cols: slice | None, classes: int
    ) -> None:
        """Add a block's gradient (broadcastable to the block) to `into`, of this input's
        shape as `self.view`: summed over the axes along which this input is broadcast."""
        if cols is None:
            grad, cols = grad[:, :, None], slice(0, 1)
        shape = (rows.stop - rows.start, classes, cols.stop - cols.start)
        g = grad if grad.shape == shape else np.broadcast_to(grad, shape)
        if self.classes != classes:
            g = g.sum(axis=1, keepdims=True)
        if self.outer == ONE and g.shape[0] != 1:
            g = g.sum(axis=0, keepdims=True)
        if self.inner == ONE and g.shape[2] != 1:
            g = g.sum(axis=2, keepdims=True)
        for p in self._pieces(True, rows):
            for q in self._pieces(False, cols):
                part = g[p.offset : p.offset + p.count, :, q.offset : q.offset + q.count]
                part = part.reshape(*p.box, self.classes, *q.box)
                axes = p.reduce + tuple(len(p.box) + 1 + a for a in q.reduce)
                if axes:
                    part = part.sum(axis=axes, keepdims=True)
                into[(*p.own, slice(None), *q.own)] += part


@cache
def _unit_grad_loss(dtype: np.dtype[np.generic], rank: int) -> np.ndarray:
    """The grad_loss of a call that gives none: ones, one shared read-only array."""
    ones = np.ones((1,) * rank, dtype)
    ones.flags.writeable = False
    return ones


GraphKey = tuple[object, ...]


class _Direct:
    """A small call's one run, prepared once for its shapes (Engine._direct_soft and
    _direct_sparse): ONNX Runtime allocates the outputs, and nothing is looked up again.
    A 32 x 10 loss took 20 us through the general path, 6 us of it ONNX Runtime's run;
    bench/engine.py's tiny rows measure this one."""

    __slots__ = ("_run", "constants", "dtype", "grad_shape", "grad_type", "layout", "names")

    def __init__(
        self,
        *,
        session: sessions.InferenceSession,
        names: Sequence[str],
        shapes: Sequence[Shape],
        layout: tuple[Shape, Shape],
        grad_shape: Shape | None,
        grad_type: np.dtype[np.generic],
        constants: dict[str, np.ndarray],
        dtype: DType,
    ) -> None:
        self._run = sessions.small_runner(session, names)
        self.names = list(zip(names, shapes, strict=True))
        self.layout = layout  # the labels' and the logits' shapes in the graph
        self.grad_shape = grad_shape
        self.grad_type = grad_type
        self.constants = constants
        self.dtype = dtype

    def __call__(
        self, labels: np.ndarray, logits: np.ndarray, grad_loss: np.ndarray | None
    ) -> LossResult:
        feeds = {
            "labels": np.ascontiguousarray(labels).reshape(self.layout[0]),
            "logits": np.ascontiguousarray(logits).reshape(self.layout[1]),
            **self.constants,
        }
        if self.grad_shape is not None:
            feeds["grad_loss"] = (
                _unit_grad_loss(self.grad_type, len(self.grad_shape))
                if grad_loss is None
                else np.ascontiguousarray(grad_loss, self.grad_type).reshape(self.grad_shape)
            )
        arrays = self._run(feeds)
        return LossResult(
            dtype=self.dtype,
            **{n: a.reshape(shape) for (n, shape), a in zip(self.names, arrays, strict=True)},
        )


_Call = TypeVar("_Call", bound=_Work)


class Engine:
    """Computes loss and gradients for any rank, dim, dtype and option, through ONNX
    Runtime sessions: TensorFlow's ops' built at start (on the CPU), the rest on first use."""

    def __init__(
        self,
        *,
        providers: str = "cpu",
        intra_op_threads: int | None = None,
        max_elements: int = 1 << 28,
        chunked_softmax: bool = False,
    ) -> None:
        self.max_elements = max_elements
        # A long class dimension summed in chunks (graphs._LogSoftmax); False: whole rows.
        self.chunked_softmax = chunked_softmax
        threads = intra_op_threads or sessions.usable_cpus()
        requested = sessions.PROVIDERS[providers]
        self._loadable = sessions.loadable_providers(providers)
        self._options = sessions.session_options(threads, providers=self._loadable)
        self._sessions: dict[GraphKey, sessions.InferenceSession] = {}
        # Nodes of each graph: a bound on the block-sized tensors one run can hold.
        self._nodes: dict[GraphKey, int] = {}
        self._building = threading.Lock()
        self._checks: dict[tuple[object, ...], object] = {}
        # Built now on the CPU: TensorFlow's two ops, every dtype, layout and output subset
        # (80 sessions, about 0.25 s and 40 MiB). The graphs of label smoothing and class
        # weights, and of the sparse op along a dim that is not the last, are built on
        # their first call (a few ms each): 80 more at start would double both, for
        # options most deployments use a few of. On CUDA every graph is built on first use
        # (~3 ms) but one, which shows whether the provider loads: each CUDA session holds
        # its own provider's device memory from its creation (9 MiB, 73 with cuBLAS's
        # default workspace: sessions.CUBLAS_WORKSPACE_CONFIG; docs/benchmarks.md (n)).
        for key in _start_keys(cuda=self._loadable[0] == "CUDAExecutionProvider"):
            self._build(key)
        in_use = {p for s in self._sessions.values() for p in s.get_providers()}
        self.providers: list[str] = [p for p in requested if p in in_use]
        self.intra_op_threads = threads
        if requested[0] not in in_use:
            log.warning(
                "%s was requested but is not available; running on %s",
                requested[0],
                ", ".join(self.providers),
            )

    def _build(self, key: GraphKey) -> sessions.InferenceSession:
        if key[0] == "soft":
            _, dtype, rank, outs, weighted, chunked = key
            model = graphs.soft_graph(
                dtype,  # type: ignore[arg-type]
                rank,  # type: ignore[arg-type]
                outs,  # type: ignore[arg-type]
                weighted=weighted,  # type: ignore[arg-type]
                chunked=chunked,  # type: ignore[arg-type]
            )
        else:
            _, dtype, label_dtype, rank, outs, smoothed, chunked = key
            model = graphs.sparse_graph(
                dtype,  # type: ignore[arg-type]
                label_dtype,  # type: ignore[arg-type]
                outs,  # type: ignore[arg-type]
                rank=rank,  # type: ignore[arg-type]
                smoothed=smoothed,  # type: ignore[arg-type]
                chunked=chunked,  # type: ignore[arg-type]
            )
        session = sessions.create_session(model, providers=self._loadable, options=self._options)
        self._nodes[key] = len(model.graph.node)
        self._sessions[key] = session
        return session

    def _session(self, key: GraphKey) -> sessions.InferenceSession:
        session = self._sessions.get(key)
        if session is None:
            with self._building:  # calls run in a thread pool: build each graph once
                session = self._sessions.get(key) or self._build(key)
        return session

    # --- planning ----------------------------------------------------------------------

    def plan(
        self,
        op: str,
        *,
        labels: tuple[Shape, DType],
        logits: tuple[Shape, DType],
        grad_loss: tuple[Shape, DType] | None,
        outputs: Sequence[str],
        dim: int = -1,
        class_weights: tuple[Shape, DType] | None = None,
        sample_weights: tuple[Shape, DType] | None = None,
        options: Options = DEFAULT_OPTIONS,
    ) -> Plan:
        """The cost of a call, from shapes and dtypes alone, before anything is allocated.

        Raises what the call would raise for these shapes, dtypes and options (the sparse
        label range and the weights' values need values, and stay the call's). Inputs are
        taken to be C-contiguous, as the codecs make them: a strided input costs a copy
        of itself on top of `work_bytes`.
        """
        y, x, g, cw, sw = (
            None if spec is None else (tuple(spec[0]), spec[1].numpy)
            for spec in (labels, logits, grad_loss, class_weights, sample_weights)
        )
        assert y is not None and x is not None
        if op == SOFT_OP:
            soft = self._checked(
                _check_soft, (y, x, g, outputs, dim, self.max_elements, cw, sw, options)
            )
            if soft.plan is None:
                soft.plan = self._soft_plan(soft)
            return soft.plan
        if op == SPARSE_OP:
            sparse = self._checked(
                _check_sparse, (y, x, g, outputs, dim, self.max_elements, cw, sw, options)
            )
            if sparse.plan is None:
                sparse.plan = self._sparse_plan(sparse)
            return sparse.plan
        raise ValueError(f"unknown op {op!r}; expected {SOFT_OP!r} or {SPARSE_OP!r}")

    @staticmethod
    def _output_bytes(
        wanted: frozenset[Output], extras: _Extras, shapes: dict[str, Shape], itemsize: int
    ) -> int:
        reduced = extras.reduction != "none"
        total = 0
        for name in wanted:
            if name == "weight_sum":
                total += 8
            elif name == "loss" and reduced:
                total += itemsize
            else:
                total += math.prod(shapes[name]) * itemsize
        return total

    def _soft_plan(self, s: _Soft) -> Plan:
        itemsize = s.dtype.numpy.itemsize
        shapes = {"loss": s.loss_shape, "grad_logits": s.logits, "grad_labels": s.labels}
        output_bytes = self._output_bytes(s.wanted, s.extras, shapes, itemsize)
        elements = math.prod(s.full)
        examples = math.prod(s.loss_shape)
        outs = s.wanted - _WEIGHT_SUM
        if examples == 0 or not outs:
            return Plan(elements, output_bytes, _EXTRAS_BYTES * examples)
        block = s.block_rows * s.classes * s.block_inner
        ort = _ORT_ITEMSIZE[s.dtype]
        nodes = self._node_count(self._graph(s)[0])
        work = (ARENA_FACTOR * (nodes + KERNEL_SCRATCH) + NUMPY_BLOCKS) * block * ort
        if s.compute is not s.dtype:  # half gradients summed back: float32 accumulators
            for name, own in (("grad_logits", s.logits), ("grad_labels", s.labels)):
                if name in s.wanted and _padded(own, len(s.full)) != s.full:
                    work += math.prod(own) * s.compute.numpy.itemsize
        if s.extras.active:
            work += _EXTRAS_BYTES * examples
        return Plan(elements=elements, output_bytes=output_bytes, work_bytes=work)

    def _sparse_plan(self, s: _Sparse) -> Plan:
        itemsize = s.dtype.numpy.itemsize
        shapes = {"loss": s.labels, "grad_logits": s.logits}
        output_bytes = self._output_bytes(s.wanted, s.extras, shapes, itemsize)
        elements = math.prod(s.logits)
        examples = math.prod(s.labels)
        outs = s.wanted - _WEIGHT_SUM
        if examples == 0 or not outs:
            return Plan(elements, output_bytes, _EXTRAS_BYTES * examples)
        nodes = self._node_count(self._graph(s)[0])
        # a block of logits, or of int64 label indices where there is one class
        rows = s.block_rows * s.block_inner
        block = max(rows * s.classes * _ORT_ITEMSIZE[s.dtype], rows * 8)
        work = (ARENA_FACTOR * (nodes + KERNEL_SCRATCH) + 2) * block  # + a strided block's copy
        if s.extras.active:
            work += _EXTRAS_BYTES * examples
        return Plan(elements=elements, output_bytes=output_bytes, work_bytes=work)

    def _graph(self, s: _Work) -> tuple[GraphKey, np.ndarray | None]:
        """The graph a call runs, and its `chunks` input (None: whole rows): the options'
        variant where they need one (class weights or smoothing for the soft op,
        smoothing for the sparse op), chunked class sums where they are on and apply."""
        chunks = _chunks(s.compute, s.classes, s.rows_layout) if self.chunked_softmax else None
        outs = s.wanted - _WEIGHT_SUM
        if isinstance(s, _Sparse):
            smoothed = s.extras.eps != 0.0
            key: GraphKey = (
                "sparse",
                s.compute,
                s.label_dtype,
                s.rank,
                outs,
                smoothed,
                chunks is not None,
            )
        else:
            key = ("soft", s.compute, s.rank, outs, _weighted(s.extras), chunks is not None)
        return key, chunks

    def _direct_soft(self, s: _Soft) -> _Direct | bool:
        """The one run of a small soft call without options or broadcast, else False."""
        elements = s.outer * s.classes * s.inner
        if (
            s.labels != s.logits
            or s.compute is not s.dtype
            or s.dtype is DType.bfloat16  # ORT's plain run takes no bfloat16
            or not 0 < elements <= SMALL_ELEMENTS
        ):
            return False
        key, chunks = self._graph(s)
        shapes = {"loss": s.loss_shape, "grad_logits": s.full, "grad_labels": s.full}
        names = [n for n in _SOFT_GRAPH_OUTPUTS if n in s.wanted]
        grads = s.wanted - _LOSS_ONLY
        return _Direct(
            session=self._session(key),
            names=names,
            shapes=[shapes[n] for n in names],
            layout=(s.layout, s.layout),
            grad_shape=(s.outer, 1, s.inner)[: s.rank] if grads else None,
            grad_type=_ORT_NUMPY[s.dtype],
            constants={} if chunks is None else {"chunks": chunks},
            dtype=s.dtype,
        )

    def _direct_sparse(self, s: _Sparse) -> _Direct | bool:
        """The one run of a small sparse call without options, else False."""
        elements = s.outer * s.classes * s.inner
        if s.dtype is DType.bfloat16 or not 0 < elements <= SMALL_ELEMENTS:
            return False
        key, chunks = self._graph(s)
        names = [n for n in _SPARSE_GRAPH_OUTPUTS if n in s.wanted]
        shapes = {"loss": s.labels, "grad_logits": s.logits}
        return _Direct(
            session=self._session(key),
            names=names,
            shapes=[shapes[n] for n in names],
            layout=(s.example_layout, s.layout),
            grad_shape=s.example_layout if "grad_logits" in s.wanted else None,
            grad_type=_ORT_NUMPY[s.dtype],
            constants={} if chunks is None else {"chunks": chunks},
            dtype=s.dtype,
        )

    def _checked(self, check: Callable[..., _Call], args: tuple[Any, ...]) -> _Call:
        """`check(*args)`, remembered: an evaluation job sends the same shapes, dtypes and
        options over and over, and the checks cost a small call a fifth of its time.
        Only successes are kept (an error is raised again each time), at most CHECKED."""
        # args: labels, logits, grad_loss, outputs, dim, max_elements, weights, options
        dim, options = args[4], args[8]
        try:
            # with the scalars' types: True == 1 and 1.0 == 1, but dim=True is refused
            kinds = (type(dim), type(options.label_smoothing), type(options.ignore_index))
            key = (check, *args[:3], tuple(args[3]), *args[4:], *kinds)
            found = self._checks.get(key)
        except TypeError:  # something unhashable in the outputs or options: check it
            return check(*args)
        if found is None:
            found = check(*args)
            if len(self._checks) < CHECKED:
                self._checks[key] = found
        return found  # type: ignore[return-value]

    def _node_count(self, key: GraphKey) -> int:
        self._session(key)
        return self._nodes[key]

    # --- the soft op -------------------------------------------------------------------

    def softmax_cross_entropy(
        self,
        *,
        labels: np.ndarray,
        logits: np.ndarray,
        dim: int = -1,
        grad_loss: np.ndarray | None = None,
        outputs: Sequence[str] = ("loss",),
        class_weights: np.ndarray | None = None,
        sample_weights: np.ndarray | None = None,
        options: Options = DEFAULT_OPTIONS,
    ) -> LossResult:
        """tf.nn.softmax_cross_entropy_with_logits_v2 and, if asked, its gradients; with
        class weights, sample weights, label smoothing and a reduction if asked (README,
        "Evaluation options", has the formulas)."""
        args = (
            (labels.shape, labels.dtype),
            (logits.shape, logits.dtype),
            _spec(grad_loss),
            outputs,
            dim,
            self.max_elements,
            _spec(class_weights),
            _spec(sample_weights),
            options,
        )
        s = self._checked(_check_soft, args)
        x = s.extras
        if not x.active:
            if s.direct is None:
                s.direct = self._direct_soft(s)
            if s.direct:
                return s.direct(labels, logits, grad_loss)  # type: ignore[operator, no-any-return]
            if math.prod(s.loss_shape) == 0:
                return _empty(s.dtype, s.wanted, s.loss_shape, labels.shape, logits.shape)
            plain = self._soft(s, labels, logits, grad_loss, {})
            return LossResult(
                dtype=s.dtype, **{n: a.astype(s.numpy, copy=False) for n, a in plain.items()}
            )
        weights = _weight_values("class_weights", class_weights)
        scale = _weight_values("sample_weights", sample_weights)
        if scale is not None:
            scale = np.broadcast_to(scale, s.loss_shape)
        total = float(scale.sum()) if scale is not None else float(math.prod(s.loss_shape))
        constants: dict[str, np.ndarray] = {}
        if _weighted(x):
            # the labels the loss sees, times the class weights: y keep_w + spread_w
            constants["keep_w"] = _per_class(s, 1.0 - x.eps, weights)
            constants["spread_w"] = _per_class(s, x.eps / s.classes, weights)
        arrays: dict[str, np.ndarray] = {}
        if math.prod(s.loss_shape) == 0:
            arrays = _empty_arrays(s.dtype, s.wanted, s.loss_shape, labels.shape, logits.shape)
        elif s.wanted - _WEIGHT_SUM:
            grad_scale = _grad_scale(x, grad_loss, scale, total, _ORT_NUMPY[s.dtype])
            arrays = self._soft(s, labels, logits, grad_scale, constants)
        return _finish(s.dtype, s.wanted, x, arrays, scale, total, None)

    def _soft(
        self,
        s: _Soft,
        labels: np.ndarray,
        logits: np.ndarray,
        grad_loss: np.ndarray | None,
        constants: dict[str, np.ndarray],
    ) -> dict[str, np.ndarray]:
        """The graphs' outputs asked for, in their inputs' shapes (the loss in the compute
        type). `grad_loss`: the loss's shape, or 0-d (the same for every example), in any
        float dtype; `constants`: the weighted graph's per-class inputs."""
        compute, dtype, classes, wanted = s.numpy_compute, s.numpy, s.classes, s.wanted
        outs = wanted - _WEIGHT_SUM
        grad_type = _ORT_NUMPY[s.dtype]
        rows_layout = s.rows_layout
        key, chunks = self._graph(s)
        session = self._session(key)
        if chunks is not None:
            constants = {**constants, "chunks": chunks}
        layout = s.layout
        per_example = grad_loss is not None and grad_loss.ndim > 0
        if grad_loss is None:
            gl = _unit_grad_loss(grad_type, len(layout))
        elif per_example:
            gl = grad_loss.reshape((s.outer, 1, s.inner)[: s.rank])
        else:
            gl = np.asarray(grad_loss, grad_type).reshape((1,) * len(layout))
        if (
            labels.shape == logits.shape
            and s.block_rows >= s.outer
            and s.block_inner >= s.inner
            and s.compute is s.dtype
        ):
            # One block and no broadcast (most small requests): one run on views, as the
            # loop below would do it, without its bookkeeping (which costs a 32x10 call
            # about a quarter of its time; bench/engine_memory.py timing).
            feeds = {
                "labels": np.ascontiguousarray(labels).reshape(layout),
                "logits": np.ascontiguousarray(logits).reshape(layout),
                **constants,
            }
            if outs != _LOSS_ONLY:
                feeds["grad_loss"] = np.ascontiguousarray(gl, grad_type)
            shapes = {"loss": layout[:1] + layout[2:], "grad_logits": layout, "grad_labels": layout}
            whole: dict[str, np.ndarray] = {n: np.empty(shapes[n], dtype) for n in outs}
            sessions.run_bound(session, feeds, whole)
            return {n: a.reshape(s.loss_shape if n == "loss" else s.full) for n, a in whole.items()}
        y, x = _Source(labels, s), _Source(logits, s)
        # The chunked weighted graph sums the weighted labels by chunk: they need every class.
        label_classes = classes if chunks is not None and "keep_w" in constants else y.classes
        # Outputs are written in place where they can be: the loss, and the gradient of an
        # input of the full shape, block by block. A broadcast input's gradient is summed,
        # block by block, into an array of its own shape (in float32 for half types).
        # Arrays are in the graph's rank: [outer, classes] when rows_layout.
        # in the compute type: a half loss that is weighted or reduced is rounded once, after
        loss = np.empty(layout[:1] + layout[2:], compute) if "loss" in outs else None
        grads: list[tuple[Output, _Source, np.ndarray]] = []
        for name, source in (("grad_logits", x), ("grad_labels", y)):
            if name in wanted:
                if source.broadcast:
                    grads.append((name, source, np.zeros(source.view.shape, compute)))
                else:
                    grads.append((name, source, np.empty(layout, dtype)))
        if not grads:
            per_example = False

        for start in range(0, s.outer, s.block_rows):
            rows = slice(start, min(s.outer, start + s.block_rows))
            for first in range(0, s.inner, s.block_inner):
                cols = None if rows_layout else slice(first, min(s.inner, first + s.block_inner))
                cut = rows if cols is None else (rows, slice(None), cols)
                fy = y.block(rows, cols, label_classes, compute)
                fx = x.block(rows, cols, classes, compute)
                feeds = {"labels": fy, "logits": fx, **constants}
                values: dict[str, np.ndarray] = {}
                copies: list[tuple[np.ndarray, np.ndarray]] = []  # (computed, destination)
                if loss is not None:
                    out = loss[rows] if cols is None else loss[rows, cols]
                    if out.flags.c_contiguous:
                        values["loss"] = out
                    else:
                        values["loss"] = np.empty(out.shape, compute)
                        copies.append((values["loss"], out))
                if grads:
                    fg = np.ascontiguousarray(gl[cut], grad_type) if per_example else gl
                    feeds["grad_loss"] = fg
                    for name, source, into in grads:
                        # the graph's output: softmax - labels or log_softmax, times grad_loss
                        other = fy if name == "grad_logits" else fx
                        shape = tuple(map(max, fx.shape, other.shape, fg.shape))
                        if source.broadcast:
                            values[name] = np.empty(shape, compute)
                            continue
                        out = into[cut]
                        if shape == out.shape and compute == dtype and out.flags.c_contiguous:
                            values[name] = out
                        else:
                            values[name] = np.empty(shape, compute)
                            copies.append((values[name], out))
                sessions.run_bound(session, feeds, values)
                for computed, destination in copies:
                    destination[...] = computed
                for name, source, into in grads:
                    if source.broadcast:
                        source.accumulate(into, values[name], rows, cols, classes)

        result: dict[str, np.ndarray] = {}
        if loss is not None:
            result["loss"] = loss.reshape(s.loss_shape)
        for name, _, into in grads:
            own = s.logits if name == "grad_logits" else s.labels
            result[name] = into.reshape(own).astype(dtype, copy=False)
        return result

    # --- the sparse op -----------------------------------------------------------------

    def sparse_softmax_cross_entropy(
        self,
        *,
        labels: np.ndarray,
        logits: np.ndarray,
        dim: int = -1,
        grad_loss: np.ndarray | None = None,
        outputs: Sequence[str] = ("loss",),
        class_weights: np.ndarray | None = None,
        sample_weights: np.ndarray | None = None,
        options: Options = DEFAULT_OPTIONS,
    ) -> LossResult:
        """tf.nn.sparse_softmax_cross_entropy_with_logits along any class `dim`, with the
        evaluation options of PyTorch's cross_entropy if asked (README, "Evaluation
        options")."""
        args = (
            (labels.shape, labels.dtype),
            (logits.shape, logits.dtype),
            _spec(grad_loss),
            outputs,
            dim,
            self.max_elements,
            _spec(class_weights),
            _spec(sample_weights),
            options,
        )
        s = self._checked(_check_sparse, args)
        x = s.extras
        if labels.size == 0 and not x.active:
            return _empty(s.dtype, s.wanted, labels.shape, labels.shape, logits.shape)
        mask = None
        if x.ignore_index is not None and labels.size:
            kept = labels != x.ignore_index
            if not kept.all():
                mask, labels = kept, np.where(kept, labels, 0).astype(labels.dtype)
        if labels.size:
            low, high = int(labels.min()), int(labels.max())
            if low < 0 or high >= s.classes:
                bad = low if low < 0 else high
                hint = "" if x.ignore_index is not None else "; to skip padding, set ignore_index"
                raise LabelOutOfRange(f"labels must be in [0, {s.classes}); found {bad}{hint}")
        if not x.active:
            if s.direct is None:
                s.direct = self._direct_sparse(s)
            if s.direct:
                return s.direct(labels, logits, grad_loss)  # type: ignore[operator, no-any-return]
            return LossResult(dtype=s.dtype, **self._sparse(s, labels, logits, grad_loss, {}, {}))

        weights = _weight_values("class_weights", class_weights)
        samples = _weight_values("sample_weights", sample_weights)
        # Each example's weight in the mean: s_n w_{y_n}, 0 where ignored.
        label_weights = None if weights is None else weights[labels]
        factors = [
            f
            for f in (
                None if samples is None else np.broadcast_to(samples, s.labels),
                mask,
                label_weights,
            )
            if f is not None
        ]
        counted = math.prod(factors) if factors else None
        total = float(math.prod(s.labels) if counted is None else np.sum(counted))
        smoothed = x.eps != 0.0
        # What multiplies each example's loss and gradient beyond the graph: all of that
        # but the class weight, which the smoothed graph applies itself.
        if smoothed and label_weights is not None:
            factors = factors[:-1]
        scale = np.asarray(math.prod(factors), np.float64) if factors else None
        examples: dict[str, np.ndarray] = {}
        constants: dict[str, np.ndarray] = {}
        if smoothed:
            ort = _ORT_NUMPY[s.dtype]
            keep, spread = 1.0 - x.eps, x.eps / s.classes
            constants["spread_w"] = _per_class(s, spread, weights)
            w_y = np.ones(1) if label_weights is None else label_weights
            examples["keep_w_y"] = (keep * w_y).astype(ort)
            if "grad_logits" in s.wanted:
                weight_total = s.classes if weights is None else float(weights.sum())
                examples["mass"] = (keep * w_y + spread * weight_total).astype(ort)
        arrays: dict[str, np.ndarray] = {}
        if labels.size == 0:
            arrays = _empty_arrays(s.dtype, s.wanted, labels.shape, labels.shape, logits.shape)
        elif s.wanted - _WEIGHT_SUM:
            grad_scale = _grad_scale(x, grad_loss, scale, total, _ORT_NUMPY[s.dtype])
            arrays = self._sparse(s, labels, logits, grad_scale, examples, constants)
        return _finish(s.dtype, s.wanted, x, arrays, scale, total, mask)

    def _sparse(
        self,
        s: _Sparse,
        labels: np.ndarray,
        logits: np.ndarray,
        grad_loss: np.ndarray | None,
        examples: dict[str, np.ndarray],
        constants: dict[str, np.ndarray],
    ) -> dict[str, np.ndarray]:
        """The graph's outputs asked for, in their inputs' shapes, in blocks of rows (and of
        `inner` when a row of [outer, C, inner] alone is too big). `examples`: the smoothed
        graph's per-example inputs, of the labels' shape or of one element."""
        outs = s.wanted - _WEIGHT_SUM
        rows_layout = s.rows_layout
        key, chunks = self._graph(s)
        session = self._session(key)
        if chunks is not None:
            constants = {**constants, "chunks": chunks}
        lay, layout = s.example_layout, s.layout
        per = dict(examples)
        per["labels"] = labels
        if "grad_logits" in outs:
            per["grad_loss"] = (
                _unit_grad_loss(_ORT_NUMPY[s.dtype], len(lay))
                if grad_loss is None
                else np.asarray(grad_loss, _ORT_NUMPY[s.dtype])
            )
        size = math.prod(lay)
        full = {n for n, a in per.items() if a.size == size}
        per = {
            n: np.ascontiguousarray(a).reshape(lay if n in full else (1,) * len(lay))
            for n, a in per.items()
        }
        x = np.ascontiguousarray(logits).reshape(layout)
        dtype, compute = s.dtype.numpy, s.compute.numpy
        shapes = {"loss": lay, "grad_logits": layout}
        values = {n: np.empty(shapes[n], compute if n == "loss" else dtype) for n in outs}
        for start in range(0, s.outer, s.block_rows):
            rows = slice(start, min(s.outer, start + s.block_rows))
            for first in range(0, s.inner, s.block_inner):
                if rows_layout:
                    cut: tuple[slice, ...] = (rows,)
                    xcut: tuple[slice, ...] = (rows,)
                else:
                    cols = slice(first, min(s.inner, first + s.block_inner))
                    cut, xcut = (rows, cols), (rows, slice(None), cols)
                feeds = {
                    n: np.ascontiguousarray(a[cut]) if n in full else a for n, a in per.items()
                }
                feeds["logits"] = np.ascontiguousarray(x[xcut], compute)
                feeds.update(constants)
                bound: dict[str, np.ndarray] = {}
                copies: list[tuple[np.ndarray, np.ndarray]] = []
                for n, a in values.items():
                    out = a[cut if n == "loss" else xcut]
                    if out.flags.c_contiguous and out.dtype == compute:
                        bound[n] = out
                    else:
                        bound[n] = np.empty(out.shape, compute)
                        copies.append((bound[n], out))
                sessions.run_bound(session, feeds, bound)
                for computed, destination in copies:
                    destination[...] = computed
        return {n: a.reshape(s.labels if n == "loss" else s.logits) for n, a in values.items()}


_WEIGHT_SUM = frozenset({"weight_sum"})
# What the options add per example at most (float64 each): sample weights broadcast, the
# ignore mask, label weights, their product, the per-example loss and gradient scale.
_EXTRAS_BYTES = 48


def _start_keys(*, cuda: bool) -> list[GraphKey]:
    """The graphs an engine builds at start: TensorFlow's ops' on the CPU, one on CUDA."""
    if cuda:
        return [("soft", DType.float32, 2, frozenset(["loss"]), False, False)]
    keys: list[GraphKey] = []
    for dtype in FLOAT_DTYPES:
        for rank in (2, 3):
            for outs in _subsets(_SOFT_GRAPH_OUTPUTS):
                keys.append(("soft", dtype, rank, outs, False, False))
        for label_dtype in INDEX_DTYPES:
            for outs in _subsets(_SPARSE_GRAPH_OUTPUTS):
                keys.append(("sparse", dtype, label_dtype, 2, outs, False, False))
    return keys


# A class dimension longer than CHUNK_MAX is summed in chunks of CHUNK_MIN..CHUNK_MAX
# classes (graphs._log_softmax), when its length has such a divisor; float64 needs none.
CHUNK_MIN, CHUNK_MAX = 256, 2048


@cache
def _chunks(compute: DType, classes: int, rows_layout: bool) -> np.ndarray | None:
    """The reshape of a block's class dimension into chunks, or None to sum it whole."""
    if compute is DType.float64 or classes <= CHUNK_MAX:
        return None
    for size in range(CHUNK_MAX, CHUNK_MIN - 1, -1):
        if classes % size == 0:
            shape = [0, classes // size, size] + ([] if rows_layout else [-1])
            chunks = np.array(shape, np.int64)
            chunks.flags.writeable = False
            return chunks
    return None


def _rescaled(extras: _Extras, wanted: frozenset[Output]) -> bool:
    """The loss is multiplied or summed after the run (sample weights, ignore_index,
    class weights of integer labels, a reduction)."""
    return (
        "loss" in wanted
        and extras.active
        and (
            extras.reduction != "none"
            or extras.sample_weights is not None
            or extras.ignore_index is not None
            or extras.class_weights
        )
    )


def _per_class(s: _Work, factor: float, weights: np.ndarray | None) -> np.ndarray:
    """`factor` times the class weights (1 for each class without them) as a per-class
    graph input, in the compute type."""
    base = np.ones(1) if weights is None else weights
    return (factor * base).astype(_ORT_NUMPY[s.dtype]).reshape(s.class_layout(base.size))


def _weighted(extras: _Extras) -> bool:
    """The soft op's weighted graph: class weights or label smoothing."""
    return extras.class_weights or extras.eps != 0.0


def _weight_values(name: str, array: np.ndarray | None) -> np.ndarray | None:
    """Weights as float64, after checking their values: finite and not negative."""
    if array is None:
        return None
    weights = np.asarray(array, np.float64)
    bad = ~np.isfinite(weights) | (weights < 0)
    if bad.any():
        raise InvalidArgument(
            f"{name} must be finite and >= 0; found {weights[bad].flat[0]} (PyTorch and Keras "
            "take weights as given: a negative one would reward a wrong answer)"
        )
    return weights


def _grad_scale(
    extras: _Extras,
    grad_loss: np.ndarray | None,
    scale: np.ndarray | None,
    total: float,
    dtype: np.dtype[np.generic],
) -> np.ndarray | None:
    """Each example's factor on its gradient: grad_loss (a scalar when reduced) times its
    weight `scale`, over the total weight for a mean (0 when there is none: PyTorch's zero
    gradients of an empty mean). None for ones."""
    if extras.reduction != "none":
        factor = 1.0 if grad_loss is None else float(grad_loss)
        if extras.reduction == "mean":
            factor = factor / total if total else 0.0
        return np.asarray(factor if scale is None else scale * factor, dtype)
    if scale is None:
        return grad_loss
    return np.asarray(scale if grad_loss is None else scale * grad_loss, dtype)


def _finish(
    dtype: DType,
    wanted: frozenset[Output],
    extras: _Extras,
    arrays: dict[str, np.ndarray],
    scale: np.ndarray | None,
    total: float,
    mask: np.ndarray | None,
) -> LossResult:
    """The graphs' per-example losses weighted, masked and reduced (in float64), and the
    weight sum; the gradients are already the reduced loss's (`_grad_scale`)."""
    result = {n: a.astype(dtype.numpy, copy=False) for n, a in arrays.items()}
    loss = arrays.get("loss")
    if loss is not None and (scale is not None or mask is not None or extras.reduction != "none"):
        with np.errstate(invalid="ignore", divide="ignore"):
            value = loss.astype(np.float64)
            if scale is not None:
                value = value * scale
            if mask is not None:  # exactly 0, even where the loss was inf or NaN
                value = np.where(mask, value, 0.0)
            if extras.reduction == "sum":
                value = np.asarray(value.sum())
            elif extras.reduction == "mean":
                value = np.asarray(value.sum() / total if total else np.nan)
        result["loss"] = value.astype(dtype.numpy)
    if "weight_sum" in wanted:
        result["weight_sum"] = np.asarray(total, np.float64)
    return LossResult(dtype=dtype, **result)


def _empty_arrays(
    dtype: DType, wanted: frozenset[Output], loss: Shape, labels: Shape, logits: Shape
) -> dict[str, np.ndarray]:
    shapes = {"loss": loss, "grad_logits": logits, "grad_labels": labels}
    return {n: np.zeros(shapes[n], dtype.numpy) for n in wanted - _WEIGHT_SUM}


def _empty(
    dtype: DType, wanted: frozenset[Output], loss: Shape, labels: Shape, logits: Shape
) -> LossResult:
    return LossResult(dtype=dtype, **_empty_arrays(dtype, wanted, loss, labels, logits))
