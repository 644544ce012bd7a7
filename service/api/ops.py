"""Operations: health probes (the Open Inference Protocol's), open to probes without a key."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from service.api import metrics

router = APIRouter()


@router.get("/v2/health/live", operation_id="server_live", summary="Liveness", tags=["health"])
async def live() -> dict[str, bool]:
    """200 while the process serves HTTP."""
    return {"live": True}


@router.get(
    "/v2/health/ready",
    operation_id="server_ready",
    summary="Readiness",
    tags=["health"],
    responses={503: {"description": "Sessions not loaded, or shutting down"}},
)
async def ready(request: Request) -> JSONResponse:
    """200 once every session is built; 503 before and while shutting down."""
    is_ready = getattr(request.app.state, "engine", None) is not None
    return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)


@router.get(
    "/metrics",
    operation_id="metrics",
    summary="Prometheus metrics",
    tags=["operations"],
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def prometheus_metrics(request: Request) -> Response:
    """Request counts and latency by route and status, body sizes, inference time, in flight,
    memory held and requests waiting for it."""
    budget = getattr(request.app.state, "budget", None)
    if budget is not None:  # this worker's gauges as they are now (others: within 50 ms)
        budget.write_gauges()
    body, content_type = await run_in_threadpool(metrics.render)  # reads files: off the loop
    return Response(body, media_type=content_type)
