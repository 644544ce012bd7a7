"""The engine: softmax cross entropy on numpy arrays, through ONNX Runtime sessions.

Knows arrays, shapes, providers and sessions; nothing of HTTP or wire formats.
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
    SOFT_OUTPUTS,
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


def _subsets(names: Sequence[Output]) -> list[frozenset[Output]]:
    return [
        frozenset(c) for k in range(1, len(names) + 1) for c in itertools.combinations(names, k)
    ]


def _shape_text(shape: Shape) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def _check_outputs(outputs: Sequence[str], allowed: Sequence[Output]) -> frozenset[Output]:
    unknown = [o for o in outputs if o not in allowed]
    if unknown or not outputs:
        raise InvalidArgument(
            f"outputs must be a non-empty list drawn from {list(allowed)}; got {list(outputs)}"
        )
    return frozenset(o for o in allowed if o in outputs)


def _float_dtype(name: str, array: np.ndarray) -> DType:
    dtype = DType.of(array)
    if dtype not in FLOAT_DTYPES:
        raise UnsupportedDtype(
            f"{name} has dtype {array.dtype}; supported: {[d.name for d in FLOAT_DTYPES]}"
        )
    assert dtype is not None
    return dtype


def _group(shape: Shape, full: Shape) -> int | None:
    """Collapsed size of one group of dims of an input: full, 1, or None if mixed."""
    if shape == full:
        return math.prod(full)
    if all(d == 1 for d in shape):
        return 1
    return None


def _layout(
    array: np.ndarray, full: Shape, dim: int, layout: Shape, *, softmax_input: bool = False
) -> np.ndarray:
    """View `array` (broadcastable to `full`) as [outer, C, inner] (or [outer, C] when rows),
    `layout` being that shape for `full` itself.

    Broadcast groups stay as size-1 dims (no copy); a group that is partly broadcast
    cannot be collapsed and is materialised, and so are logits broadcast along the class
    dimension, since the softmax must see every class.
    """
    if array.shape == full:  # the common case, and no broadcast group to keep
        return np.ascontiguousarray(array).reshape(layout)
    padded = (1,) * (len(full) - array.ndim) + array.shape
    outer = _group(padded[:dim], full[:dim])
    inner = _group(padded[dim + 1 :], full[dim + 1 :])
    if outer is None or inner is None or (softmax_input and padded[dim] != full[dim]):
        return np.ascontiguousarray(np.broadcast_to(array, full)).reshape(layout)
    shape = (outer, padded[dim]) if len(layout) == 2 else (outer, padded[dim], inner)
    return np.ascontiguousarray(array).reshape(shape)


@cache
def _unit_grad_loss(dtype: np.dtype[np.generic], rank: int) -> np.ndarray:
    """The grad_loss of a call that gives none: ones, one shared read-only array."""
    ones = np.ones((1,) * rank, dtype)
    ones.flags.writeable = False
    return ones


def _sum_to_shape(grad: np.ndarray, shape: Shape) -> np.ndarray:
    """Sum a gradient of the broadcast shape back to an input's own shape."""
    lead = grad.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, d in enumerate(shape) if d == 1 and grad.shape[lead + i] != 1
    )
    return grad.sum(axis=axes).reshape(shape) if axes else grad.reshape(shape)


# Rows per run are chosen so that each input block is about this size: ONNX Runtime's
# intermediates (log-softmax, products) then stay block-sized instead of costing a
# full-size buffer each. 4 MiB was not tuned: it only has to dwarf the per-run overhead.
BLOCK_BYTES = 4 << 20


