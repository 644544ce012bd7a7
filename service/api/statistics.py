"""Triton's statistics extension: per-model counts and cumulative durations, from the
stage timelines (service/api/stages.py) of both the v2 and the native v1 routes.

`GET /v2/models/stats`, `GET /v2/models/{model}/stats` and
`GET /v2/models/{model}/versions/{version}/stats` answer what tritonclient's
`get_inference_statistics` reads, as Triton writes it (core's
`TRITONSERVER_ServerModelStatistics`): success and fail count and ns from the request's
arrival to its response sent (or its failure), queue (waiting for memory and a compute
thread), compute_input (decoding the inputs), compute_infer (the engine), compute_output
(encoding the response). There is no batching and no response cache: inference_count
and execution_count are the success count, batch_stats is empty, cache hits are 0.

Each worker process counts into a small array of int64. With several workers (the
Prometheus multiprocess directory is set, see service/api/metrics.py), each worker's
array is a file there that every worker maps, and a statistics request adds them all
up: the figures are the server's, not one worker's, at the cost of plain memory writes.
"""

from __future__ import annotations

import mmap
import os
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from service.api.stages import Timeline
from service.api.v2 import GET_ERRORS, MODEL_ERRORS, MODELS
from service.codecs.text import quote
from service.errors import ModelNotFound

VERSION = "1"  # each model has one version

# One row of int64 per model, in this order.
FIELDS = (
    "success_count",
    "success_ns",
    "fail_count",
    "fail_ns",
    "queue_ns",
    "input_ns",
    "infer_ns",
    "output_ns",
    "last_inference_ms",
)
(SUCCESS_COUNT, SUCCESS_NS, FAIL_COUNT, FAIL_NS, QUEUE_NS, INPUT_NS, INFER_NS, OUTPUT_NS, LAST) = (
    range(len(FIELDS))
)
ROW = len(FIELDS)
FILE_PREFIX = "sce-statistics-"


class Statistics:
    """This process's counts, by model; written on the event loop only."""

    def __init__(self, models: tuple[str, ...], directory: Path | None = None) -> None:
        self.models = models
        self.rows = {name: i * ROW for i, name in enumerate(models)}
        size = len(models) * ROW * 8
        self.directory = directory
        if directory is None:
            self._buffer: bytearray | mmap.mmap = bytearray(size)
        else:  # a file per worker, which the other workers read
            path = directory / f"{FILE_PREFIX}{os.getpid()}.bin"
            with path.open("w+b") as file:
                file.truncate(size)
                self._buffer = mmap.mmap(file.fileno(), size)
        self.values = memoryview(self._buffer).cast("q")

    @classmethod
    def for_process(cls, models: tuple[str, ...]) -> Statistics:
        """Shared through the Prometheus multiprocess directory when there is one."""
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        return cls(models, Path(directory) if directory else None)

    def record(self, timeline: Timeline, end: int, ok: bool) -> None:
        """Add one request; a model this server does not have is not counted."""
        row = self.rows.get(timeline.model)
        if row is None:
            return
        values = self.values
        if ok:
            # The parts first, then the whole: a reader in between sees success >= parts.
            queued = timeline.queued or timeline.parsed
            decoded = timeline.decoded or queued
            computed = timeline.computed or decoded
            values[row + QUEUE_NS] += queued - timeline.parsed
            values[row + INPUT_NS] += decoded - queued
            values[row + INFER_NS] += computed - decoded
            values[row + OUTPUT_NS] += (timeline.encoded or computed) - computed
            values[row + SUCCESS_NS] += end - timeline.start
            values[row + SUCCESS_COUNT] += 1
        else:
            values[row + FAIL_NS] += end - timeline.start
            values[row + FAIL_COUNT] += 1
        values[row + LAST] = time.time_ns() // 1_000_000

    def totals(self) -> dict[str, list[int]]:
        """Every worker's counts added up (this process's alone without a directory)."""
        sums = {name: list(self.values[row : row + ROW]) for name, row in self.rows.items()}
        if self.directory is None:
            return sums
        sums = {name: [0] * ROW for name in self.models}
        for path in self.directory.glob(f"{FILE_PREFIX}*.bin"):
            try:
                data = memoryview(path.read_bytes()).cast("q")
            except (OSError, TypeError):  # gone, or not yet its full size
                continue
            for name, row in self.rows.items():
                if row + ROW > len(data):
                    continue
                total = sums[name]
                for i in range(ROW):
                    value = data[row + i]
                    total[i] = max(total[i], value) if i == LAST else total[i] + value
        return sums


