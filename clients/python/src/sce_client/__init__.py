"""A client for the softmax cross entropy service: numpy in, numpy out.

    from sce_client import Client
    with Client("http://127.0.0.1:8000") as client:
        out = client.softmax_cross_entropy(labels=y, logits=x, outputs=["loss", "grad_logits"])

`AsyncClient` has the same calls, awaited; `evaluate` streams a dataset through the
service and returns its exact mean loss. Errors are `sce_client.Error` and its subclasses.
"""

from sce_client._client import AsyncClient, Client, Output, Reduction, Result, Transport
from sce_client._errors import (
    BadRequest,
    ConnectError,
    Error,
    PayloadTooLarge,
    ProtocolError,
    ServiceError,
    Timeout,
    TransportError,
    Unauthorized,
    Unavailable,
)
from sce_client._evaluate import Aggregate, Batch, evaluate, evaluate_async

__version__ = "0.1.0"
__all__ = [
    "Aggregate",
    "AsyncClient",
    "BadRequest",
    "Batch",
    "Client",
    "ConnectError",
    "Error",
    "Output",
    "PayloadTooLarge",
    "ProtocolError",
    "Reduction",
    "Result",
    "ServiceError",
    "Timeout",
    "Transport",
    "TransportError",
    "Unauthorized",
    "Unavailable",
    "evaluate",
    "evaluate_async",
]
