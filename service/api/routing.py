"""The route class of the inference endpoints: documented by FastAPI, served directly."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from fastapi import Request
from fastapi.routing import APIRoute
from starlette.types import Receive, Scope, Send

from service.api import stages


class DirectRoute(APIRoute):
    """An APIRoute whose endpoint takes the Request and returns a Response itself.

    FastAPI builds its OpenAPI operation as for any route (from `openapi_extra`, since
    the endpoint declares no parameters), but a request calls the endpoint without
    FastAPI's per-request machinery (dependency solving, exit stacks, response
    handling). That machinery cost ~45 us a request on FastAPI 0.165, more than the
    ONNX Runtime run of a small request. Errors propagate to the app's handlers.
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        self.observed = endpoint in stages.OBSERVED
        self.model = stages.OBSERVED.get(endpoint)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.methods and scope["method"] not in self.methods:
            await super().handle(scope, receive, send)  # FastAPI's 405
            return
        endpoint = cast(stages.Endpoint, self.endpoint)
        request = Request(scope, receive, send)
        if not self.observed:
            response = await endpoint(request)
        else:  # the stage timeline, made current here rather than in a wrapper coroutine
            timeline = stages.begin(request, self.model)
            token = stages.CURRENT.set(timeline)
            try:
                response = await endpoint(request)
            except BaseException as exc:
                timeline.failed(exc)
                raise
            finally:
                stages.CURRENT.reset(token)
        await response(scope, receive, send)