class DurationStat(BaseModel):
    """How many times, and their cumulative duration in nanoseconds."""

    model_config = ConfigDict(extra="forbid")

    count: int
    ns: int


class InferStatistics(BaseModel):
    """Triton's inference_stats of a model."""

    model_config = ConfigDict(extra="forbid")

    success: DurationStat
    fail: DurationStat
    queue: DurationStat
    compute_input: DurationStat
    compute_infer: DurationStat
    compute_output: DurationStat
    cache_hit: DurationStat
    cache_miss: DurationStat


class ModelStatistics(BaseModel):
    """One model (version)'s statistics, in Triton's shape."""

    model_config = ConfigDict(extra="forbid")

    name: str
    version: str
    last_inference: int  # ms since the epoch; 0 before any request
    inference_count: int
    execution_count: int
    inference_stats: InferStatistics
    response_stats: dict[str, Any]  # decoupled models only: always empty here
    batch_stats: list[Any]  # no batching here: always empty
    memory_usage: list[Any]


class StatisticsResponse(BaseModel):
    """The statistics extension's answer."""

    model_config = ConfigDict(extra="forbid")

    model_stats: list[ModelStatistics]


def _model_statistics(name: str, v: list[int]) -> ModelStatistics:
    successes = v[SUCCESS_COUNT]

    def stat(count: int, ns: int) -> DurationStat:
        return DurationStat(count=count, ns=ns)

    return ModelStatistics(
        name=name,
        version=VERSION,
        last_inference=v[LAST],
        inference_count=successes,
        execution_count=successes,
        inference_stats=InferStatistics(
            success=stat(successes, v[SUCCESS_NS]),
            fail=stat(v[FAIL_COUNT], v[FAIL_NS]),
            queue=stat(successes, v[QUEUE_NS]),
            compute_input=stat(successes, v[INPUT_NS]),
            compute_infer=stat(successes, v[INFER_NS]),
            compute_output=stat(successes, v[OUTPUT_NS]),
            cache_hit=stat(0, 0),
            cache_miss=stat(0, 0),
        ),
        response_stats={},
        batch_stats=[],
        memory_usage=[],
    )


def _answer(request: Request, model: str | None, version: str | None) -> StatisticsResponse:
    if model is not None and model not in MODELS:
        raise ModelNotFound(f"unknown model {quote(model)}; models: {', '.join(MODELS)}")
    if version is not None and version != VERSION:
        raise ModelNotFound(f"model {model!r} has no version {quote(version)}; versions: {VERSION}")
    statistics: Statistics = request.app.state.recorder.statistics
    totals = statistics.totals()
    names = [model] if model is not None else list(statistics.models)
    return StatisticsResponse(model_stats=[_model_statistics(n, totals[n]) for n in names])


# Included before v2's router: /v2/models/stats is not the metadata of a model "stats".
router = APIRouter(prefix="/v2", tags=["open inference protocol"])


@router.get(
    "/models/stats",
    operation_id="models_statistics",
    summary="Statistics of every model (Triton's extension)",
    responses=GET_ERRORS,
)
def models_statistics(request: Request) -> StatisticsResponse:
    """Counts and cumulative durations (ns) of each model's requests, v1 and v2 alike."""
    return _answer(request, None, None)


@router.get(
    "/models/{model}/stats",
    operation_id="model_statistics",
    summary="Statistics of a model (Triton's extension)",
    responses=MODEL_ERRORS,
)
def model_statistics(request: Request, model: str) -> StatisticsResponse:
    """As `GET /v2/models/stats`, for one model."""
    return _answer(request, model, None)


@router.get(
    "/models/{model}/versions/{version}/stats",
    operation_id="model_version_statistics",
    summary="Statistics of a model version (Triton's extension)",
    responses=MODEL_ERRORS,
)
def model_version_statistics(request: Request, model: str, version: str) -> StatisticsResponse:
    """As `GET /v2/models/{model}/stats`; each model has one version, "1"."""
    return _answer(request, model, version)
