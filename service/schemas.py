"""Wire models of the native API (pydantic v2). Tensors stay raw JSON here; codecs decode them."""

from __future__ import annotations

from collections.abc import Collection
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    WithJsonSchema,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

from service.codecs.shapes import listed
from service.codecs.text import json_value, some, valid_unicode

FloatDType = Literal["float16", "bfloat16", "float32", "float64"]
IndexDType = Literal["int32", "int64"]
SoftOutput = Literal["loss", "grad_logits", "grad_labels", "weight_sum"]
SparseOutput = Literal["loss", "grad_logits", "weight_sum"]
Reduction = Literal["none", "sum", "mean"]


Shape = Annotated[Annotated[list[StrictInt], Field(fail_fast=True)], BeforeValidator(listed)]

TensorData = Annotated[
    Any,
    WithJsonSchema(
        {
            "description": (
                "A number or nested lists of numbers (row-major). Non-finite values are "
                'the strings "NaN", "Infinity", "-Infinity".'
            ),
            "anyOf": [
                {"type": "number"},
                {"type": "string", "enum": ["NaN", "Infinity", "-Infinity"]},
                {"type": "array", "items": {}},
            ],
        }
    ),
]


MAX_TEXT_CHARS = 1 << 16
# A client string that may be echoed or named in a message. The length bound also makes
# pydantic-core read the string as UTF-8, so that one holding a lone UTF-16 surrogate
# (JSON's "\ud800" escape; Python's json lets it through) is refused as `string_unicode`
# without a Python call per string; the schema stays a plain string.
Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS), WithJsonSchema({"type": "string"})]
# Integers and booleans are plain JSON ones (StrictInt: not true, not "-1", not -1.0);
# `service.api.errors.describe_validation` words the refusals.
# fail_fast: a list stops at its first bad item, so a million bad items make one error.

MAX_UNKNOWN_LISTED = 3


def _few_unknown(data: object, fields: Collection[str], where: str = "") -> None:
    """One error for many unknown members rather than one each: a body of a million
    unknown members would otherwise cost seconds and megabytes of error text."""
    if isinstance(data, dict) and len(data) > MAX_UNKNOWN_LISTED:
        unknown = [key for key in data if key not in fields]
        if len(unknown) > MAX_UNKNOWN_LISTED:
            raise PydanticCustomError(
                "extra_forbidden",
                "{where}unknown arguments {names}",
                {"where": where, "names": some(unknown)},
            )


def _valid_keys(parameters: object, where: str) -> None:
    if type(parameters) is not dict or all(map(str.isascii, parameters)):
        return
    if not all(map(valid_unicode, parameters)):
        invalid = [key for key in parameters if not valid_unicode(key)]
        raise PydanticCustomError(
            "invalid_unicode",
            "{where}parameter names must be valid Unicode; got {names}",
            {"where": where, "names": some(invalid)},
        )


def _json_number(value: object) -> object:
    """A JSON number as it is (the engine judges its range); a bool or string refused here."""
    if type(value) in (int, float):
        return value
    raise PydanticCustomError(
        "float_type", "must be a JSON number in [0, 1]; got {got}", {"got": json_value(value)}
    )