def _run_in_row_blocks(
    session: sessions.InferenceSession,
    feeds: dict[str, np.ndarray],
    values: dict[str, np.ndarray],
    rows: int,
) -> None:
    """Run `session` over blocks of the leading (row) axis, writing into slices of `values`.

    Arrays whose leading axis is 1 are broadcast along it and go whole to every block.
    Slices of C-contiguous arrays along axis 0 are contiguous: no copies.
    """
    if rows <= 1 or max(a.nbytes for a in feeds.values()) <= BLOCK_BYTES:
        sessions.run_bound(session, feeds, values)
        return
    row_bytes = max(a.nbytes // rows for a in feeds.values() if a.shape[0] == rows)
    step = max(1, BLOCK_BYTES // max(row_bytes, 1))
    for start in range(0, rows, step):
        block = slice(start, min(rows, start + step))

        def cut(a: np.ndarray, block: slice = block) -> np.ndarray:
            return a[block] if a.shape[0] == rows else a

        sessions.run_bound(
            session, {k: cut(a) for k, a in feeds.items()}, {k: cut(a) for k, a in values.items()}
        )


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
        for dtype in FLOAT_DTYPES:
            for rank in (2, 3):
                for outs in _subsets(SOFT_OUTPUTS):
                    model = graphs.soft_graph(dtype, rank, outs)
                    self._sessions["soft", dtype, rank, outs] = sessions.create_session(
                        model, providers=loadable, options=options
                    )
            for label_dtype in INDEX_DTYPES:
                for outs in _subsets(SPARSE_OUTPUTS):
                    model = graphs.sparse_graph(dtype, label_dtype, outs)
                    self._sessions["sparse", dtype, label_dtype, outs] = sessions.create_session(
                        model, providers=loadable, options=options
                    )
        in_use = {p for s in self._sessions.values() for p in s.get_providers()}
        self.providers: list[str] = [p for p in requested if p in in_use]
        self.intra_op_threads = threads
        if requested[0] not in in_use:
            log.warning(
                "%s was requested but is not available; running on %s",
                requested[0],
                ", ".join(self.providers),
            )

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
        wanted = _check_outputs(outputs, SOFT_OUTPUTS)
        dtype = _float_dtype("logits", logits)
        if DType.of(labels) is not dtype:
            raise UnsupportedDtype(
                f"labels and logits must share one dtype; got labels {labels.dtype}, "
                f"logits {logits.dtype}"
            )
        for name, array in (("labels", labels), ("logits", logits)):
            if array.ndim == 0:
                raise ShapeMismatch(f"{name} must have rank >= 1; got a scalar")
        try:
            full: Shape = (
                logits.shape
                if labels.shape == logits.shape
                else np.broadcast_shapes(labels.shape, logits.shape)
            )
        except ValueError:
            raise ShapeMismatch(
                f"labels shape {_shape_text(labels.shape)} and logits shape "
                f"{_shape_text(logits.shape)} do not broadcast against each other"
            ) from None
        self._check_size("labels and logits broadcast", full)
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
        wants_grad = bool(wanted & {"grad_logits", "grad_labels"})
        if grad_loss is not None:
            if not wants_grad:
                raise InvalidArgument("grad_loss is only used when a gradient output is asked for")
            if DType.of(grad_loss) is not dtype:
                raise UnsupportedDtype(f"grad_loss must have dtype {dtype.name}")
            if grad_loss.shape != loss_shape:
                raise ShapeMismatch(
                    f"grad_loss must have the loss's shape {_shape_text(loss_shape)}; "
                    f"got {_shape_text(grad_loss.shape)}"
                )

        if math.prod(loss_shape) == 0:
            return self._empty(dtype, wanted, loss_shape, labels.shape, logits.shape)

        # A half-precision gradient that is summed back is summed in float32, then cast once.
        summed = ("grad_logits" in wanted and logits.shape != full) or (
            "grad_labels" in wanted and labels.shape != full
        )
        compute = DType.float32 if dtype.value.half and summed else dtype
        rows = dim == rank - 1
        outer = math.prod(full[:dim])
        layout = (outer, full[dim]) if rows else (outer, full[dim], math.prod(full[dim + 1 :]))
        feeds = {
            "labels": _layout(labels.astype(compute.numpy, copy=False), full, dim, layout),
            "logits": _layout(
                logits.astype(compute.numpy, copy=False), full, dim, layout, softmax_input=True
            ),
        }
        if wants_grad:
            if grad_loss is None:
                feeds["grad_loss"] = _unit_grad_loss(compute.numpy, 2 if rows else 3)
            else:
                gl = np.ascontiguousarray(grad_loss.astype(compute.numpy, copy=False))
                feeds["grad_loss"] = gl.reshape((outer, 1) if rows else (outer, 1, -1))
        session = self._sessions["soft", compute, 2 if rows else 3, wanted]
        shapes = {"loss": layout[:1] + layout[2:], "grad_logits": layout}
        if "grad_labels" in wanted:  # -grad_loss * log_softmax(logits): labels play no part
            shapes["grad_labels"] = (
                layout
                if feeds["logits"].shape == layout
                else np.broadcast_shapes(feeds["logits"].shape, feeds["grad_loss"].shape)
            )
        values: dict[str, np.ndarray] = {n: np.empty(shapes[n], compute.numpy) for n in wanted}
        _run_in_row_blocks(session, feeds, values, outer)

        result: dict[str, np.ndarray] = {}
        if "loss" in values:
            result["loss"] = values["loss"].reshape(loss_shape).astype(dtype.numpy, copy=False)
        for name, shape in (("grad_logits", logits.shape), ("grad_labels", labels.shape)):
            if name in values:
                grad = values[name]
                if grad.shape != layout:  # computed for a broadcast input's size-1 groups
                    grad = np.broadcast_to(grad, layout)
                grad = grad.reshape(full)
                grad = _sum_to_shape(grad, shape)
                result[name] = grad.astype(dtype.numpy, copy=False)
        return LossResult(dtype=dtype, **result)

    def sparse_softmax_cross_entropy(
        self,
        *,
        labels: np.ndarray,
        logits: np.ndarray,
        grad_loss: np.ndarray | None = None,
        outputs: Sequence[str] = ("loss",),
    ) -> LossResult:
        """tf.nn.sparse_softmax_cross_entropy_with_logits (class dimension last)."""
        wanted = _check_outputs(outputs, SPARSE_OUTPUTS)
        dtype = _float_dtype("logits", logits)
        label_dtype = DType.of(labels)
        if label_dtype not in INDEX_DTYPES:
            raise UnsupportedDtype(f"sparse labels must be int32 or int64; got {labels.dtype}")
        assert label_dtype is not None
        if logits.ndim == 0:
            raise ShapeMismatch("logits must have rank >= 1; got a scalar")
        if labels.shape != logits.shape[:-1]:
            raise ShapeMismatch(
                f"sparse labels must have the logits' shape without its last dimension, "
                f"{_shape_text(logits.shape[:-1])}; got {_shape_text(labels.shape)}"
            )
        self._check_size("logits", logits.shape)
        classes = logits.shape[-1]
        if classes == 0:
            raise InvalidArgument(
                f"logits must have at least one class; shape is {_shape_text(logits.shape)}"
            )
        if grad_loss is not None:
            if "grad_logits" not in wanted:
                raise InvalidArgument("grad_loss is only used when grad_logits is asked for")
            if DType.of(grad_loss) is not dtype or grad_loss.shape != labels.shape:
                raise ShapeMismatch(
                    f"grad_loss must be {dtype.name} of shape {_shape_text(labels.shape)}; got "
                    f"{grad_loss.dtype} of shape {_shape_text(grad_loss.shape)}"
                )
        if labels.size == 0:
            return self._empty(dtype, wanted, labels.shape, labels.shape, logits.shape)
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= classes:
            bad = low if low < 0 else high
            raise LabelOutOfRange(f"labels must be in [0, {classes}); found {bad}")

        feeds = {
            "labels": np.ascontiguousarray(labels).reshape(-1),
            "logits": np.ascontiguousarray(logits).reshape(-1, classes),
        }
        if "grad_logits" in wanted:
            feeds["grad_loss"] = (
                np.ones(1, dtype.numpy)
                if grad_loss is None
                else np.ascontiguousarray(grad_loss).reshape(-1)
            )
        session = self._sessions["sparse", dtype, label_dtype, wanted]
        rows = feeds["logits"].shape[0]
        shapes = {"loss": (rows,), "grad_logits": (rows, classes)}
        values: dict[str, np.ndarray] = {n: np.empty(shapes[n], dtype.numpy) for n in wanted}
        _run_in_row_blocks(session, feeds, values, rows)
        return LossResult(
            dtype=dtype,
            loss=values["loss"].reshape(labels.shape) if "loss" in values else None,
            grad_logits=(
                values["grad_logits"].reshape(logits.shape) if "grad_logits" in values else None
            ),
        )

    def _check_size(self, what: str, shape: Shape) -> None:
        """Refuse, before any output is allocated, work past the configured bounds."""
        if len(shape) > MAX_RANK:
            raise TooLarge(f"{what} to rank {len(shape)}; at most {MAX_RANK} is supported")
        if math.prod(shape) > self.max_elements:
            raise TooLarge(
                f"{what} to shape {_shape_text(shape)}, {math.prod(shape)} elements; the limit "
                f"is {self.max_elements} (SCE_MAX_ELEMENTS)"
            )

    @staticmethod
    def _empty(
        dtype: DType, wanted: frozenset[Output], loss: Shape, labels: Shape, logits: Shape
    ) -> LossResult:
        shapes = {"loss": loss, "grad_logits": logits, "grad_labels": labels}
        return LossResult(dtype=dtype, **{n: np.zeros(shapes[n], dtype.numpy) for n in wanted})
