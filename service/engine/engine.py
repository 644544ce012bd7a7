"""The engine: softmax cross entropy on numpy arrays, through ONNX Runtime sessions.

Knows arrays, shapes, providers and sessions; nothing of HTTP or wire formats.

Every call runs in blocks of the broadcast work, whatever the broadcast: the work is
viewed as ``[outer, C, inner]`` (``C`` the class dimension), and each ONNX Runtime run
gets a block of whole rows, or of one row and a range of ``inner`` when a row alone is
too big. An input is materialised only one block at a time (and not at all when it is
already laid out: then blocks are views); the gradient of a broadcast input is summed
block by block into an array of the input's own shape. Peak memory is then inputs +
outputs + O(block), and `Engine.plan` says how much, from shapes and dtypes alone.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np

from service.engine import graphs, sessions
from service.engine.types import (
    FLOAT_DTYPES,
    INDEX_DTYPES,
    MAX_RANK,
    SOFT_OP,
    SOFT_OUTPUTS,
    SPARSE_OP,
    SPARSE_OUTPUTS,
    DType,
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

    def items(self) -> list[tuple[Output, np.ndarray]]:
        """The computed outputs, in the order loss, grad_logits, grad_labels."""
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


FULL, ONE, MIXED = 0, 1, 2  # how an input covers one group of dims of the broadcast shape


def _kind(own: Shape, full: Shape) -> int:
    if own == full:
        return FULL
    if all(d == 1 for d in own):
        return ONE
    return MIXED


@dataclass(slots=True)  # not frozen: that makes every call slower, and nothing changes it
class _Soft:
    """A validated soft call: what to compute, on which geometry, in blocks of what size."""

    wanted: frozenset[Output]
    dtype: DType
    compute: DType  # float32 for half types whose gradient is summed back, else dtype
    numpy: np.dtype[np.generic]  # dtype's and compute's, looked up once
    numpy_compute: np.dtype[np.generic]
    full: Shape
    dim: int
    loss_shape: Shape
    labels: Shape
    logits: Shape
    outer: int  # the work is [outer, classes, inner]
    classes: int
    inner: int
    rows_layout: bool  # the class dimension is the last one: the rank-2 graphs
    block_rows: int
    block_inner: int


def _check_soft(
    labels: Spec,
    logits: Spec,
    grad_loss: Spec | None,
    outputs: Sequence[str],
    dim: int,
    max_elements: int,
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
    if not -rank <= dim < rank:
        raise InvalidDim(f"dim {dim} is out of range for rank {rank} (use {-rank}..{rank - 1})")
    dim %= rank
    if full[dim] == 0:
        raise InvalidArgument(
            f"the class dimension (dim {dim}) must have at least one class; "
            f"shape is {_shape_text(full)}"
        )
    loss_shape = full[:dim] + full[dim + 1 :]
    if grad_loss is not None:
        if wanted == _LOSS_ONLY:
            raise InvalidArgument("grad_loss is only used when a gradient output is asked for")
        if _DTYPES.get(grad_loss[1]) is not dtype:
            raise UnsupportedDtype(f"grad_loss must have dtype {dtype.name}")
        if grad_loss[0] != loss_shape:
            raise ShapeMismatch(
                f"grad_loss must have the loss's shape {_shape_text(loss_shape)}; "
                f"got {_shape_text(grad_loss[0])}"
            )
    # A half-precision gradient that is summed back is summed in float32, then cast once.
    summed = ("grad_logits" in wanted and _padded(logits[0], rank) != full) or (
        "grad_labels" in wanted and _padded(labels[0], rank) != full
    )
    compute = DType.float32 if _HALF[dtype] and summed else dtype
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
    )


@dataclass(slots=True)
class _Sparse:
    wanted: frozenset[Output]
    dtype: DType
    label_dtype: DType
    labels: Shape
    logits: Shape
    rows: int
    classes: int
    block_rows: int


def _check_sparse(
    labels: Spec, logits: Spec, grad_loss: Spec | None, outputs: Sequence[str], max_elements: int
) -> _Sparse:
    """Every check of a sparse call that shapes and dtypes decide (not the label range)."""
    wanted = _check_outputs(outputs, SPARSE_OUTPUTS)
    dtype = _float_dtype("logits", logits[1])
    label_dtype = _DTYPES.get(labels[1])
    if label_dtype is None or label_dtype not in INDEX_DTYPES:
        raise UnsupportedDtype(f"sparse labels must be int32 or int64; got {labels[1]}")
    if not logits[0]:
        raise ShapeMismatch("logits must have rank >= 1; got a scalar")
    if labels[0] != logits[0][:-1]:
        raise ShapeMismatch(
            f"sparse labels must have the logits' shape without its last dimension, "
            f"{_shape_text(logits[0][:-1])}; got {_shape_text(labels[0])}"
        )
    _check_size("logits", logits[0], max_elements)
    classes = logits[0][-1]
    if classes == 0:
        raise InvalidArgument(
            f"logits must have at least one class; shape is {_shape_text(logits[0])}"
        )
    if grad_loss is not None:
        if "grad_logits" not in wanted:
            raise InvalidArgument("grad_loss is only used when grad_logits is asked for")
        if _DTYPES.get(grad_loss[1]) is not dtype or grad_loss[0] != labels[0]:
            raise ShapeMismatch(
                f"grad_loss must be {dtype.name} of shape {_shape_text(labels[0])}; got "
                f"{grad_loss[1]} of shape {_shape_text(grad_loss[0])}"
            )
    rows = math.prod(labels[0])
    block_rows, _ = _block_geometry(rows, classes, 1, _ORT_ITEMSIZE[dtype])
    return _Sparse(
        wanted=wanted,
        dtype=dtype,
        label_dtype=label_dtype,
        labels=labels[0],
        logits=logits[0],
        rows=rows,
        classes=classes,
        block_rows=block_rows,
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


class Engine:
    """Builds every session once; computes loss and gradients for any rank, dim and dtype."""

    def __init__(
        self,
        *,
        providers: str = "cpu",
        intra_op_threads: int | None = None,
        max_elements: int = 1 << 28,
    ) -> None:
        self.max_elements = max_elements
        threads = intra_op_threads or sessions.usable_cpus()
        options = sessions.session_options(threads)
        requested = sessions.PROVIDERS[providers]
        loadable = sessions.loadable_providers(providers)
        self._sessions: dict[tuple[object, ...], sessions.InferenceSession] = {}
        # Nodes of each graph: a bound on the block-sized tensors one run can hold.
        self._nodes: dict[tuple[object, ...], int] = {}
        for dtype in FLOAT_DTYPES:
            for rank in (2, 3):
                for outs in _subsets(SOFT_OUTPUTS):
                    model = graphs.soft_graph(dtype, rank, outs)
                    key: tuple[object, ...] = ("soft", dtype, rank, outs)
                    self._sessions[key] = sessions.create_session(
                        model, providers=loadable, options=options
                    )
                    self._nodes[key] = len(model.graph.node)
            for label_dtype in INDEX_DTYPES:
                for outs in _subsets(SPARSE_OUTPUTS):
                    model = graphs.sparse_graph(dtype, label_dtype, outs)
                    key = ("sparse", dtype, label_dtype, outs)
                    self._sessions[key] = sessions.create_session(
                        model, providers=loadable, options=options
                    )
                    self._nodes[key] = len(model.graph.node)
        in_use = {p for s in self._sessions.values() for p in s.get_providers()}
        self.providers: list[str] = [p for p in requested if p in in_use]
        self.intra_op_threads = threads
        if requested[0] not in in_use:
            log.warning(
                "%s was requested but is not available; running on %s",
                requested[0],
                ", ".join(self.providers),
            )

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
    ) -> Plan:
        """The cost of a call, from shapes and dtypes alone, before anything is allocated.

        Raises what the call would raise for these shapes and dtypes (the sparse label
        range needs values, and stays the call's). Inputs are taken to be C-contiguous, as
        the codecs make them: a strided input costs a copy of itself on top of `work_bytes`.
        The sparse op's class dimension is the last: `dim` must say so.
        """
        y = (tuple(labels[0]), labels[1].numpy)
        x = (tuple(logits[0]), logits[1].numpy)
        g = None if grad_loss is None else (tuple(grad_loss[0]), grad_loss[1].numpy)
        if op == SOFT_OP:
            return self._soft_plan(_check_soft(y, x, g, outputs, dim, self.max_elements))
        if op == SPARSE_OP:
            sparse = _check_sparse(y, x, g, outputs, self.max_elements)
            rank = len(sparse.logits)
            if dim not in (-1, rank - 1):
                raise InvalidDim(
                    f"the sparse op's class dimension is the last one; dim {dim} is not "
                    f"(use -1 or {rank - 1})"
                )
            return self._sparse_plan(sparse)
        raise ValueError(f"unknown op {op!r}; expected {SOFT_OP!r} or {SPARSE_OP!r}")

    def _soft_plan(self, s: _Soft) -> Plan:
        itemsize = s.dtype.numpy.itemsize
        shapes = {"loss": s.loss_shape, "grad_logits": s.logits, "grad_labels": s.labels}
        output_bytes = sum(math.prod(shapes[n]) * itemsize for n in s.wanted)
        elements = math.prod(s.full)
        if math.prod(s.loss_shape) == 0:
            return Plan(elements=elements, output_bytes=output_bytes, work_bytes=0)
        block = s.block_rows * s.classes * s.block_inner
        ort = _ORT_ITEMSIZE[s.dtype]
        rank = 2 if s.rows_layout else 3
        nodes = self._nodes["soft", s.compute, rank, s.wanted]
        work = (ARENA_FACTOR * (nodes + KERNEL_SCRATCH) + NUMPY_BLOCKS) * block * ort
        if s.compute is not s.dtype:  # half gradients summed back: float32 accumulators
            for name, own in (("grad_logits", s.logits), ("grad_labels", s.labels)):
                if name in s.wanted and _padded(own, len(s.full)) != s.full:
                    work += math.prod(own) * s.compute.numpy.itemsize
        return Plan(elements=elements, output_bytes=output_bytes, work_bytes=work)

    def _sparse_plan(self, s: _Sparse) -> Plan:
        itemsize = s.dtype.numpy.itemsize
        shapes = {"loss": s.labels, "grad_logits": s.logits}
        output_bytes = sum(math.prod(shapes[n]) * itemsize for n in s.wanted)
        elements = math.prod(s.logits)
        if s.rows == 0:
            return Plan(elements=elements, output_bytes=output_bytes, work_bytes=0)
        nodes = self._nodes["sparse", s.dtype, s.label_dtype, s.wanted]
        # a block of logits, or of int64 label indices where there is one class
        block = max(s.block_rows * s.classes * _ORT_ITEMSIZE[s.dtype], s.block_rows * 8)
        work = ARENA_FACTOR * (nodes + KERNEL_SCRATCH) * block
        return Plan(elements=elements, output_bytes=output_bytes, work_bytes=work)

    # --- the soft op -------------------------------------------------------------------

    def softmax_cross_entropy(
        self,
        *,
        labels: np.ndarray,
        logits: np.ndarray,
        dim: int = -1,
        grad_loss: np.ndarray | None = None,
        outputs: Sequence[str] = ("loss",),
    ) -> LossResult:
        """tf.nn.softmax_cross_entropy_with_logits_v2 and, if asked, its gradients."""
        s = _check_soft(
            (labels.shape, labels.dtype),
            (logits.shape, logits.dtype),
            _spec(grad_loss),
            outputs,
            dim,
            self.max_elements,
        )
        if math.prod(s.loss_shape) == 0:
            return _empty(s.dtype, s.wanted, s.loss_shape, labels.shape, logits.shape)
        return self._soft(s, labels, logits, grad_loss)

    def _soft(
        self, s: _Soft, labels: np.ndarray, logits: np.ndarray, grad_loss: np.ndarray | None
    ) -> LossResult:
        compute, dtype, classes, wanted = s.numpy_compute, s.numpy, s.classes, s.wanted
        rows_layout = s.rows_layout
        session = self._sessions["soft", s.compute, 2 if rows_layout else 3, wanted]
        layout = (s.outer, classes) if rows_layout else (s.outer, classes, s.inner)
        if labels.shape == logits.shape and s.block_rows >= s.outer and s.block_inner >= s.inner:
            # One block and no broadcast (most small requests): one run on views, as the
            # loop below would do it, without its bookkeeping (which costs a 32x10 call
            # about a quarter of its time; bench/engine_memory.py timing).
            feeds = {
                "labels": np.ascontiguousarray(labels).reshape(layout),
                "logits": np.ascontiguousarray(logits).reshape(layout),
            }
            if wanted != _LOSS_ONLY:
                feeds["grad_loss"] = (
                    _unit_grad_loss(dtype, len(layout))
                    if grad_loss is None
                    else np.ascontiguousarray(grad_loss).reshape((*layout[:1], 1, *layout[2:]))
                )
            shapes = {"loss": layout[:1] + layout[2:], "grad_logits": layout, "grad_labels": layout}
            whole: dict[str, np.ndarray] = {n: np.empty(shapes[n], dtype) for n in wanted}
            sessions.run_bound(session, feeds, whole)
            return LossResult(
                dtype=s.dtype,
                **{n: a.reshape(s.loss_shape if n == "loss" else s.full) for n, a in whole.items()},
            )
        y, x = _Source(labels, s), _Source(logits, s)
        # Outputs are written in place where they can be: the loss, and the gradient of an
        # input of the full shape, block by block. A broadcast input's gradient is summed,
        # block by block, into an array of its own shape (in float32 for half types).
        # Arrays are in the graph's rank: [outer, classes] when rows_layout.
        loss = np.empty(layout[:1] + layout[2:], dtype) if "loss" in wanted else None
        grads: list[tuple[Output, _Source, np.ndarray]] = []
        for name, source in (("grad_logits", x), ("grad_labels", y)):
            if name in wanted:
                if source.broadcast:
                    grads.append((name, source, np.zeros(source.view.shape, compute)))
                else:
                    grads.append((name, source, np.empty(layout, dtype)))
        gl = None
        if grads:
            gl = _unit_grad_loss(compute, len(layout))
            if grad_loss is not None:
                gl = grad_loss.reshape((s.outer, 1) if rows_layout else (s.outer, 1, s.inner))

        for start in range(0, s.outer, s.block_rows):
            rows = slice(start, min(s.outer, start + s.block_rows))
            for first in range(0, s.inner, s.block_inner):
                cols = None if rows_layout else slice(first, min(s.inner, first + s.block_inner))
                cut = rows if cols is None else (rows, slice(None), cols)
                fy = y.block(rows, cols, y.classes, compute)
                fx = x.block(rows, cols, classes, compute)
                feeds = {"labels": fy, "logits": fx}
                values: dict[str, np.ndarray] = {}
                copies: list[tuple[np.ndarray, np.ndarray]] = []  # (computed, destination)
                if loss is not None:
                    out = loss[rows] if cols is None else loss[rows, cols]
                    if compute == dtype and out.flags.c_contiguous:
                        values["loss"] = out
                    else:
                        values["loss"] = np.empty(out.shape, compute)
                        copies.append((values["loss"], out))
                if gl is not None:
                    fg = gl if grad_loss is None else np.ascontiguousarray(gl[cut], compute)
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
        return LossResult(dtype=s.dtype, **result)

    # --- the sparse op -----------------------------------------------------------------

    def sparse_softmax_cross_entropy(
        self,
        *,
        labels: np.ndarray,
        logits: np.ndarray,
        grad_loss: np.ndarray | None = None,
        outputs: Sequence[str] = ("loss",),
    ) -> LossResult:
        """tf.nn.sparse_softmax_cross_entropy_with_logits (class dimension last)."""
        s = _check_sparse(
            (labels.shape, labels.dtype),
            (logits.shape, logits.dtype),
            _spec(grad_loss),
            outputs,
            self.max_elements,
        )
        if labels.size == 0:
            return _empty(s.dtype, s.wanted, labels.shape, labels.shape, logits.shape)
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= s.classes:
            bad = low if low < 0 else high
            raise LabelOutOfRange(f"labels must be in [0, {s.classes}); found {bad}")

        dtype = s.dtype.numpy
        feeds = {
            "labels": np.ascontiguousarray(labels).reshape(-1),
            "logits": np.ascontiguousarray(logits).reshape(-1, s.classes),
        }
        if "grad_logits" in s.wanted:
            feeds["grad_loss"] = (
                np.ones(1, dtype)
                if grad_loss is None
                else np.ascontiguousarray(grad_loss).reshape(-1)
            )
        session = self._sessions["sparse", s.dtype, s.label_dtype, s.wanted]
        shapes = {"loss": (s.rows,), "grad_logits": (s.rows, s.classes)}
        values: dict[str, np.ndarray] = {n: np.empty(shapes[n], dtype) for n in s.wanted}
        for start in range(0, s.rows, s.block_rows):
            block = slice(start, min(s.rows, start + s.block_rows))
            sessions.run_bound(
                session,
                {k: a[block] if a.shape[0] == s.rows else a for k, a in feeds.items()},
                {k: a[block] for k, a in values.items()},
            )
        return LossResult(
            dtype=s.dtype,
            loss=values["loss"].reshape(labels.shape) if "loss" in values else None,
            grad_logits=(
                values["grad_logits"].reshape(logits.shape) if "grad_logits" in values else None
            ),
        )


def _empty(
    dtype: DType, wanted: frozenset[Output], loss: Shape, labels: Shape, logits: Shape
) -> LossResult:
    shapes = {"loss": loss, "grad_logits": logits, "grad_labels": labels}
    return LossResult(dtype=dtype, **{n: np.zeros(shapes[n], dtype.numpy) for n in wanted})
