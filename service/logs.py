"""Logging configuration, as a dictConfig that uvicorn applies in every worker."""

from __future__ import annotations

import logging
from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS

JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def log_config(level: str, json: bool, access: bool = True) -> dict[str, Any]:
    """One JSON object per line (python-json-logger, orjson backend), or plain text;
    uvicorn's own access log is off because `service.access` writes a structured line
    with the request id (unless `access` is false)."""
    formatter: dict[str, Any] = (
        {
            "()": "pythonjsonlogger.orjson.OrjsonFormatter",  # cheaper a line than json
            "fmt": JSON_FIELDS,
            "rename_fields": {"levelname": "level", "name": "logger", "asctime": "time"},
            # uvicorn adds an ANSI-coloured copy of its message for terminals: not for JSON
            "reserved_attrs": [*RESERVED_ATTRS, "color_message"],
        }
        if json
        else {"format": TEXT_FORMAT}
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


def lean_records() -> None:
    """Stop filling record fields that no format here prints (thread, process, the
    caller's frame): the Logging HOWTO's optimisations, ~15 us off each access line."""
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None