# A JSON number (an integer too), not a bool or a numeric string.
JsonNumber = Annotated[StrictFloat, BeforeValidator(_json_number)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    labels: TensorData = Field(description="Labels.")  # each op says which
    logits: TensorData = Field(description="Unscaled log probabilities.")
    dim: StrictInt | None = Field(None, description="Class dimension (default -1).")
    axis: StrictInt | None = Field(
        None, description="TensorFlow 2's name for `dim`; both given and different is a 422."
    )
    dtype: FloatDType = Field(
        "float32", description="Of logits, grad_loss, the weights and soft labels."
    )
    reduction: Reduction = Field(
        "none",
        description=(
            "`none`: the per-example loss (TensorFlow's op). `sum`: sum_n loss_n, a scalar. "
            "`mean`: that sum over weight_sum, which is sum_n s_n for soft labels, and "
            "sum_n s_n w_{y_n} over the positions not ignored for integer labels. Gradients "
            "are then those of the scalar."
        ),
    )
    label_smoothing: JsonNumber = Field(
        0.0,
        description=(
            "eps in [0, 1]: soft labels become y (1 - eps) + eps / C; integer labels give "
            "(1 - eps) NLL + (eps / C) sum_c (-w_c log p_c) (PyTorch)."
        ),
        json_schema_extra={"minimum": 0, "maximum": 1},
    )
    class_weights: TensorData | None = Field(
        None,
        description="Shape [C]: w_c multiplies class c's term of the loss (PyTorch `weight`).",
    )
    sample_weights: TensorData | None = Field(
        None,
        description=(
            "Broadcastable to the per-example loss's shape: s_n multiplies example n's loss "
            "(Keras `sample_weight`)."
        ),
    )
    name: str | None = Field(None, max_length=256, description="Echoed in the response.")

    @model_validator(mode="before")
    @classmethod
    def _few_unknown_members(cls, data: Any) -> Any:
        _few_unknown(data, cls.__pydantic_fields__)
        return data


OUTPUTS_TEXT = (
    "Outputs to compute (only these are). `weight_sum` (float64, a scalar) is the mean's "
    "denominator, with reduction sum or mean: the dataset mean is the sum of the batches' "
    "summed losses over the sum of their weight_sum."
)


class LossRequest(_Request):
    """Arguments of tf.nn.softmax_cross_entropy_with_logits_v2, by name, and the
    evaluation options (reduction, weights, label smoothing)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "labels": [[0.0, 1.0], [0.5, 0.5]],
                    "logits": [[2.0, -1.0], [0.3, 0.1]],
                    "dim": -1,
                    "dtype": "float32",
                    "outputs": ["loss", "grad_logits"],
                    "name": "eval-step-42",
                },
                {
                    "labels": [[0.0, 1.0], [0.5, 0.5]],
                    "logits": [[2.0, -1.0], [0.3, 0.1]],
                    "reduction": "mean",
                    "class_weights": [1.0, 2.0],
                    "label_smoothing": 0.1,
                    "outputs": ["loss", "weight_sum"],
                },
            ]
        }
    )

    labels: TensorData = Field(
        description="A probability distribution along `dim`; broadcasts against logits."
    )
    outputs: list[SoftOutput] = Field(
        default_factory=lambda: list[SoftOutput](["loss"]),
        min_length=1,
        fail_fast=True,
        description=OUTPUTS_TEXT,
    )
    grad_loss: TensorData | None = Field(
        None,
        description="Upstream gradient: the loss's shape, a scalar with reduction sum or mean "
        "(default ones).",
    )
    # Integer labels only: taken so that the engine refuses it with its reason (an
    # unknown-member error would not say why); not in the schema, which stays honest.
    ignore_index: SkipJsonSchema[Any] = Field(None, exclude=True)


class SparseLossRequest(_Request):
    """Arguments of tf.nn.sparse_softmax_cross_entropy_with_logits, by name, and the
    evaluation options (reduction, weights, ignore_index, label smoothing)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"labels": [1, 0], "logits": [[2.0, -1.0], [0.3, 0.1]]},
                {
                    "labels": [[1, 2, -100]],
                    "logits": [[[2.0, -1.0, 0.5], [0.3, 0.1, 0.2], [0.0, 0.0, 0.0]]],
                    "reduction": "mean",
                    "ignore_index": -100,
                    "label_smoothing": 0.1,
                    "outputs": ["loss", "weight_sum"],
                    "name": "eval-batch-7",
                },
            ]
        }
    )

    labels: TensorData = Field(
        description="Class indices in [0, C) (or ignore_index), the logits' shape without `dim`."
    )
    labels_dtype: IndexDType = "int64"
    outputs: list[SparseOutput] = Field(
        default_factory=lambda: list[SparseOutput](["loss"]),
        min_length=1,
        fail_fast=True,
        description=OUTPUTS_TEXT,
    )
    grad_loss: TensorData | None = Field(
        None,
        description="Upstream gradient: the labels' shape, a scalar with reduction sum or mean "
        "(default ones).",
    )
    ignore_index: StrictInt | None = Field(
        None,
        description=(
            "A label value (e.g. -100) whose positions get loss 0 and zero gradients and "
            "count nowhere in the mean; no default, so labels outside [0, C) are a 422."
        ),
    )


class TensorOut(BaseModel):
    shape: list[int]
    data: TensorData


class LossResponse(BaseModel):
    """One member per requested output."""

    name: str | None
    dtype: FloatDType
    loss: TensorOut | None = None
    grad_logits: TensorOut | None = None
    grad_labels: TensorOut | None = None
    weight_sum: TensorOut | None = Field(
        None, description="float64 whatever `dtype` says; shape []."
    )


class ErrorDetail(BaseModel):
    """Native API error body."""

    detail: str


# Open Inference Protocol (KServe v2 / Triton) REST models.


class _V2Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class InferParameters(_V2Model):
    """Tensor or request parameters; unknown keys are kept (the protocol allows any)."""

    binary_data_size: StrictInt | None = Field(None, ge=0)
    binary_data: StrictBool | None = None
    binary_data_output: StrictBool | None = None
    dim: StrictInt | None = None
    axis: StrictInt | None = None
    reduction: Text | None = Field(None, description="none (default), sum or mean")
    label_smoothing: JsonNumber | None = Field(None, description="eps in [0, 1] (default 0)")
    ignore_index: StrictInt | None = Field(None, description="sparse model: a label to skip")


class RequestInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Text
    shape: Shape
    datatype: Text
    parameters: InferParameters | None = None
    data: TensorData | None = None


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Text
    parameters: InferParameters | None = None


