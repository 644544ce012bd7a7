"""Floors: bare FastAPI endpoints, run under the same uvicorn settings as the service."""

from __future__ import annotations

from fastapi import FastAPI, Request, Response

app = FastAPI()


@app.post("/echo-size")
async def echo_size(request: Request) -> dict[str, int]:
    """The byte floor: read the body, answer its size."""
    return {"bytes": len(await request.body())}


@app.post("/echo")
async def echo(request: Request) -> Response:
    """The small-request floor: send the JSON body back."""
    return Response(await request.body(), media_type="application/json")
