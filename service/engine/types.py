"""The dtypes the engine computes in: one table, shared by the graphs and the codecs."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

import ml_dtypes
import numpy as np

Output = Literal["loss", "grad_logits", "grad_labels", "weight_sum"]
Reduction = Literal["none", "sum", "mean"]
SOFT_OP = "softmax_cross_entropy_with_logits"  # the two operations, by their TensorFlow names,
SPARSE_OP = "sparse_softmax_cross_entropy_with_logits"  # which are also the v2 model names
MAX_RANK = 32  # numpy allows 64; no loss needs more than a few
SOFT_OUTPUTS: tuple[Output, ...] = ("loss", "grad_logits", "grad_labels", "weight_sum")
SPARSE_OUTPUTS: tuple[Output, ...] = ("loss", "grad_logits", "weight_sum")
REDUCTIONS: tuple[Reduction, ...] = ("none", "sum", "mean")
# The optional tensors of both ops, beside labels, logits and grad_loss.
WEIGHT_INPUTS = ("class_weights", "sample_weights")


@dataclass(frozen=True, slots=True)
class Options:
    """The evaluation options of a call that are scalars (the weights are tensors).

    Taken as sent: the engine checks them (422s that say what was expected), so that every
    transport refuses the same values with the same words.
    """

    reduction: str = "none"  # one of REDUCTIONS
    label_smoothing: float = 0.0  # in [0, 1]
    ignore_index: int | None = None  # the sparse op only

    @property
    def reduced(self) -> bool:
        return self.reduction != "none"

    @classmethod
    def given(
        cls, reduction: str | None, label_smoothing: float | None, ignore_index: int | None
    ) -> Options:
        """The options a request names, the defaults for those it leaves out (None)."""
        return cls(
            DEFAULT_OPTIONS.reduction if reduction is None else reduction,
            DEFAULT_OPTIONS.label_smoothing if label_smoothing is None else label_smoothing,
            ignore_index,
        )


DEFAULT_OPTIONS = Options()


@dataclass(frozen=True)
class DTypeInfo:
    numpy: np.dtype[np.generic]
    #: computed in float32 and cast back, as TensorFlow does for half types
    half: bool


class DType(enum.Enum):
    """A tensor element type, named as numpy and the native API name it."""

    float16 = DTypeInfo(np.dtype(np.float16), True)
    bfloat16 = DTypeInfo(np.dtype(ml_dtypes.bfloat16), True)
    float32 = DTypeInfo(np.dtype(np.float32), False)
    float64 = DTypeInfo(np.dtype(np.float64), False)
    int32 = DTypeInfo(np.dtype(np.int32), False)
    int64 = DTypeInfo(np.dtype(np.int64), False)

    # Plain attributes, set once per member: a request reads them a dozen times, and an
    # enum property (through `value`) cost ~0.4 us a read.
    numpy: np.dtype[np.generic]
    is_float: bool

    def __init__(self, info: DTypeInfo) -> None:
        self.numpy = info.numpy
        self.is_float = info.numpy.kind == "f" or info.numpy == ml_dtypes.bfloat16

    @classmethod
    def of(cls, array: np.ndarray) -> DType | None:
        """The DType of a numpy array, or None if the engine does not compute in it."""
        return _BY_NUMPY.get(array.dtype)


_BY_NUMPY = {member.numpy: member for member in DType}
FLOAT_DTYPES = tuple(d for d in DType if d.is_float)
INDEX_DTYPES = (DType.int32, DType.int64)
