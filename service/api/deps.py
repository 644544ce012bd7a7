"""What routes take from app.state: the engine, and for the inference routes a Runtime.

The inference routes call `runtime(request)` themselves instead of declaring FastAPI
dependencies: solving dependencies cost more per request than a small request's whole
computation (bench/http.py). The metadata routes keep the declarative `EngineDep`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from service.api.admission import ComputePool, MemoryBudget
from service.engine.engine import Engine
from service.errors import NotReady
from service.settings import Settings


def _engine(request: Request) -> Engine:
    engine: Engine | None = getattr(request.app.state, "engine", None)
    if engine is None:
        raise NotReady("the model sessions are not loaded yet (or are shutting down)")
    return engine


async def get_engine(request: Request) -> Engine:
    """`async` on purpose: FastAPI runs a plain `def` dependency in the thread pool."""
    return _engine(request)


EngineDep = Annotated[Engine, Depends(get_engine)]


@dataclass(frozen=True)
class Runtime:
    """What an inference route needs from the application."""

    settings: Settings
    engine: Engine
    budget: MemoryBudget
    pool: ComputePool


def runtime(request: Request) -> Runtime:
    state = request.app.state
    return Runtime(state.settings, _engine(request), state.budget, state.pool)
