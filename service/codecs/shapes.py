"""Shapes from the wire, checked before numpy sees them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from service.codecs.json_document import JsonTensor
from service.engine.types import MAX_RANK
from service.errors import InvalidArgument

# numpy refuses shapes whose non-zero dims times the item size pass intp's range, even
# when another dim is 0; 16 covers every item size with room to spare.
_MAX_DIM_PRODUCT = np.iinfo(np.intp).max // 16


def check_rank(shape: Sequence[int], what: str) -> None:
    """422 for more dimensions than MAX_RANK: checked first, so that no message lists them."""
    if len(shape) > MAX_RANK:
        raise InvalidArgument(f"{what} has rank {len(shape)}; at most {MAX_RANK} is supported")


def check(shape: Sequence[int], what: str) -> None:
    """422 for a client-declared shape numpy cannot hold: too many dims, negative, too large."""
    check_rank(shape, what)
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"{what} has a negative dimension in shape {list(shape)}")
    product = 1
    for d in shape:
        product *= max(d, 1)
        if product > _MAX_DIM_PRODUCT:
            raise InvalidArgument(f"{what} has shape {list(shape)}, too large to represent")


def reshaped(array: np.ndarray, shape: Sequence[int], what: str) -> np.ndarray:
    """`array` viewed with a client-declared `shape`, once the shape is checked."""
    check(shape, what)
    return array.reshape(shape)


def listed(value: object) -> object:
    """A shape as a list: json_document hands every array of numbers over as a JsonTensor,
    a shape too. Anything else is left for the schema to judge."""
    if isinstance(value, JsonTensor):
        if value.size > MAX_RANK:
            raise InvalidArgument(f"a shape has rank {value.size}; at most {MAX_RANK} is supported")
        return value.to_python()
    return value
