"""Open Inference Protocol v2 REST (KServe v2 / Triton), with the binary tensor extension.

`tritonclient` sends no Content-Type, so the infer route reads the raw body itself
and splits it at `Inference-Header-Content-Length`. Errors are `{"error": ...}`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ValidationError

from service import __version__
from service.api import openapi, stages
from service.api.body import Body, body_limit, read_body
from service.api.deps import EngineDep, runtime
from service.api.errors import describe_validation
from service.api.inference import Tensor, class_dim, compute, cost_of
from service.api.pipeline import Cost, Encoded, serve
from service.api.routing import DirectRoute
from service.codecs import json_document, v2
from service.codecs.text import quote
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
    InstanceGroup,
    ModelConfig,
    ModelInputConfig,
    ModelMetadata,
    ModelOutputConfig,
    ModelParameter,
    ModelReady,
    RepositoryIndexRequest,
    RepositoryModel,
    RepositoryModelRequest,
    ServerMetadata,
    TensorMetadata,
    V2Error,
)

router = APIRouter(prefix="/v2", tags=["open inference protocol"])
# The infer route on its own router, served directly (service/api/routing.py)
inference = APIRouter(prefix="/v2", tags=["open inference protocol"], route_class=DirectRoute)

SERVER_NAME = "softmax-cross-entropy-service"
EXTENSIONS = [
    "binary_tensor_data",
    "parameters",
    "model_configuration",
    "model_repository",
    "statistics",
]
VERSION = "1"  # the one version of each model


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


def _model(name: str, version: str | None = None) -> ModelSpec:
    """A model's spec, by the URL's name and version (None: the URL names no version)."""
    spec = MODELS.get(name)
    if spec is None:
        raise ModelNotFound(f"unknown model {quote(name)}; models: {', '.join(MODELS)}")
    if version is not None and version != VERSION:
        raise ModelNotFound(f"model {name!r} has no version {quote(version)}; versions: {VERSION}")
    return spec


def _same_model(name: str, version: str | None, request: InferenceRequest) -> None:
    """The body's model_name and model_version, when given, must agree with the URL."""
    if request.model_name is not None and request.model_name != name:
        raise MalformedBody(
            f"model_name {quote(request.model_name)} in the body contradicts the URL's model "
            f"{name!r}; send it to /v2/models/{{model_name}}/infer or leave model_name out"
        )
    given = request.model_version
    if given:  # "" asks for no version in particular, as an empty one does in Triton's URLs
        if version is not None and given != version:
            raise MalformedBody(
                f"model_version {quote(given)} in the body contradicts the URL's version "
                f"{version!r}"
            )
        if given != VERSION:
            raise MalformedBody(
                f"model_version {quote(given)} in the body: model {name!r} has only version "
                f"{VERSION!r}"
            )


@dataclass(frozen=True)
class V2Call:
    """One parsed inference request."""

    model: str
    tensors: dict[str, Tensor]
    outputs: dict[Output, bool]  # name -> binary
    dim: int
    request_id: str | None
    options: Options = DEFAULT_OPTIONS


def parse(
    name: str, spec: ModelSpec, body: Body, header_length: int | None, version: str | None = None
) -> V2Call:
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
    _same_model(name, version, request)
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
    400: "Malformed body: bad JSON header, sizes that disagree with the bytes, a model_name "
    "or model_version that contradicts the URL",
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
    return _metadata(model, None, engine)


@router.get(
    "/models/{model}/versions/{version}",
    operation_id="model_version_metadata",
    summary="Model metadata (of a version)",
    responses=MODEL_ERRORS,
)
def model_version_metadata(model: str, version: str, engine: EngineDep) -> ModelMetadata:
    """As `GET /v2/models/{model}`; each model has one version, "1"."""
    return _metadata(model, version, engine)


