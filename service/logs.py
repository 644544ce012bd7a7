"""Logging configuration, as a dictConfig that uvicorn applies in every worker."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from typing import IO, Any, ClassVar

import orjson
from pythonjsonlogger.core import RESERVED_ATTRS, LogData
from pythonjsonlogger.orjson import OrjsonFormatter

JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def log_config(
    level: str, json: bool, access: bool = True, access_flush: float = 0.0
) -> dict[str, Any]:
    """One JSON object per line (python-json-logger, orjson backend), or plain text;
    uvicorn's own access log is off because `service.access` writes a structured line
    with the request id (unless `access` is false). With `access_flush` seconds, the
    access lines are written in batches (BatchedStreamHandler); other lines at once."""
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
    if json or access_flush > 0:
        handlers["access"] = {**stream, "formatter": "access" if json else "default"}
        if access_flush > 0:
            handlers["access"].update({"class": "service.logs.BatchedStreamHandler",
                                       "interval": access_flush})  # fmt: skip
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
        return self.stamp(record.created)

    def format(self, record: logging.LogRecord) -> str:
        values = record.__dict__
        fields = {k: values[k] for k in ACCESS_FIELDS if k in values}
        return self.line(self.formatTime(record), record.levelname, record.name,
                         record.getMessage(), fields)  # fmt: skip

    def line(self, stamp: str, level: str, name: str, message: str, fields: dict[str, Any]) -> str:
        """The JSON line of an access record from its parts (`format`, `access_line`)."""
        document = {"time": stamp, "level": level, "logger": name, "message": message, **fields}
        try:
            return orjson.dumps(document).decode()
        except TypeError:  # a lone surrogate in the path: escaped, as SafeJsonFormatter does
            return orjson.dumps(_escaped(document), default=str).decode()

    def stamp(self, created: float) -> str:
        """The time of a record created at `created` (time.time()), as formatTime writes
        it: strftime once a second."""
        second = int(created)
        if second != self._second:
            self._stamp = time.strftime(self.default_time_format, self.converter(second))
            self._second = second
        return f"{self._stamp},{int((created - second) * 1000):03d}"


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


class BatchedStreamHandler(logging.StreamHandler[IO[str]]):
    """A StreamHandler that writes its lines in batches, as nginx's `access_log ...
    buffer= flush=` does: once BATCH_BYTES have gathered, `interval` seconds after the
    first line of a batch (a background thread), and at shutdown: one write a batch of a
    few hundred lines rather than one a request. On its own that was within this
    machine's noise (docs/benchmarks.md, section (m)); `access_line` adds its lines here
    past the logging module, which is what cut an access line's cost.

    The app's lifespan flushes the batches when it ends (`flush_batches`): uvicorn ends
    on SIGTERM by raising the signal again, which skips exit handlers (logging.shutdown).
    A process killed outright loses at most `interval` seconds of lines."""

    BATCH_BYTES = 1 << 16
    _every: ClassVar[weakref.WeakSet[BatchedStreamHandler]] = weakref.WeakSet()

    def __init__(self, stream: IO[str], interval: float = 0.5) -> None:
        super().__init__(stream)
        self.interval = interval
        self._lines: list[str] = []
        self._bytes = 0
        self._due = threading.Event()  # set by the first line of a batch, and by close
        self._closed = False
        self.flusher = threading.Thread(
            target=self._flush_after_interval, name="log-batches", daemon=True
        )
        self.flusher.start()
        self._every.add(self)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write_line(self.format(record))
        except Exception:  # as StreamHandler.emit: reported on stderr, the caller goes on
            self.handleError(record)

    def write_line(self, line: str) -> None:
        """Add a formatted line to the batch (`access_line` calls it past the logging
        module; `emit` holds the lock already, which is reentrant)."""
        self.acquire()
        try:
            if not self._lines:
                self._due.set()
            line += self.terminator
            self._lines.append(line)
            self._bytes += len(line)
            if self._bytes >= self.BATCH_BYTES:
                self._write()
        finally:
            self.release()

    def flush(self) -> None:
        self.acquire()
        try:
            self._write()
        finally:
            self.release()

    def _write(self) -> None:
        if self._lines:
            text = "".join(self._lines)
            self._lines.clear()
            self._bytes = 0
            self.stream.write(text)
            self.stream.flush()

    def close(self) -> None:
        self.flush()
        self._closed = True
        self._due.set()  # the thread ends
        super().close()

    def _flush_after_interval(self) -> None:
        while not self._closed:
            self._due.wait()
            self._due.clear()
            if not self._closed:
                time.sleep(self.interval)
            with contextlib.suppress(OSError, ValueError):  # a closed stream: as at shutdown
                self.flush()


def flush_batches() -> None:
    """Write every BatchedStreamHandler's waiting lines now (at shutdown)."""
    for handler in list(BatchedStreamHandler._every):
        with contextlib.suppress(OSError, ValueError):
            handler.flush()


def access_line(logger: logging.Logger, message: str, fields: dict[str, Any]) -> None:
    """One access line at info. With the service's own configuration (one batched handler
    with the access formatter, no filters, not propagated) it is formatted and batched
    directly: the logging module's record, handler walk and locks cost more than the
    line itself. Any other configuration gets `logger.info`."""
    handlers = logger.handlers
    if len(handlers) == 1 and not logger.propagate and not logger.filters:
        handler = handlers[0]
        formatter = handler.formatter
        if (
            type(handler) is BatchedStreamHandler
            and type(formatter) is AccessJsonFormatter
            and not handler.filters
            and handler.level <= logging.INFO
        ):
            stamp = formatter.stamp(time.time())
            handler.write_line(formatter.line(stamp, "INFO", logger.name, message, fields))
            return
    logger.info("%s", message, extra=fields)
