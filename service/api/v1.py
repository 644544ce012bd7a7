"""The native API: named arguments in, the requested outputs out.

Bodies are JSON (arguments in the object) or safetensors (tensors in the body; `dim`,
`outputs`, `name` and the scalar evaluation options in the query string); the response
is JSON, or safetensors when the client sends `Accept: application/x-safetensors`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ValidationError
from starlette.datastructures import QueryParams

from service.api import inference, openapi, stages
from service.api.body import Body, body_limit
from service.api.deps import runtime
from service.api.errors import describe_validation
from service.api.inference import Tensor, class_dim, compute
from service.api.pipeline import Cost, Encoded, serve
from service.api.routing import DirectRoute
from service.codecs import json_document, json_tensor, safetensors, text
from service.codecs.json_document import JsonTensor
from service.engine.engine import LossResult
from service.engine.types import (
    DEFAULT_OPTIONS,
    REDUCTIONS,
    SOFT_OP,
    SPARSE_OP,
    WEIGHT_INPUTS,
    DType,
    Options,
)
from service.errors import InvalidArgument, UnsupportedMediaType
from service.schemas import ErrorDetail, LossRequest, LossResponse, SparseLossRequest

router = APIRouter(prefix="/v1", tags=["native"], route_class=DirectRoute)

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
SAFETENSORS = safetensors.MEDIA_TYPE
Model = TypeVar("Model", bound=BaseModel)

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorDetail, "description": text}
    for status, text in {
        400: "Malformed body (bad JSON, invalid safetensors)",
        401: "API key missing or wrong",
        408: "Body not received within SCE_BODY_TIMEOUT",
        413: "Body over the configured limit",
        415: "Unsupported Content-Type or Content-Encoding",
        422: "Invalid arguments: shapes, dtypes, dim, label range, options, unknown members",
        503: "Not ready, over the in-flight bound (Retry-After), or an ONNX Runtime failure",
    }.items()
}


NAME_MAX = 256


@dataclass(frozen=True)
class QueryArguments:
    """Arguments that travel in the query string with a safetensors body.

    Read by hand rather than declared as FastAPI query parameters: FastAPI's parsing
    cost ~65 us a request, more than a small request's ONNX Runtime run; the
    parameters are declared for OpenAPI in QUERY_PARAMETERS. The options are taken as
    sent (strictly parsed numbers): the engine judges their values.
    """

    dim: int | None = None
    axis: int | None = None
    outputs: str | None = None
    name: str | None = None
    reduction: str | None = None
    label_smoothing: float | None = None
    ignore_index: int | None = None

    @classmethod
    def of(cls, request: Request) -> QueryArguments:
        if not request.scope["query_string"]:  # Starlette's parse costs ~4 us even of nothing
            return NO_QUERY
        params = request.query_params
        if not params:
            return NO_QUERY
        name = params.get("name")
        if name is not None and len(name) > NAME_MAX:
            raise InvalidArgument(f"name: at most {NAME_MAX} characters")
        return cls(
            dim=_integer(params, "dim"),
            axis=_integer(params, "axis"),
            outputs=params.get("outputs"),
            name=name,
            reduction=params.get("reduction"),
            label_smoothing=_number(params, "label_smoothing"),
            ignore_index=_integer(params, "ignore_index"),
        )

    def given(self) -> list[str]:
        return [k for k, v in vars(self).items() if v is not None]

    def options(self) -> Options:
        return Options.given(self.reduction, self.label_smoothing, self.ignore_index)


NO_QUERY = QueryArguments()


def _integer(params: QueryParams, key: str) -> int | None:
    value = params.get(key)
    return None if value is None else text.ascii_int(value, key, signed=True)


def _number(params: QueryParams, key: str) -> float | None:
    value = params.get(key)
    return None if value is None else text.ascii_float(value, key)


def _query_parameter(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


QUERY_PARAMETERS = {
    "dim": _query_parameter("dim", {"type": "integer"}, "safetensors bodies: class dimension"),
    "axis": _query_parameter("axis", {"type": "integer"}, "safetensors bodies: alias of dim"),
    "outputs": _query_parameter(
        "outputs",
        {"type": "string"},
        "safetensors bodies: comma-separated outputs, e.g. loss,grad_logits",
    ),
    "name": _query_parameter(
        "name", {"type": "string", "maxLength": NAME_MAX}, "safetensors bodies: name"
    ),
    "reduction": _query_parameter(
        "reduction",
        {"type": "string", "enum": list(REDUCTIONS)},
        "safetensors bodies: none (the default: per-example loss), sum or mean (a scalar)",
    ),
    "label_smoothing": _query_parameter(
        "label_smoothing",
        # no "default" here: generated clients would then send it with JSON bodies too
        {"type": "number", "minimum": 0, "maximum": 1},
        "safetensors bodies: eps in [0, 1] (default 0), a plain decimal number such as 0.1",
    ),
    "ignore_index": _query_parameter(
        "ignore_index",
        {"type": "integer"},
        "safetensors bodies: a label value (e.g. -100) that is skipped: loss 0, zero "
        "gradients, not counted in the mean",
    ),
}


@dataclass(frozen=True)
class Call:
    """One parsed request, whatever its wire format."""

    tensors: dict[str, Tensor]
    outputs: list[str]
    name: str | None
    dim: int = -1
    options: Options = DEFAULT_OPTIONS


def parse_arguments(body: Body, model: type[Model]) -> Model:
    """JSON bytes as a request model; only a JSON object of named arguments is accepted.

    Tensors stay JsonTensor placeholders (json_document): their numbers are converted
    once the request's memory is granted."""
    document = json_document.loads(body, bare_non_finite=False)
    if not isinstance(document, dict):
        kind = "array" if isinstance(document, list | JsonTensor) else type(document).__name__
        raise InvalidArgument(
            "arguments must be named: send a JSON object such as "
            f'{{"labels": [...], "logits": [...]}}, not a positional {kind}'
        )
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        message = describe_validation(exc.errors())
        if any(e["type"] == "extra_forbidden" for e in exc.errors()):
            names = [n for n, f in model.model_fields.items() if not f.exclude]
            message += f"; arguments must be named, one of: {', '.join(names)}"
        raise InvalidArgument(message) from None


