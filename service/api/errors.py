"""One table from domain error to HTTP status, and the handlers that use it.

v1 bodies are FastAPI's ``{"detail": ...}``; v2 bodies are the Open Inference
Protocol's ``{"error": ...}``. No exception names or tracebacks reach a client, and
every message is bounded and valid UTF-8 here, in `error_response`, whatever it quotes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service import errors
from service.codecs.text import bounded, json_value, quote

log = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 400  # of an error message; what a client sent is named, not echoed
MAX_PROBLEMS = 3  # validation problems described in one message

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
    """The body each protocol's clients expect, by the request's path; the message cut
    to MAX_MESSAGE_CHARS with invalid Unicode escaped (it may quote what a client sent)."""
    key = "error" if path.startswith("/v2") else "detail"
    content = {key: bounded(message, MAX_MESSAGE_CHARS)}
    return JSONResponse(content, status_code=status, headers=headers)


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


_KINDS = {
    "int_type": "a JSON integer",
    "int_parsing": "a JSON integer",
    "int_from_float": "a JSON integer",
    "bool_type": "a JSON boolean",
    "bool_parsing": "a JSON boolean",
}


def _describe(problem: dict[str, object]) -> str:
    where = problem.get("loc", ())
    path = where if isinstance(where, tuple | list) else ()
    loc = ".".join(str(p) for p in path if p not in ("body", "query"))
    kind = problem.get("type")
    message = str(problem.get("msg", "invalid"))
    ctx = problem.get("ctx")
    if kind == "extra_forbidden" and not (isinstance(ctx, dict) and "names" in ctx):
        return f"unknown argument {quote(loc)}"
    if kind == "string_unicode":  # a lone UTF-16 surrogate, from a "\ud800" escape
        got = f"; got {json_value(problem['input'])}" if "input" in problem else ""
        return f"{loc or 'value'} must be valid Unicode (no lone UTF-16 surrogate){got}"
    if kind in _KINDS and "input" in problem:
        return f"{loc or 'value'} must be {_KINDS[str(kind)]}; got {json_value(problem['input'])}"
    return f"{loc}: {message}" if loc else message


def describe_validation(problems: object) -> str:
    """pydantic/FastAPI validation errors as one sentence a person can act on: the
    first MAX_PROBLEMS of them, and how many more."""
    items = problems if isinstance(problems, list) else []
    parts = [_describe(p) for p in items[:MAX_PROBLEMS] if isinstance(p, dict)]
    if len(items) > MAX_PROBLEMS:
        parts.append(f"and {len(items) - MAX_PROBLEMS} more problems")
    return "; ".join(parts) or "invalid request"


def register(app: FastAPI) -> None:
    """Install the handlers on an app."""
    app.add_exception_handler(errors.ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
