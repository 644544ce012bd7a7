"""Settings from the environment (prefix ``SCE_``); the command line overrides host and port.

The port: ``--port``, else ``SCE_PORT``, else ``PORT`` (what Knative, and so KServe's
serverless mode, Cloud Run and Heroku tell a container to listen on), else 8000.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)


class PlatformPort(PydanticBaseSettingsSource):
    """`PORT` from the environment, for the `port` field: the container contract of Knative
    (KServe serverless), Cloud Run and Heroku. Below SCE_PORT and the flags."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return os.environ.get("PORT") if field_name == "port" else None, field_name, False

    def __call__(self) -> dict[str, Any]:
        port = os.environ.get("PORT")
        return {} if port is None else {"port": port}


class Settings(BaseSettings):
    """Everything the service can be told; invalid values fail at start-up."""

    model_config = SettingsConfigDict(env_prefix="SCE_", frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    """Address to listen on (use 0.0.0.0 in a container)."""
    port: int = Field(8000, ge=0, le=65535)
    """TCP port to listen on; unset, the environment's PORT (Knative's), else 8000."""
    workers: int = Field(1, ge=1, le=64)
    """uvicorn worker processes; each builds its own sessions."""
    loop: Literal["auto", "uvloop", "asyncio"] = "auto"
    """Event loop; auto: asyncio's for one worker, uvloop for several. With one worker
    saturated by many connections uvloop serves them unevenly (p99 16-19x p50 at 64
    connections on 2 CPUs, against 1.0x with asyncio's loop, at the same req/s); large
    bodies read about as fast on either here. Several workers need uvloop: asyncio's
    accept loop hands one worker every connection of a burst (bench/tiny.py --loops)."""

    @property
    def event_loop(self) -> Literal["uvloop", "asyncio"]:
        """The loop `loop` names, `auto` resolved by the number of workers."""
        if self.loop == "auto":
            return "asyncio" if self.workers == 1 else "uvloop"
        return self.loop

    providers: Literal["cpu", "cuda"] = "cpu"
    """Execution provider: cpu, or cuda (CUDA first, CPU fallback with a warning)."""
    intra_op_threads: int | None = Field(None, ge=1, le=1024)
    """ONNX Runtime intra-op threads; unset: the CPUs this container may use."""
    max_request_bytes: int = Field(512 * 1024 * 1024, ge=1024)
    """Largest request body accepted, after decompression (413 above it)."""
    max_json_bytes: int = Field(128 * 1024 * 1024, ge=1024)
    """Largest JSON body or v2 JSON header, v1 and v2 alike (413 above it)."""
    chunked_softmax: bool = False
    """Softmax along more than 2048 classes summed in chunks: float32 error as TensorFlow's
    at any class count, at 1.2-1.7x the engine time (bench/options.py); false: ONNX
    Runtime's whole-row sums, whose error grows with the class count."""
    max_elements: int = Field(1 << 28, ge=1)
    """Most elements a tensor (or the broadcast of labels and logits) may have (422 above)."""
    memory_budget: int | None = Field(None, ge=16 * 1024 * 1024)
    """Bytes this worker may hold for requests: bodies, decoded inputs, outputs, encoded
    responses and compute blocks. Unset: 70% of the container's memory limit (cgroup),
    or of the machine's memory without one, divided among the workers."""
    max_queue: int = Field(1024, ge=0)
    """Requests that may wait (FIFO) for memory at once; past it, 503 with Retry-After."""
    queue_timeout: float = Field(30.0, gt=0)
    """Seconds a request may wait for memory before it gets 503 with Retry-After."""
    compute_threads: int | None = Field(None, ge=1, le=256)
    """Requests decoded and computed at once per worker; unset: the CPUs it may use."""
    body_timeout: float = Field(120.0, gt=0)
    """Seconds a client may take to send its whole body (408 after)."""
    min_data_rate: int = Field(8192, ge=0)
    """Bytes/s a client must sustain sending a body, after a 5 s grace (408 below it);
    0 turns the check off."""
    header_timeout: float = Field(10.0, gt=0)
    """Seconds a client may take to send a request's line and headers, counted from the
    connection's start or its first byte; a connection that sends nothing is closed."""
    max_header_bytes: int = Field(64 * 1024, ge=1024)
    """Largest request line plus headers (431 above it)."""
    keep_alive_timeout: float = Field(75.0, gt=0)
    """Seconds an idle keep-alive connection stays open between requests, counted from the
    end of the last response (nginx's default). Keep it above clients' pauses between
    requests and above a load balancer's idle timeout: a close racing a client's next
    request fails it (tritonclient does not retry a POST)."""
    send_timeout: float = Field(30.0, gt=0)
    """Seconds a response may stall because its client does not read; then it is closed."""
    api_key: SecretStr | None = None
    """When set, API routes need `Authorization: Bearer <key>`; health and metrics stay open."""
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    """Log level for the service and uvicorn."""
    log_json: bool = True
    """Structured JSON logs (one object per line); false for plain text."""
    access_log: bool = True
    """One log line per request (at info); false drops them, for ~10% more small-request
    throughput where an ingress or mesh logs requests already."""
    access_log_flush: float = Field(0.5, ge=0, le=60)
    """Seconds an access line may wait to be written with others (nginx's `access_log
    ... flush=`): one write per batch rather than per request; 0 writes each at once.
    Error and other lines are always written at once."""
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Origins allowed by CORS, comma-separated; empty (the default): CORS off."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Flags (init) over SCE_* over PORT: earlier sources win."""
        return (
            init_settings,
            env_settings,
            dotenv_settings,
            file_secret_settings,
            PlatformPort(settings_cls),
        )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("api_key")
    @classmethod
    def _key_not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        """Surrounding whitespace is dropped: `kubectl create secret --from-file` keeps the
        file's trailing newline, and no client sends it."""
        if value is None:
            return None
        key = value.get_secret_value().strip()
        if not key:
            raise ValueError("SCE_API_KEY is set but empty; unset it to turn auth off")
        return SecretStr(key)