def _optional(value: Any, dtype: DType, name: str) -> dict[str, Tensor]:
    return {} if value is None else {name: json_tensor.lazy(value, dtype, name)}


def _from_json(args: LossRequest | SparseLossRequest, labels_dtype: DType) -> Call:
    dtype = DType[args.dtype]
    tensors = {
        "labels": json_tensor.lazy(args.labels, labels_dtype, "labels"),
        "logits": json_tensor.lazy(args.logits, dtype, "logits"),
        **_optional(args.grad_loss, dtype, "grad_loss"),
        **_optional(args.class_weights, dtype, "class_weights"),
        **_optional(args.sample_weights, dtype, "sample_weights"),
    }
    options = Options(args.reduction, args.label_smoothing, args.ignore_index)
    return Call(tensors, list(args.outputs), args.name, class_dim(args.dim, args.axis), options)


def _soft_from_json(body: Body) -> Call:
    args = parse_arguments(body, LossRequest)
    return _from_json(args, DType[args.dtype])


def _sparse_from_json(body: Body) -> Call:
    args = parse_arguments(body, SparseLossRequest)
    return _from_json(args, DType[args.labels_dtype])


TENSORS = ("labels", "logits", "grad_loss", *WEIGHT_INPUTS)


def _from_safetensors(body: Body, query: QueryArguments) -> Call:
    arrays: dict[str, Tensor] = dict(safetensors.decode(body))
    unknown = sorted(set(arrays) - set(TENSORS))
    if unknown:
        raise InvalidArgument(
            f"unknown tensor(s) {text.some(unknown)}; send labels, logits and optionally "
            "grad_loss, class_weights, sample_weights"
        )
    missing = [n for n in ("labels", "logits") if n not in arrays]
    if missing:
        raise InvalidArgument(f"the safetensors body needs tensor(s) {', '.join(missing)}")
    outputs = [o.strip() for o in (query.outputs or "loss").split(",") if o.strip()]
    return Call(arrays, outputs, query.name, class_dim(query.dim, query.axis), query.options())


def encode_json(result: LossResult, name: str | None) -> bytes:
    """A LossResult as the JSON response document."""
    document: dict[str, Any] = {"name": name, "dtype": result.dtype.name}
    for output, array in result.items():
        document[output] = json_tensor.encode(array)
    return json_tensor.dumps(document)


def encode_safetensors(result: LossResult, name: str | None) -> list[bytes | memoryview]:
    """A LossResult as a safetensors body; name and dtype in its metadata."""
    metadata = {"dtype": result.dtype.name, **({"name": name} if name is not None else {})}
    return safetensors.encode_buffers(dict(result.items()), metadata)


async def _serve(request: Request, *, sparse: bool, safetensors_answer: bool = False) -> Response:
    query = QueryArguments.of(request)
    env = runtime(request)
    media_type = request.headers.get("content-type", JSON).split(";", 1)[0].strip().lower()
    if media_type == FORM:
        # What `curl -d` sends when not told a Content-Type; its user means JSON. No new
        # exposure: a cross-site page could already send this (the v2 infer route takes any
        # type, as tritonclient sends none), it changes no state and cannot read the answer.
        media_type = JSON
    if media_type not in (JSON, SAFETENSORS):
        raise UnsupportedMediaType(
            f"Content-Type {media_type!r} is not supported; send {JSON} or {SAFETENSORS}"
        )
    if media_type == JSON and query.given():
        raise InvalidArgument(
            f"query parameter(s) {', '.join(query.given())} apply to safetensors bodies; "
            "with JSON put them in the object"
        )
    wants_safetensors = safetensors_answer or text.accepts(
        request.headers.get("accept", ""), SAFETENSORS
    )
    settings = env.settings
    op = SPARSE_OP if sparse else SOFT_OP
    answer_type = SAFETENSORS if wants_safetensors else JSON

    def parse(body: Body) -> Call:
        if media_type == SAFETENSORS:
            return _from_safetensors(body, query)
        return (_sparse_from_json if sparse else _soft_from_json)(body)

    def cost(call: Call) -> Cost:
        json_out = not wants_safetensors
        return inference.cost_of(
            env.engine,
            op,
            call.tensors,
            outputs=call.outputs,
            dim=call.dim,
            options=call.options,
            json_outputs=json_out,
        )

    def run(call: Call) -> Encoded:
        result = compute(
            env.engine, op, call.tensors, outputs=call.outputs, dim=call.dim, options=call.options
        )
        if wants_safetensors:
            return Encoded(encode_safetensors(result, call.name), answer_type)
        return Encoded([encode_json(result, call.name)], answer_type)

    limit = body_limit(settings, json=media_type == JSON)
    parse_cost = json_document.parse_cost if media_type == JSON else safetensors.parse_cost
    return await serve(
        request, env, limit=limit, parse=parse, parse_cost=parse_cost, cost=cost, run=run
    )


