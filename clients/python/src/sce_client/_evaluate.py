"""Stream a dataset through the service and get its exact mean loss.

Each batch asks for `reduction="sum"` and the output `weight_sum`, so two numbers come
back per batch; the dataset mean is the sum of the batches' sums over the sum of their
weights (both summed exactly, `math.fsum`, in float64). That is the mean one call on
the whole dataset gives, whatever the batch sizes and however many positions a batch
ignores; a mean of batch means is not.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping, Sized
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy.typing as npt

from sce_client._client import AsyncClient, Client, Result

# A batch: (labels, logits), or a mapping with "labels", "logits" and optionally
# "sample_weights" (and any other keyword of the operation, e.g. "class_weights").
Batch = tuple[npt.ArrayLike, npt.ArrayLike] | Mapping[str, Any]


@dataclass(frozen=True)
class Aggregate:
    """A dataset's summed loss, its summed weight (the mean's denominator), and the mean."""

    loss_sum: float
    weight_sum: float
    batches: int

    @property
    def mean(self) -> float:
        return self.loss_sum / self.weight_sum if self.weight_sum else math.nan


class _Bar(Protocol):
    def update(self, n: int = 1) -> object: ...
    def set_postfix(self, mean: str) -> object: ...


class _Sums:
    """The per-batch sums, added exactly at the end, and the progress bar."""

    def __init__(self, bar: _Bar | None) -> None:
        self.losses: list[float] = []
        self.weights: list[float] = []
        self.bar = bar

    def add(self, out: Result) -> None:
        self.losses.append(float(out["loss"]))
        self.weights.append(float(out["weight_sum"]))
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(mean=f"{self.result().mean:.6g}")

    def result(self) -> Aggregate:
        return Aggregate(math.fsum(self.losses), math.fsum(self.weights), len(self.losses))


@contextmanager
def _progress(show: bool, total: int | None, description: str) -> Iterator[_Bar | None]:
    """A tqdm bar when tqdm is installed (pip install 'sce-client[progress]'), else none."""
    if not show:
        yield None
        return
    try:
        from tqdm import tqdm
    except ImportError:
        yield None
        return
    with tqdm(total=total, unit="batch", desc=description) as bar:
        yield bar


def _arguments(batch: Batch, options: dict[str, Any]) -> dict[str, Any]:
    if isinstance(batch, Mapping):
        arguments = dict(batch)
    else:
        labels, logits = batch
        arguments = {"labels": labels, "logits": logits}
    return {**options, **arguments, "reduction": "sum", "outputs": ("loss", "weight_sum")}


def _options(
    dim: int,
    ignore_index: int | None,
    label_smoothing: float,
    class_weights: npt.ArrayLike | None,
    sparse: bool,
) -> dict[str, Any]:
    options: dict[str, Any] = {"dim": dim, "label_smoothing": label_smoothing}
    if class_weights is not None:
        options["class_weights"] = class_weights
    if ignore_index is not None:
        if not sparse:
            raise TypeError("ignore_index takes integer labels: pass sparse=True")
        options["ignore_index"] = ignore_index
    return options


def evaluate(
    client: Client,
    batches: Iterable[Batch],
    *,
    sparse: bool = False,
    dim: int = -1,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    class_weights: npt.ArrayLike | None = None,
    progress: bool = True,
    total: int | None = None,
    description: str = "evaluating",
) -> Aggregate:
    """Send `batches` one after the other; the dataset's exact summed loss, weight and mean.

    `sparse` selects the sparse op (integer labels; `ignore_index` marks padding). A
    progress bar shows when `progress` and tqdm is installed; `total` defaults to
    `len(batches)` when it has one.
    """
    options = _options(dim, ignore_index, label_smoothing, class_weights, sparse)
    call = client.sparse_softmax_cross_entropy if sparse else client.softmax_cross_entropy
    if total is None and isinstance(batches, Sized):
        total = len(batches)
    with _progress(progress, total, description) as bar:
        sums = _Sums(bar)
        for batch in batches:
            sums.add(call(**_arguments(batch, options)))
    return sums.result()


async def evaluate_async(
    client: AsyncClient,
    batches: Iterable[Batch] | AsyncIterable[Batch],
    *,
    sparse: bool = False,
    dim: int = -1,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    class_weights: npt.ArrayLike | None = None,
    progress: bool = True,
    total: int | None = None,
    description: str = "evaluating",
    concurrency: int = 2,
) -> Aggregate:
    """`evaluate` with an `AsyncClient`, up to `concurrency` batches in flight (the sums
    are exact, so the order they come back in does not matter)."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    options = _options(dim, ignore_index, label_smoothing, class_weights, sparse)
    call = client.sparse_softmax_cross_entropy if sparse else client.softmax_cross_entropy
    if total is None and isinstance(batches, Sized):
        total = len(batches)

    async def each() -> AsyncIterator[Batch]:
        if isinstance(batches, AsyncIterable):
            async for batch in batches:
                yield batch
        else:
            for batch in batches:
                yield batch

    with _progress(progress, total, description) as bar:
        sums = _Sums(bar)
        pending: set[asyncio.Task[Result]] = set()
        try:
            async for batch in each():
                if len(pending) >= concurrency:
                    done, pending = await asyncio.wait(pending, return_when="FIRST_COMPLETED")
                    for task in done:
                        sums.add(task.result())
                pending.add(asyncio.create_task(call(**_arguments(batch, options))))
            for finished in asyncio.as_completed(pending):
                sums.add(await finished)
            pending = set()
        finally:
            for task in pending:  # an error or a cancellation: stop the batches in flight
                task.cancel()
    return sums.result()
