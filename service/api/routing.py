"""The inference endpoints: documented by FastAPI, served through a short stack of their own.

    uvicorn -> ServiceApp: a POST to an inference route -> hot stack:
                 ServerErrorMiddleware -> the app's own middleware (observability, auth,
                 CORS) -> ExceptionMiddleware (the app's handlers) -> DirectRoute.handle
               anything else, or native telemetry on -> FastAPI's whole stack

The hot stack leaves out what those routes never use: FastAPI's telemetry and body-limit
middleware (inactive unless configured), its exit stack (for dependencies and files), and
the router's walk over every route.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.routing import APIRoute
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

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


class ServiceApp(FastAPI):
    """FastAPI, whose inference routes (DirectRoute, POST) are served by a hot stack built
    from the same parts as FastAPI's: the app's error handlers and its middleware, in the
    same order (module docstring). It took ~25 us off a 32 x 10 request in process, part
    of the 0.75x in docs/benchmarks.md, section (l)."""

    hot_stack: ASGIApp | None = None

    def build_middleware_stack(self) -> ASGIApp:
        # Built when the first scope (the lifespan's) comes in; by then the tracer or
        # meter providers that turn FastAPI's native telemetry on are set, or never are.
        # With it on, every request takes FastAPI's stack, whose spans it makes.
        telemetry = self._native_telemetry.enabled()
        self.hot_stack = None if telemetry else self._build_hot_stack()
        return super().build_middleware_stack()

    def _build_hot_stack(self) -> ASGIApp:
        routes = [
            r
            for r in self.router.routes
            if isinstance(r, DirectRoute) and "POST" in (r.methods or ())
        ]
        fixed = {r.path: r for r in routes if not r.param_convertors}
        templated = [r for r in routes if r.param_convertors]
        error_handler = None
        handlers: dict[Any, Any] = {}
        for key, value in self.exception_handlers.items():
            if key in (500, Exception):
                error_handler = value
            else:
                handlers[key] = value

        async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
            await scope["route"].handle(scope, receive, send)

        app: ASGIApp = ExceptionMiddleware(dispatch, handlers=handlers, debug=self.debug)
        for cls, args, kwargs in reversed(self.user_middleware):
            app = cls(app, *args, **kwargs)
        self._hot_routes = (fixed, templated)
        return ServerErrorMiddleware(app, handler=error_handler, debug=self.debug)

    def _hot_route(self, scope: Scope) -> DirectRoute | None:
        """The inference route a POST is for, its match written into the scope as the
        router would; None for any other path."""
        fixed, templated = self._hot_routes
        route = fixed.get(scope["path"])
        if route is not None:
            scope["endpoint"] = route.endpoint
            scope["route"] = route
            return route
        for candidate in templated:
            match, child = candidate.matches(scope)  # sets "route" and the path parameters
            if match is Match.FULL:
                scope.update(child)
                return candidate
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not self.root_path:
            if self.middleware_stack is None:
                self.middleware_stack = self.build_middleware_stack()
            if self.hot_stack is not None and self._hot_route(scope) is not None:
                scope["app"] = self
                await self.hot_stack(scope, receive, send)
                return
        await super().__call__(scope, receive, send)