def _openapi(model: type[BaseModel], *parameters: str) -> dict[str, Any]:
    return {
        "parameters": [QUERY_PARAMETERS[p] for p in parameters],
        "requestBody": {
            "required": True,
            "content": {
                JSON: {"schema": openapi.ref(model)},
                SAFETENSORS: {
                    "schema": {
                        "type": "string",
                        "format": "binary",
                        "description": "tensors labels, logits and optionally grad_loss, "
                        "class_weights, sample_weights",
                    }
                },
            },
        },
    }


RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    200: {
        "description": "The requested outputs",
        "content": {SAFETENSORS: {"schema": {"type": "string", "format": "binary"}}},
    },
}


@router.post(
    "/softmax_cross_entropy_with_logits",
    operation_id="softmax_cross_entropy_with_logits",
    summary="Softmax cross entropy (tf.nn.softmax_cross_entropy_with_logits_v2)",
    response_model=LossResponse,
    responses=RESPONSES,
    openapi_extra=_openapi(
        LossRequest, "dim", "axis", "outputs", "name", "reduction", "label_smoothing"
    ),
)
@stages.observed(SOFT_OP)  # counted with the v2 model of the same name
async def softmax_cross_entropy_with_logits(request: Request) -> Response:
    """Loss, and on request its gradients, for probability-distribution labels."""
    return await _serve(request, sparse=False)


@router.post(
    "/sparse_softmax_cross_entropy_with_logits",
    operation_id="sparse_softmax_cross_entropy_with_logits",
    summary="Sparse softmax cross entropy (tf.nn.sparse_softmax_cross_entropy_with_logits)",
    response_model=LossResponse,
    responses=RESPONSES,
    openapi_extra=_openapi(SparseLossRequest, *QUERY_PARAMETERS),
)
@stages.observed(SPARSE_OP)  # counted with the v2 model of the same name
async def sparse_softmax_cross_entropy_with_logits(request: Request) -> Response:
    """Loss, and on request grad_logits, for integer class labels."""
    return await _serve(request, sparse=True)


# The same operations answered in safetensors whatever the Accept header: one media type per
# operation is what generated clients can type (openapi-python-client parses the first
# media type a response lists, so asking the operations above for safetensors made it
# decode the bytes as JSON); here the answer is typed as bytes.
SAFETENSORS_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    200: {
        "description": "The requested outputs as safetensors (name and dtype in its metadata)",
        "content": {SAFETENSORS: {"schema": {"type": "string", "format": "binary"}}},
    },
}


@router.post(
    "/softmax_cross_entropy_with_logits.safetensors",
    operation_id="softmax_cross_entropy_with_logits_safetensors",
    summary="Softmax cross entropy, answered in safetensors",
    response_class=Response,
    responses=SAFETENSORS_RESPONSES,
    openapi_extra=_openapi(
        LossRequest, "dim", "axis", "outputs", "name", "reduction", "label_smoothing"
    ),
)
@stages.observed(SOFT_OP)
async def softmax_cross_entropy_with_logits_safetensors(request: Request) -> Response:
    """As softmax_cross_entropy_with_logits, with the outputs as a safetensors body."""
    return await _serve(request, sparse=False, safetensors_answer=True)


@router.post(
    "/sparse_softmax_cross_entropy_with_logits.safetensors",
    operation_id="sparse_softmax_cross_entropy_with_logits_safetensors",
    summary="Sparse softmax cross entropy, answered in safetensors",
    response_class=Response,
    responses=SAFETENSORS_RESPONSES,
    openapi_extra=_openapi(SparseLossRequest, *QUERY_PARAMETERS),
)
@stages.observed(SPARSE_OP)
async def sparse_softmax_cross_entropy_with_logits_safetensors(request: Request) -> Response:
    """As sparse_softmax_cross_entropy_with_logits, with the outputs as a safetensors body."""
    return await _serve(request, sparse=True, safetensors_answer=True)