class InferenceRequest(BaseModel):
    """POST /v2/models/{model}/infer: the JSON header of the body."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "id": "42",
                    "parameters": {"dim": -1},
                    "inputs": [
                        {"name": "labels", "shape": [1, 2], "datatype": "FP32", "data": [0, 1]},
                        {"name": "logits", "shape": [1, 2], "datatype": "FP32", "data": [2, -1]},
                    ],
                    "outputs": [{"name": "loss"}],
                },
                {
                    "id": "eval-batch-7",
                    "parameters": {"reduction": "sum", "ignore_index": -100},
                    "inputs": [
                        {"name": "labels", "shape": [3], "datatype": "INT64", "data": [1, 0, -100]},
                        {
                            "name": "logits",
                            "shape": [3, 2],
                            "datatype": "FP32",
                            "data": [2, -1, 0.3, 0.1, 0, 0],
                        },
                    ],
                    "outputs": [{"name": "loss"}, {"name": "weight_sum"}],
                },
            ]
        },
    )

    id: Text | None = None
    # Sent by real clients (KServe's InferenceRESTClient puts model_name in every body):
    # ignored when they name the path's model and version, a 400 when they contradict it.
    model_name: Text | None = None
    model_version: Text | None = None
    parameters: InferParameters | None = None
    inputs: list[RequestInput] = Field(min_length=1, fail_fast=True)
    outputs: list[RequestOutput] | None = Field(None, fail_fast=True)

    @model_validator(mode="before")
    @classmethod
    def _few_unknown_members(cls, data: Any) -> Any:
        """Many unknown members are one error, here and in each input and output (one
        Python call a request rather than one a model); parameter names are valid Unicode."""
        if type(data) is not dict:
            return data
        if len(data) > len(_REQUEST_FIELDS) + MAX_UNKNOWN_LISTED:
            _few_unknown(data, _REQUEST_FIELDS)
        if "parameters" in data:
            _valid_keys(data["parameters"], "parameters: ")
        for key, fields in (("inputs", _INPUT_FIELDS), ("outputs", _OUTPUT_FIELDS)):
            items = data.get(key)
            if type(items) is list:
                for index, item in enumerate(items):
                    if type(item) is dict:
                        if len(item) > len(fields) + MAX_UNKNOWN_LISTED:
                            _few_unknown(item, fields, f"{key}.{index}: ")
                        if "parameters" in item:
                            _valid_keys(item["parameters"], f"{key}.{index}: ")
        return data


_REQUEST_FIELDS = frozenset(InferenceRequest.model_fields)
_INPUT_FIELDS = frozenset(RequestInput.model_fields)
_OUTPUT_FIELDS = frozenset(RequestOutput.model_fields)


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: InferParameters | None = None
    data: TensorData | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[ResponseOutput]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any] = Field(default_factory=dict)


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]
    providers: list[str] = Field(description="Execution providers really in use.")


class ModelReady(BaseModel):
    name: str
    ready: bool


# Triton's model configuration extension: the JSON form of model_config.proto's ModelConfig,
# the members that describe these models (tools read platform, max_batch_size, input,
# output and instance_group).


class ModelInputConfig(BaseModel):
    name: str
    data_type: str = Field(description="TYPE_FP32 and so on (model_config.proto's DataType).")
    format: str = "FORMAT_NONE"
    dims: list[int] = Field(description="-1: any size (max_batch_size is 0: no batch axis).")
    optional: bool


class ModelOutputConfig(BaseModel):
    name: str
    data_type: str
    dims: list[int]


class InstanceGroup(BaseModel):
    name: str
    kind: Literal["KIND_CPU", "KIND_GPU"]
    count: int


class ModelParameter(BaseModel):
    string_value: str


class ModelConfig(BaseModel):
    """GET /v2/models/{model}/config."""

    name: str
    platform: str
    backend: str
    version_policy: dict[str, Any]
    max_batch_size: int
    input: list[ModelInputConfig]
    output: list[ModelOutputConfig]
    instance_group: list[InstanceGroup]
    parameters: dict[str, ModelParameter]


# Triton's model repository extension.


class RepositoryIndexRequest(BaseModel):
    """POST /v2/repository/index: an empty body (tritonclient's) or this object."""

    model_config = ConfigDict(extra="forbid")

    ready: StrictBool = Field(False, description="true: only the models ready for inference.")


class RepositoryModel(BaseModel):
    name: str
    version: str
    state: Literal["READY", "UNAVAILABLE"]
    reason: str


class RepositoryModelRequest(BaseModel):
    """POST /v2/repository/models/{model}/load or /unload: an empty body or this object."""

    model_config = ConfigDict(extra="forbid")

    parameters: dict[str, Any] | None = None


class V2Error(BaseModel):
    """Open Inference Protocol error body."""

    error: str
