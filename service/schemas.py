"""Wire models of the native API (pydantic v2). Tensors stay raw JSON here; codecs decode them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

FloatDType = Literal["float16", "bfloat16", "float32", "float64"]
IndexDType = Literal["int32", "int64"]
SoftOutput = Literal["loss", "grad_logits", "grad_labels"]
SparseOutput = Literal["loss", "grad_logits"]

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


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    logits: TensorData = Field(description="Unscaled log probabilities.")
    name: str | None = Field(None, max_length=256, description="Echoed in the response.")


class LossRequest(_Request):
    """Arguments of tf.nn.softmax_cross_entropy_with_logits_v2, by name."""

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
                }
            ]
        }
    )

    labels: TensorData = Field(
        description="A probability distribution along `dim`; broadcasts against logits."
    )
    dim: int | None = Field(None, description="Class dimension (default -1).")
    axis: int | None = Field(
        None, description="TensorFlow 2's name for `dim`; both given and different is a 422."
    )
    dtype: FloatDType = "float32"
    outputs: list[SoftOutput] = Field(
        default_factory=lambda: list[SoftOutput](["loss"]), min_length=1
    )
    grad_loss: TensorData | None = Field(
        None, description="Upstream gradient, the loss's shape (default ones)."
    )


class SparseLossRequest(_Request):
    """Arguments of tf.nn.sparse_softmax_cross_entropy_with_logits, by name."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"labels": [1, 0], "logits": [[2.0, -1.0], [0.3, 0.1]]}]}
    )

    labels: TensorData = Field(
        description="Class indices in [0, C), the logits' shape without the last dimension."
    )
    dtype: FloatDType = "float32"
    labels_dtype: IndexDType = "int64"
    outputs: list[SparseOutput] = Field(
        default_factory=lambda: list[SparseOutput](["loss"]), min_length=1
    )
    grad_loss: TensorData | None = Field(
        None, description="Upstream gradient, the labels' shape (default ones)."
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


class ErrorDetail(BaseModel):
    """Native API error body."""

    detail: str


# Open Inference Protocol (KServe v2 / Triton) REST models.


class _V2Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class InferParameters(_V2Model):
    """Tensor or request parameters; unknown keys are kept (the protocol allows any)."""

    binary_data_size: int | None = Field(None, ge=0)
    binary_data: bool | None = None
    binary_data_output: bool | None = None
    dim: int | None = None
    axis: int | None = None


class RequestInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    shape: list[int]
    datatype: str
    parameters: InferParameters | None = None
    data: TensorData | None = None


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
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
                }
            ]
        },
    )

    id: str | None = None
    parameters: InferParameters | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


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


class V2Error(BaseModel):
    """Open Inference Protocol error body."""

    error: str
