"""Logging configuration, as a dictConfig that uvicorn applies in every worker."""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from pythonjsonlogger.core import RESERVED_ATTRS, LogData
from pythonjsonlogger.orjson import OrjsonFormatter

JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def log_config(level: str, json: bool, access: bool = True) -> dict[str, Any]:
    """One JSON object per line (python-json-logger, orjson backend), or plain text;
    uvicorn's own access log is off because `service.access` writes a structured line
    with the request id (unless `access` is false)."""
    formatter: dict[str, Any] = (
        {
            "()": "service.logs.SafeJsonFormatter",  # orjson: cheaper a line than json
            "fmt": JSON_FIELDS,
            "rename_fields": {"levelname": "level", "name": "logger", "asctime": "time"},
            # uvicorn adds an ANSI-coloured copy of its message for terminals: not for JSON
            "reserved_attrs": [*RESERVED_ATTRS, "color_message"],
        }
        if json
        else {"()": "service.logs.SafeTextFormatter", "fmt": TEXT_FORMAT}
    )
    stream = {"class": "logging.StreamHandler", "stream": "ext://sys.stderr"}
    formatters: dict[str, Any] = {"default": formatter}
    handlers: dict[str, Any] = {"default": {**stream, "formatter": "default"}}
    access_logger: dict[str, Any] = {"level": "NOTSET" if access else "WARNING"}
    if json:  # the same lines, from a formatter that knows their fields
        formatters["access"] = {"()": "service.logs.AccessJsonFormatter"}
        handlers["access"] = {**stream, "formatter": "access"}
        access_logger.update(handlers=["access"], propagate=False)
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": formatters,
        "handlers": handlers,
        "loggers": {
            "": {"handlers": ["default"], "level": level.upper()},
            "uvicorn": {"handlers": [], "level": level.upper(), "propagate": True},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "service.access": access_logger,
        },
    }


def _escaped(value: Any) -> Any:
    """`value` with every string's invalid Unicode (a lone surrogate) backslash-escaped."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_escaped(k): _escaped(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_escaped(v) for v in value]
    return value


class SafeJsonFormatter(OrjsonFormatter):
    """python-json-logger's orjson formatter, that still writes a line when a message, an
    exception or an extra field holds a string orjson refuses (a lone UTF-16 surrogate
    from a client's JSON): escaped, rather than lost behind "--- Logging error ---"."""

    def jsonify_log_record(self, log_data: LogData) -> str:
        try:
            return super().jsonify_log_record(log_data)
        except TypeError:  # orjson: "str is not valid UTF-8: surrogates not allowed"
            return super().jsonify_log_record(_escaped(log_data))


ACCESS_FIELDS = (
    "request_id",
    "method",
    "path",
    "route",
    "status",
    "duration_ms",
    "bytes_in",
    "bytes_out",
    "client",
)
"""What `service.access` records carry (service/api/metrics.py), in the order written."""


class AccessJsonFormatter(logging.Formatter):
    """The access lines, as SafeJsonFormatter writes them (same keys, order and time
    format), built from the fields they are known to carry: python-json-logger walks
    every attribute of a record through several steps, ~6 us a line where this takes
    ~2 us, and the line is written for every request."""

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:  # strftime once a second
            self._stamp = time.strftime(self.default_time_format, self.converter(second))
            self._second = second
        return f"{self._stamp},{int(record.msecs):03d}"

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        values = record.__dict__
        line.update((k, values[k]) for k in ACCESS_FIELDS if k in values)
        try:
            return orjson.dumps(line).decode()
        except TypeError:  # a lone surrogate in the path: escaped, as SafeJsonFormatter does
            return orjson.dumps(_escaped(line), default=str).decode()


class SafeTextFormatter(logging.Formatter):
    """The text formatter, with invalid Unicode escaped whatever the stream's errors mode."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        return line if line.isascii() else _escaped(line)


def lean_records() -> None:
    """Stop filling record fields that no format here prints (thread, process, the
    caller's frame): the Logging HOWTO's optimisations, ~15 us off each access line."""
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None
