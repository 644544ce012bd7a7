"""create_app(settings) -> FastAPI: the lifespan builds the engine; routers and handlers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.concurrency import run_in_threadpool

from service import __version__, logs
from service.api import errors, openapi, ops, v1, v2
from service.api.admission import ComputePool, MemoryBudget, default_budget
from service.api.auth import ApiKeyMiddleware
from service.api.metrics import ObservabilityMiddleware
from service.engine.engine import Engine
from service.engine.sessions import usable_cpus
from service.settings import Settings

log = logging.getLogger("service")


def create_app(settings: Settings | None = None) -> FastAPI:
    """The application; nothing heavy happens until its lifespan starts."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = await run_in_threadpool(
            Engine,
            providers=settings.providers,
            intra_op_threads=settings.intra_op_threads,
            max_elements=settings.max_elements,
            chunked_softmax=settings.chunked_softmax,
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
            app.state.pool.close()

    app = FastAPI(
        title="Softmax cross entropy service",
        version=__version__,
        summary="tf.nn.softmax_cross_entropy_with_logits_v2 and its gradients, via ONNX Runtime",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = None
    app.state.budget = MemoryBudget(
        settings.memory_budget or default_budget(settings.workers),
        max_queue=settings.max_queue,
        timeout=settings.queue_timeout,
    )
    app.state.pool = ComputePool(settings.compute_threads or usable_cpus())
    errors.register(app)
    # The inference routes first: routes are matched in order, and they are the hot ones.
    app.include_router(v2.inference)
    app.include_router(v1.router)
    app.include_router(v2.router)
    app.include_router(ops.router)
    if settings.api_key is not None:  # inside CORS, so that preflights need no key
        app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Inference-Header-Content-Length"],
            expose_headers=["Inference-Header-Content-Length", "X-Request-ID"],
        )
    app.add_middleware(ObservabilityMiddleware)
    openapi.install(app)
    return app


def app_from_environment() -> FastAPI:
    """uvicorn factory for worker processes: settings from SCE_* variables."""
    logs.lean_records()
    return create_app(Settings())
