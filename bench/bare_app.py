"""The byte floor: a bare FastAPI endpoint that reads the body and answers its size."""

from __future__ import annotations

from fastapi import FastAPI, Request

app = FastAPI()


@app.post("/echo-size")
async def echo_size(request: Request) -> dict[str, int]:
    return {"bytes": len(await request.body())}
