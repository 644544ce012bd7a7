"""Open Inference Protocol v2 REST (KServe v2 / Triton), with the binary tensor extension.

`tritonclient` sends no Content-Type, so the infer route reads the raw body itself
and splits it at `Inference-Header-Content-Length`. Errors are `{"error": ...}`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import ValidationError

from service import __version__
from service.api import openapi
from service.api.body import Body
from service.api.deps import EngineDep, runtime
from service.api.errors import describe_validation
from service.api.inference import Tensor, class_dim, compute, cost_of
from service.api.pipeline import Cost, Encoded, serve
from service.api.routing import DirectRoute
from service.codecs import json_document, v2
from service.engine.engine import Engine
from service.engine.types import (
    DEFAULT_OPTIONS,
    SOFT_OP,
    SOFT_OUTPUTS,
    SPARSE_OP,
    SPARSE_OUTPUTS,
    Options,
    Output,
)
from service.errors import InvalidArgument, MalformedBody, ModelNotFound, PayloadTooLarge
from service.schemas import (
    InferenceRequest,
    InferenceResponse,
    InferParameters,
    ModelMetadata,
    ModelReady,
    ServerMetadata,
    TensorMetadata,
    V2Error,
)

router = APIRouter(prefix="/v2", tags=["open inference protocol"])
# The infer route on its own router, served directly (service/api/routing.py)
inference = APIRouter(prefix="/v2", tags=["open inference protocol"], route_class=DirectRoute)

SERVER_NAME = "softmax-cross-entropy-service"
EXTENSIONS = ["binary_tensor_data", "parameters"]


@dataclass(frozen=True)
class ModelSpec:
    """What a model takes and gives."""

    inputs: tuple[TensorMetadata, ...]  # labels and logits are required, the others not
    outputs: tuple[Output, ...]
    parameters: dict[str, Any]  # the request parameters it takes, with their defaults

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)


def _tensor(name: str, datatype: str, rank: int) -> TensorMetadata:
    return TensorMetadata(name=name, datatype=datatype, shape=[-1] * rank)


# The optional inputs of both models, after labels and logits.
OPTIONAL_INPUTS = (
    _tensor("grad_loss", "FP32", 1),
    _tensor("class_weights", "FP32", 1),
    _tensor("sample_weights", "FP32", 1),
)
# Request parameters, with their defaults (ignore_index has none: labels out of range are
# a 422 unless it is given).
PARAMETERS: dict[str, Any] = {
    "dim": -1,
    "reduction": DEFAULT_OPTIONS.reduction,
    "label_smoothing": DEFAULT_OPTIONS.label_smoothing,
}
MODELS: dict[str, ModelSpec] = {
    SOFT_OP: ModelSpec(
        inputs=(_tensor("labels", "FP32", 2), _tensor("logits", "FP32", 2), *OPTIONAL_INPUTS),
        outputs=SOFT_OUTPUTS,
        parameters=PARAMETERS,
    ),
    SPARSE_OP: ModelSpec(
        inputs=(_tensor("labels", "INT64", 1), _tensor("logits", "FP32", 2), *OPTIONAL_INPUTS),
        outputs=SPARSE_OUTPUTS,
        parameters={**PARAMETERS, "ignore_index": None},
    ),
}
# What the metadata lists for each output: its datatype (FP32 stands for the logits' own)
# and the common shape's rank (the loss is a scalar with reduction sum or mean).
OUTPUT_METADATA = {
    "loss": ("FP32", 1),
    "grad_logits": ("FP32", 2),
    "grad_labels": ("FP32", 2),
    "weight_sum": ("FP64", 0),
}


def _model(name: str) -> ModelSpec:
    spec = MODELS.get(name)
    if spec is None:
        raise ModelNotFound(f"unknown model {name!r}; models: {', '.join(MODELS)}")
    return spec


@dataclass(frozen=True)
class V2Call:
    """One parsed inference request."""

    model: str
    tensors: dict[str, Tensor]
    outputs: dict[Output, bool]  # name -> binary
    dim: int
    request_id: str | None
    options: Options = DEFAULT_OPTIONS


def parse(name: str, spec: ModelSpec, body: Body, header_length: int | None) -> V2Call:
    """Split a v2 body, parse its JSON header, find its inputs (binary ones are views of
    the body, JSON ones stay pending until memory is granted)."""
    if not body:
        raise MalformedBody("the request body is empty; send an inference request")
    header, binary = v2.split(body, header_length)
    document = json_document.loads(header, bare_non_finite=True)
    try:
        request = InferenceRequest.model_validate(document)
    except ValidationError as exc:
        raise InvalidArgument(f"inference request: {describe_validation(exc.errors())}") from None
    params = request.parameters or InferParameters()
    reader = v2.BinaryReader(binary)
    tensors: dict[str, Tensor] = {}
    for item in request.inputs:
        if item.name not in spec.input_names:
            raise InvalidArgument(
                f"model {name!r} has no input {item.name!r}; inputs: {', '.join(spec.input_names)}"
            )
        if item.name in tensors:
            raise InvalidArgument(f"input {item.name!r} is given twice")
        tensors[item.name] = v2.decode_input(
            name=item.name,
            shape=item.shape,
            wire_datatype=item.datatype,
            data=item.data,
            binary_data_size=item.parameters.binary_data_size if item.parameters else None,
            reader=reader,
        )
    reader.finish()
    missing = [n for n in ("labels", "logits") if n not in tensors]
    if missing:
        raise InvalidArgument(f"model {name!r} needs input(s) {', '.join(missing)}")

    # ignore_index is passed for the soft model too: its engine says why it takes none
    options = Options.given(params.reduction, params.label_smoothing, params.ignore_index)
    if request.outputs is None:  # all outputs, binary when the request says so
        binary_default = bool(params.binary_data_output)
        # weight_sum exists only for a reduction: asking for it otherwise is a 422
        every = [o for o in spec.outputs if o != "weight_sum" or options.reduced]
        wanted = dict.fromkeys(every, binary_default)
    else:
        wanted = {}
        for out in request.outputs:
            if out.name not in spec.outputs:
                raise InvalidArgument(
                    f"model {name!r} has no output {out.name!r}; outputs: {', '.join(spec.outputs)}"
                )
            asked = out.parameters.binary_data if out.parameters else None
            wanted[out.name] = bool(asked if asked is not None else params.binary_data_output)
    ordered = {o: wanted[o] for o in spec.outputs if o in wanted}
    dim = class_dim(params.dim, params.axis)
    return V2Call(name, tensors, ordered, dim, request.id, options)


def cost(engine: Engine, call: V2Call) -> Cost:
    return cost_of(
        engine,
        call.model,
        call.tensors,
        outputs=list(call.outputs),
        dim=call.dim,
        options=call.options,
        json_outputs=not all(call.outputs.values()),
    )


def run(engine: Engine, call: V2Call) -> Encoded:
    """Compute and encode: the response's JSON header, then each binary output's bytes."""
    result = compute(
        engine,
        call.model,
        call.tensors,
        outputs=list(call.outputs),
        dim=call.dim,
        options=call.options,
    )
    outputs = [v2.OutputTensor(n, a, call.outputs[n]) for n, a in result.items()]
    chunks, json_length = v2.encode_response(
        model_name=call.model, request_id=call.request_id, outputs=outputs
    )
    if json_length is None:
        return Encoded(chunks, "application/json")
    return Encoded(
        chunks, "application/octet-stream", {"Inference-Header-Content-Length": str(json_length)}
    )


V2_ERROR_TEXT = {
    400: "Malformed body: bad JSON header, sizes that disagree with the bytes",
    401: "API key missing or wrong",
    404: "Unknown model",
    408: "Body not received within SCE_BODY_TIMEOUT",
    413: "Body over the configured limit",
    415: "Unsupported Content-Encoding",
    422: "Invalid inputs: names, datatypes, shapes, dim, label range, options",
    503: "Not ready, over the in-flight bound (Retry-After), or an ONNX Runtime failure",
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": V2Error, "description": V2_ERROR_TEXT[s]} for s in statuses}


V2_ERRORS = _errors(*V2_ERROR_TEXT)
GET_ERRORS = _errors(401, 503)
MODEL_ERRORS = _errors(401, 404, 503)


@router.get("", operation_id="server_metadata", summary="Server metadata", responses=GET_ERRORS)
def server_metadata(engine: EngineDep) -> ServerMetadata:
    """Name, version, protocol extensions, and the execution providers really in use."""
    return ServerMetadata(
        name=SERVER_NAME, version=__version__, extensions=EXTENSIONS, providers=engine.providers
    )


@router.get(
    "/models/{model}",
    operation_id="model_metadata",
    summary="Model metadata",
    responses=MODEL_ERRORS,
)
def model_metadata(model: str, engine: EngineDep) -> ModelMetadata:
    """Inputs, outputs and request parameters (with their defaults) of a model. FP16, BF16
    and FP64 are accepted wherever FP32 is listed, INT32 wherever INT64 is; any rank >= 1 is
    accepted (the shapes list the common case). weight_sum is FP64 whatever the logits' type."""
    spec = _model(model)
    return ModelMetadata(
        name=model,
        versions=["1"],
        platform="onnxruntime_onnx",
        inputs=list(spec.inputs),
        outputs=[_tensor(o, *OUTPUT_METADATA[o]) for o in spec.outputs],
        parameters={"providers": engine.providers, **spec.parameters},
    )


