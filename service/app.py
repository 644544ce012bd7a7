"""create_app(settings) -> FastAPI: the lifespan builds the engine; routers and handlers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from service import __version__
from service.api import errors, ops, v1, v2
from service.engine.engine import Engine
from service.settings import Settings

log = logging.getLogger("service")


def create_app(settings: Settings | None = None) -> FastAPI:
    """The application; nothing heavy happens until its lifespan starts."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = await run_in_threadpool(
            Engine, providers=settings.providers, intra_op_threads=settings.intra_op_threads
        )
        log.info(
            "sessions ready on %s with %d intra-op threads",
            ", ".join(engine.providers),
            engine.intra_op_threads,
        )
        app.state.engine = engine
        try:
            yield
        finally:
            app.state.engine = None

    app = FastAPI(
        title="Softmax cross entropy service",
        version=__version__,
        summary="tf.nn.softmax_cross_entropy_with_logits_v2 and its gradients, via ONNX Runtime",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = None
    errors.register(app)
    app.include_router(v1.router)
    app.include_router(ops.router)
    app.include_router(v2.router)
    return app


def app_from_environment() -> FastAPI:
    """uvicorn factory for worker processes: settings from SCE_* variables."""
    return create_app(Settings())
