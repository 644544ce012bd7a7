"""The native API: named arguments in, the requested outputs out (JSON)."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from service.api.body import read_body
from service.api.deps import EngineDep, SettingsDep
from service.api.errors import describe_validation
from service.codecs import json_tensor
from service.engine.engine import Engine, LossResult
from service.engine.types import DType
from service.errors import InvalidArgument, MalformedBody, UnsupportedMediaType
from service.schemas import ErrorDetail, LossRequest, LossResponse, SparseLossRequest

router = APIRouter(prefix="/v1", tags=["native"])

JSON = "application/json"
Model = TypeVar("Model", bound=BaseModel)

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorDetail, "description": text}
    for status, text in {
        400: "Malformed body (bad JSON)",
        401: "API key missing or wrong",
        413: "Body over the configured limit",
        415: "Unsupported Content-Type",
        422: "Invalid arguments: shapes, dtypes, dim, label range, unknown members",
        503: "Not ready",
    }.items()
}


def _request_body(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {JSON: {"schema": model.model_json_schema()}},
        }
    }


def _media_type(request: Request) -> str:
    content_type = request.headers.get("content-type", JSON)
    return content_type.split(";", 1)[0].strip().lower()


def parse_arguments(body: bytes | bytearray, model: type[Model]) -> Model:
    """JSON bytes as a request model; only a JSON object of named arguments is accepted."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedBody(f"body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidArgument(
            "arguments must be named: send a JSON object such as "
            '{"labels": [...], "logits": [...]}, not a positional '
            f"{type(document).__name__}"
        )
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        message = describe_validation(exc.errors())
        if any(e["type"] == "extra_forbidden" for e in exc.errors()):
            allowed = ", ".join(model.model_fields)
            message += f"; arguments must be named, one of: {allowed}"
        raise InvalidArgument(message) from None


def encode_result(result: LossResult, name: str | None) -> bytes:
    """A LossResult as the JSON response document."""
    document: dict[str, Any] = {"name": name, "dtype": result.dtype.name}
    for output, array in result.items():
        document[output] = json_tensor.encode(array)
    return json_tensor.dumps(document)


def _soft_json(body: bytes | bytearray, engine: Engine) -> bytes:
    args = parse_arguments(body, LossRequest)
    dtype = DType[args.dtype]
    grad_loss = args.grad_loss
    result = engine.softmax_cross_entropy(
        labels=json_tensor.decode(args.labels, dtype, "labels"),
        logits=json_tensor.decode(args.logits, dtype, "logits"),
        dim=args.class_dim,
        grad_loss=None if grad_loss is None else json_tensor.decode(grad_loss, dtype, "grad_loss"),
        outputs=args.outputs,
    )
    return encode_result(result, args.name)


def _sparse_json(body: bytes | bytearray, engine: Engine) -> bytes:
    args = parse_arguments(body, SparseLossRequest)
    dtype = DType[args.dtype]
    grad_loss = args.grad_loss
    result = engine.sparse_softmax_cross_entropy(
        labels=json_tensor.decode(args.labels, DType[args.labels_dtype], "labels"),
        logits=json_tensor.decode(args.logits, dtype, "logits"),
        grad_loss=None if grad_loss is None else json_tensor.decode(grad_loss, dtype, "grad_loss"),
        outputs=args.outputs,
    )
    return encode_result(result, args.name)


async def _serve(request: Request, settings: SettingsDep, engine: Engine, handler: Any) -> Response:
    media_type = _media_type(request)
    if media_type != JSON:
        raise UnsupportedMediaType(f"Content-Type {media_type!r} is not supported; send {JSON}")
    body = await read_body(request, settings.max_request_bytes)
    # Decoding, the ORT run and encoding block: keep them off the event loop.
    content = await run_in_threadpool(handler, body, engine)
    return Response(content, media_type=JSON)


@router.post(
    "/softmax_cross_entropy_with_logits",
    operation_id="softmax_cross_entropy_with_logits",
    summary="Softmax cross entropy (tf.nn.softmax_cross_entropy_with_logits_v2)",
    response_model=LossResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=_request_body(LossRequest),
)
async def softmax_cross_entropy_with_logits(
    request: Request, settings: SettingsDep, engine: EngineDep
) -> Response:
    """Loss, and on request its gradients, for probability-distribution labels."""
    return await _serve(request, settings, engine, _soft_json)


@router.post(
    "/sparse_softmax_cross_entropy_with_logits",
    operation_id="sparse_softmax_cross_entropy_with_logits",
    summary="Sparse softmax cross entropy (tf.nn.sparse_softmax_cross_entropy_with_logits)",
    response_model=LossResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=_request_body(SparseLossRequest),
)
async def sparse_softmax_cross_entropy_with_logits(
    request: Request, settings: SettingsDep, engine: EngineDep
) -> Response:
    """Loss, and on request grad_logits, for integer class labels."""
    return await _serve(request, settings, engine, _sparse_json)