@router.get(
    "/models/{model}/ready",
    operation_id="model_ready",
    summary="Model readiness",
    responses=MODEL_ERRORS,
)
def model_ready(model: str, engine: EngineDep) -> ModelReady:
    """200 when the model's sessions are built."""
    _model(model)
    return ModelReady(name=model, ready=True)


@inference.post(
    "/models/{model}/infer",
    operation_id="model_infer",
    summary="Inference (JSON, or JSON header + binary tensors)",
    response_model=InferenceResponse,
    responses=V2_ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": openapi.ref(InferenceRequest)},
                "application/octet-stream": {
                    "schema": {
                        "type": "string",
                        "format": "binary",
                        "description": "JSON header of Inference-Header-Content-Length bytes, "
                        "then the binary tensors",
                    }
                },
            },
        },
        "parameters": [
            {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}},
            {
                "name": "Inference-Header-Content-Length",
                "in": "header",
                "required": False,
                "schema": {"type": "integer", "minimum": 0},
                "description": "Length of the JSON header when binary tensors follow it.",
            },
        ],
    },
)
async def model_infer(request: Request) -> Response:
    """Loss and gradients; any Content-Type (tritonclient sends none)."""
    model: str = request.path_params["model"]
    spec = _model(model)
    env = runtime(request)
    settings = env.settings
    header_length = v2.header_length(request.headers.get(v2.HEADER_LENGTH))
    json_limit = settings.max_json_bytes
    if header_length is None:  # all JSON
        limit = min(settings.max_request_bytes, json_limit)
    elif header_length > json_limit:
        raise PayloadTooLarge(
            f"the inference header of {header_length} bytes is larger than the JSON limit of "
            f"{json_limit} bytes (SCE_MAX_JSON_BYTES); send tensors as binary data"
        )
    else:
        limit = settings.max_request_bytes
    return await serve(
        request,
        env,
        limit=limit,
        parse=lambda body: parse(model, spec, body, header_length),
        parse_cost=lambda size: json_document.parse_cost(
            size if header_length is None else header_length
        ),
        cost=lambda call: cost(env.engine, call),
        run=lambda call: run(env.engine, call),
    )
