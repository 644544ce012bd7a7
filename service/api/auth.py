"""The API key: with SCE_API_KEY set, the APIs need `Authorization: Bearer <key>`
(401 with `WWW-Authenticate: Bearer` otherwise).

An ASGI middleware rather than a FastAPI dependency: one check in front of every API
route (a new router cannot forget it), and it costs a header lookup where FastAPI's
dependency solving cost ~60 us a request, a quarter of a small request's compute.
Health probes and /metrics stay open for kubelets and scrapers.
"""

from __future__ import annotations

import hmac

from pydantic import SecretStr
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.errors import error_response

SCHEME = "HTTPBearer"
SECURITY_SCHEME = {
    "type": "http",
    "description": "`Authorization: Bearer <SCE_API_KEY>`",
    "scheme": "bearer",
}


def protected(path: str) -> bool:
    """Whether a path needs the key: the native API and the Open Inference Protocol's
    routes, less its health probes."""
    if path.startswith("/v2/health/"):
        return False
    return path == "/v2" or path.startswith(("/v1/", "/v2/"))


class ApiKeyMiddleware:
    """401 with `WWW-Authenticate: Bearer` for a protected path without the right key."""

    def __init__(self, app: ASGIApp, api_key: SecretStr) -> None:
        self.app = app
        self.expected = api_key.get_secret_value().encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not protected(scope["path"]):
            await self.app(scope, receive, send)
            return
        header = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        scheme, _, given = header.partition(b" ")
        if scheme.lower() != b"bearer" or not given:
            message = "this API needs an `Authorization: Bearer <key>` header"
        elif not hmac.compare_digest(given.strip(), self.expected):  # constant time
            message = "the API key is wrong"
        else:
            await self.app(scope, receive, send)
            return
        response = error_response(scope["path"], 401, message, {"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)
