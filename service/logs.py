"""Logging configuration, as a dictConfig that uvicorn applies in every worker."""

from __future__ import annotations

import logging
from typing import Any

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
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "": {"handlers": ["default"], "level": level.upper()},
            "uvicorn": {"handlers": [], "level": level.upper(), "propagate": True},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "service.access": {"level": "NOTSET" if access else "WARNING"},
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
