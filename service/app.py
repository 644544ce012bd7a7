"""create_app(settings) -> ServiceApp: the lifespan builds the engine; routers and handlers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.concurrency import run_in_threadpool

from service import __version__, logs
from service.api import errors, openapi, ops, statistics, tracing, v1, v2
from service.api.admission import ComputePool, MemoryBudget, default_budget
from service.api.auth import ApiKeyMiddleware
from service.api.metrics import ObservabilityMiddleware
from service.api.routing import ServiceApp
from service.api.stages import Recorder
from service.engine.engine import Engine
from service.engine.sessions import usable_cpus
from service.settings import Settings

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

log = logging.getLogger("service")


def create_app(
    settings: Settings | None = None, *, tracer_provider: TracerProvider | None = None
) -> ServiceApp:
    """The application; nothing heavy happens until its lifespan starts. Traces go to
    `tracer_provider`, else where the OTEL_* variables say (service/api/tracing.py)."""
    settings = settings or Settings()
    tracer_provider = tracer_provider or tracing.provider_from_environment()

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
            logs.flush_batches()  # the last requests' access lines

    app = ServiceApp(
        title="Softmax cross entropy service",
        version=__version__,
        summary="tf.nn.softmax_cross_entropy_with_logits_v2 and its gradients, via ONNX Runtime",
        lifespan=lifespan,
        telemetry=tracing.fastapi_telemetry(tracer_provider),
        docs_url=None,  # openapi.install_docs serves them without a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.engine = None
    app.state.budget = MemoryBudget(
        settings.memory_budget or default_budget(settings.workers),
        max_queue=settings.max_queue,
        timeout=settings.queue_timeout,
    )
    app.state.pool = ComputePool(settings.compute_threads or usable_cpus())
    app.state.recorder = Recorder(
        statistics.Statistics.for_process(tuple(v2.MODELS)),
        tracing.StageTracer(tracer_provider) if tracer_provider is not None else None,
    )
    errors.register(app)
    # The inference routes go first on the app's own router, not through include_router:
    # ServiceApp finds its hot routes there (FastAPI 0.165 keeps an included router as one
    # wrapper entry), and on FastAPI's whole stack (telemetry on) routes are matched in
    # order, that wrapper costing ~18 us a request in process. Their paths carry their
    # routers' prefixes.
    app.router.routes[:0] = [*v2.inference.routes, *v1.router.routes]
    app.include_router(statistics.router)  # before v2's: /v2/models/stats is no model
    app.include_router(v2.router)
    app.include_router(ops.router)
    openapi.install_docs(app)
    if settings.api_key is not None:  # inside CORS, so that preflights need no key
        app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "Inference-Header-Content-Length",
                "traceparent",  # W3C trace context, honoured when tracing is on
                "tracestate",
            ],
            expose_headers=[
                "Inference-Header-Content-Length",
                "X-Request-ID",
                "traceparent",
                "tracestate",
            ],
        )
    if tracer_provider is not None:
        app.add_middleware(tracing.TraceResponseMiddleware)
    app.add_middleware(ObservabilityMiddleware)
    openapi.install(app)
    return app


def app_from_environment() -> ServiceApp:
    """uvicorn factory for worker processes: settings from SCE_* variables."""
    logs.lean_records()
    return create_app(Settings())
