"""The route class of the inference endpoints: documented by FastAPI, served directly."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import cast

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.types import Receive, Scope, Send

Endpoint = Callable[[Request], Awaitable[Response]]


class DirectRoute(APIRoute):
    """An APIRoute whose endpoint takes the Request and returns a Response itself.

    FastAPI builds its OpenAPI operation as for any route (from `openapi_extra`, since
    the endpoint declares no parameters), but a request calls the endpoint without
    FastAPI's per-request machinery (dependency solving, exit stacks, response
    handling). That machinery cost ~45 us a request on FastAPI 0.165, more than the
    ONNX Runtime run of a small request. Errors propagate to the app's handlers.
    """

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.methods and scope["method"] not in self.methods:
            await super().handle(scope, receive, send)  # FastAPI's 405
            return
        endpoint = cast(Endpoint, self.endpoint)
        response = await endpoint(Request(scope, receive, send))
        await response(scope, receive, send)
