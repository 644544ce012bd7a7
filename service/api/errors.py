"""One table from domain error to HTTP status, and the handlers that use it.

v1 bodies are FastAPI's ``{"detail": ...}``; v2 bodies are the Open Inference
Protocol's ``{"error": ...}``. No exception names or tracebacks reach a client.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service import errors

log = logging.getLogger(__name__)

STATUS: dict[type[errors.ServiceError], int] = {
    errors.MalformedBody: 400,
    errors.ModelNotFound: 404,
    errors.RequestTimeout: 408,
    errors.PayloadTooLarge: 413,
    errors.UnsupportedMediaType: 415,
    errors.InvalidArgument: 422,
    errors.NotReady: 503,
    errors.Overloaded: 503,
    errors.EngineFailure: 503,
}


def status_of(exc: errors.ServiceError) -> int:
    """The status for a domain error: its nearest class in the table."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 400


def error_response(
    path: str, status: int, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The body each protocol's clients expect, by the request's path."""
    key = "error" if path.startswith("/v2") else "detail"
    return JSONResponse({key: message}, status_code=status, headers=headers)


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.ServiceError)
    status = status_of(exc)
    headers = {"Retry-After": "1"} if status == 503 else None
    return error_response(request.url.path, status, str(exc), headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(request.url.path, 422, describe_validation(exc.errors()))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return error_response(request.url.path, exc.status_code, str(exc.detail), exc.headers)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(request.url.path, 500, "internal error; the server logged it")


def describe_validation(problems: object) -> str:
    """pydantic/FastAPI validation errors as one sentence a person can act on."""
    parts = []
    for problem in problems if isinstance(problems, list) else []:
        loc = ".".join(str(p) for p in problem.get("loc", ()) if p not in ("body", "query"))
        if problem.get("type") == "extra_forbidden":
            parts.append(f"unknown argument {loc!r}")
        else:
            parts.append(f"{loc}: {problem.get('msg', 'invalid')}" if loc else problem["msg"])
    return "; ".join(parts) or "invalid request"


def register(app: FastAPI) -> None:
    """Install the handlers on an app."""
    app.add_exception_handler(errors.ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
