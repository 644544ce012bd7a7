"""Floors: bare FastAPI endpoints, run under the same uvicorn settings as the service."""

from __future__ import annotations

import numpy as np
import orjson
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


@app.post("/parse")
async def parse(request: Request) -> Response:
    """The small-request floor of issue 11: parse the same JSON into arrays, and answer."""
    document = orjson.loads(await request.body())
    arrays = [np.asarray(document[name], np.float32) for name in ("labels", "logits")]
    return Response(orjson.dumps({"elements": sum(a.size for a in arrays)}))
