"""Operations: health probes (the Open Inference Protocol's), open to probes without a key."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter(tags=["health"])


@router.get("/v2/health/live", operation_id="server_live", summary="Liveness")
async def live() -> dict[str, bool]:
    """200 while the process serves HTTP."""
    return {"live": True}


@router.get(
    "/v2/health/ready",
    operation_id="server_ready",
    summary="Readiness",
    responses={503: {"description": "Sessions not loaded, or shutting down"}},
)
async def ready(request: Request) -> JSONResponse:
    """200 once every session is built; 503 before and while shutting down."""
    is_ready = getattr(request.app.state, "engine", None) is not None
    return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)
