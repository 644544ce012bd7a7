"""What the client raises: one tree, so that `except sce_client.Error` catches all of it.

Error                    anything this package raises
├── TransportError       no answer came
│   ├── ConnectError     the server could not be reached (also a ConnectionError)
│   └── Timeout          connect or read timeout (also a TimeoutError)
├── ProtocolError        an answer this client cannot read
└── ServiceError         the server answered an error status: `.status`, `.message`
    ├── BadRequest       400 malformed body, 422 invalid arguments
    ├── Unauthorized     401 API key missing or wrong
    ├── PayloadTooLarge  413 body over the server's limit
    └── Unavailable      503, still, after the retries
"""

from __future__ import annotations

import json
from typing import Any

# An error body is the server's sentence; anything longer is not worth a message.
MAX_MESSAGE = 2000


class Error(Exception):
    """Base of everything sce_client raises."""


class TransportError(Error):
    """No answer came from the server."""


class ConnectError(TransportError, ConnectionError):
    """The server could not be reached (refused, unresolvable, reset)."""


class Timeout(TransportError, TimeoutError):
    """The server was not reached, or did not answer, within the client's timeouts."""


class ProtocolError(Error):
    """The server's answer is not one this client can read."""


class ServiceError(Error):
    """The server answered with an error status; `status` and `message` (its words) say which."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class BadRequest(ServiceError):
    """400 (malformed body) or 422 (well-formed but invalid arguments: shapes, dtypes, options)."""


class Unauthorized(ServiceError):
    """401: the server wants an API key and got none or a wrong one."""


class PayloadTooLarge(ServiceError):
    """413: the request body is over the server's limit (send smaller batches)."""


class Unavailable(ServiceError):
    """503: the server is not ready or its queue is full, still after the client's retries."""


_BY_STATUS: dict[int, type[ServiceError]] = {
    400: BadRequest,
    401: Unauthorized,
    413: PayloadTooLarge,
    422: BadRequest,
    503: Unavailable,
}


def message_of(body: bytes | bytearray) -> str:
    """The server's words in an error body: v1's `detail`, v2's `error`, or the text."""
    try:
        document: Any = json.loads(body)
    except ValueError:
        return bytes(body[:MAX_MESSAGE]).decode("utf-8", "replace")
    text: Any = document
    if isinstance(document, dict):
        text = document.get("detail", document.get("error", document))
    if isinstance(text, list):  # FastAPI's validation errors: a list of {"msg": ...}
        text = "; ".join(str(e.get("msg", e)) if isinstance(e, dict) else str(e) for e in text)
    return str(text)[:MAX_MESSAGE]


def service_error(status: int, body: bytes | bytearray) -> ServiceError:
    """The typed error for an error status and its body."""
    return _BY_STATUS.get(status, ServiceError)(status, message_of(body))