def _metadata(model: str, version: str | None, engine: Engine) -> ModelMetadata:
    spec = _model(model, version)
    return ModelMetadata(
        name=model,
        versions=[VERSION],
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


@router.get(
    "/models/{model}/versions/{version}/ready",
    operation_id="model_version_ready",
    summary="Model readiness (of a version)",
    responses=MODEL_ERRORS,
)
def model_version_ready(model: str, version: str, engine: EngineDep) -> ModelReady:
    """200 when the model's sessions are built; each model has one version, "1"."""
    _model(model, version)
    return ModelReady(name=model, ready=True)


@router.get(
    "/models/{model}/config",
    operation_id="model_config",
    summary="Model configuration (Triton's extension)",
    responses=MODEL_ERRORS,
)
def model_config(model: str, engine: EngineDep) -> ModelConfig:
    """The model's configuration as Triton gives it (model_config.proto's ModelConfig in
    JSON): no batch axis of its own (max_batch_size 0; every dimension is -1, any size),
    optional inputs marked, parameters with their defaults, and the providers in use."""
    return _config(model, None, engine)


@router.get(
    "/models/{model}/versions/{version}/config",
    operation_id="model_version_config",
    summary="Model configuration (of a version)",
    responses=MODEL_ERRORS,
)
def model_version_config(model: str, version: str, engine: EngineDep) -> ModelConfig:
    """As `GET /v2/models/{model}/config`; each model has one version, "1"."""
    return _config(model, version, engine)


def _config(model: str, version: str | None, engine: Engine) -> ModelConfig:
    spec = _model(model, version)
    parameters = {**spec.parameters, "providers": ",".join(engine.providers)}
    return ModelConfig(
        name=model,
        platform="onnxruntime_onnx",
        backend="onnxruntime",
        version_policy={"latest": {"num_versions": 1}},
        max_batch_size=0,
        input=[
            ModelInputConfig(
                name=t.name,
                data_type=f"TYPE_{t.datatype}",
                dims=t.shape,
                optional=t.name not in ("labels", "logits"),
            )
            for t in spec.inputs
        ],
        output=[
            ModelOutputConfig(name=o, data_type=f"TYPE_{OUTPUT_METADATA[o][0]}", dims=[-1] * rank)
            for o in spec.outputs
            for rank in [OUTPUT_METADATA[o][1]]
        ],
        # One ONNX Runtime session per model, shared by the requests computed at once.
        instance_group=[
            InstanceGroup(
                name=model,
                kind="KIND_GPU" if "CUDAExecutionProvider" in engine.providers else "KIND_CPU",
                count=1,
            )
        ],
        parameters={
            k: ModelParameter(string_value=str(v)) for k, v in parameters.items() if v is not None
        },
    )


# Triton's model repository extension. These routes read their small bodies themselves:
# bounded (FastAPI reads a body whole, however large), and JSON whatever the Content-Type
# (tritonclient sends none).
REPOSITORY_BODY_BYTES = 64 * 1024
REPOSITORY_ERRORS = _errors(400, 401, 404, 413, 415, 422, 503)
RequestModel = TypeVar("RequestModel", bound=BaseModel)


def _repository_openapi(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    return {"requestBody": {"required": False, "content": {"application/json": {"schema": schema}}}}


async def _small_json(request: Request, model: type[RequestModel]) -> RequestModel | None:
    """The body as `model`; None when it is empty."""
    body = await read_body(request, REPOSITORY_BODY_BYTES)
    if not body:
        return None
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedBody(f"the body is not JSON: {exc}") from None
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise InvalidArgument(describe_validation(exc.errors())) from None


@router.post(
    "/repository/index",
    operation_id="repository_index",
    summary="Model repository index (Triton's extension)",
    responses=REPOSITORY_ERRORS,
    openapi_extra=_repository_openapi(RepositoryIndexRequest),
)
async def repository_index(request: Request, engine: EngineDep) -> list[RepositoryModel]:
    """Every model and its state; the body may be empty (tritonclient sends none). The
    models are built in and loaded at start-up, so all are READY once the server is."""
    await _small_json(request, RepositoryIndexRequest)
    return [RepositoryModel(name=m, version=VERSION, state="READY", reason="") for m in MODELS]


@router.post(
    "/repository/models/{model}/load",
    operation_id="repository_model_load",
    summary="Load a model (Triton's extension): they are always loaded",
    responses=REPOSITORY_ERRORS,
    openapi_extra=_repository_openapi(RepositoryModelRequest),
)
async def repository_model_load(model: str, request: Request, engine: EngineDep) -> dict[str, Any]:
    """200 for a known model, which is already loaded: there is nothing to load. A
    configuration or files to load instead (`parameters`) are refused with 422."""
    _model(model)
    load = await _small_json(request, RepositoryModelRequest)
    if load is not None and load.parameters:
        raise InvalidArgument(
            "the models are built into this server: a configuration or files to load "
            f"cannot replace them; got parameters {', '.join(map(quote, load.parameters))}"
        )
    return {}


@router.post(
    "/repository/models/{model}/unload",
    operation_id="repository_model_unload",
    summary="Unload a model (Triton's extension): refused, they stay loaded",
    responses=REPOSITORY_ERRORS,
    openapi_extra=_repository_openapi(RepositoryModelRequest),
)
async def repository_model_unload(model: str, request: Request, engine: EngineDep) -> None:
    """422 for a known model: the models are built in and stay loaded while the server runs."""
    _model(model)
    await _small_json(request, RepositoryModelRequest)
    raise InvalidArgument(
        f"model {model!r} is built into this server and stays loaded; it cannot be unloaded"
    )


def _infer_openapi(*path: str) -> dict[str, Any]:
    """The infer operation's body and parameters (the endpoint declares none), for the
    path parameters `path`."""
    return {
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
            *(
                {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                for p in path
            ),
            {
                "name": "Inference-Header-Content-Length",
                "in": "header",
                "required": False,
                "schema": {"type": "integer", "minimum": 0},
                "description": "Length of the JSON header when binary tensors follow it.",
            },
        ],
    }


@inference.post(
    "/models/{model}/versions/{version}/infer",
    operation_id="model_version_infer",
    summary="Inference (of a version)",
    response_model=InferenceResponse,
    responses=V2_ERRORS,
    openapi_extra=_infer_openapi("model", "version"),
)
@inference.post(
    "/models/{model}/infer",
    operation_id="model_infer",
    summary="Inference (JSON, or JSON header + binary tensors)",
    response_model=InferenceResponse,
    responses=V2_ERRORS,
    openapi_extra=_infer_openapi("model"),
)
@stages.observed()  # counted by model, and traced
async def model_infer(request: Request) -> Response:
    """Loss and gradients; any Content-Type (tritonclient sends none)."""
    model: str = request.path_params["model"]
    version: str | None = request.path_params.get("version")
    spec = _model(model, version)
    env = runtime(request)
    settings = env.settings
    header_length = v2.header_length(request.headers.get(v2.HEADER_LENGTH))
    json_limit = settings.max_json_bytes
    if header_length is None:  # all JSON
        limit = body_limit(settings, json=True)
    elif header_length > json_limit:
        raise PayloadTooLarge(
            f"the inference header of {header_length} bytes is larger than the JSON limit of "
            f"{json_limit} bytes (SCE_MAX_JSON_BYTES); send tensors as binary data"
        )
    else:
        limit = body_limit(settings, json=False)
    return await serve(
        request,
        env,
        limit=limit,
        parse=lambda body: parse(model, spec, body, header_length, version),
        parse_cost=lambda size: json_document.parse_cost(
            size if header_length is None else header_length
        ),
        cost=lambda call: cost(env.engine, call),
        run=lambda call: run(env.engine, call),
    )
