"""`python -m service` / `sce-serve`: flags and environment -> Settings -> uvicorn."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

import uvicorn
from prometheus_client import multiprocess
from pydantic import ValidationError
from uvicorn.supervisors import Multiprocess

from service.api.protocol import ServiceHttpProtocol
from service.logs import log_config
from service.settings import Settings


class Supervisor(Multiprocess):
    """uvicorn's worker supervisor (it restarts workers that die), which also forgets the
    live gauges of every worker that is gone: a worker killed mid-request (SIGKILL, the
    OOM killer) never decrements `sce_http_requests_in_flight`, and its per-process file
    would count that request as in flight for as long as the server runs."""

    def __init__(self, config: uvicorn.Config, sockets: list[Any]) -> None:
        super().__init__(config, sockets=sockets)
        self.known_pids: set[int] = set()

    def keep_subprocess_alive(self) -> None:
        """Called every half second, after signals (SIGHUP, SIGTTOU) are handled."""
        super().keep_subprocess_alive()
        pids = {p.pid for p in self.processes if p.pid is not None}
        for pid in self.known_pids - pids:
            multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
        self.known_pids = pids


def main(argv: Sequence[str] | None = None) -> None:
    """Parse flags (which win over SCE_HOST/SCE_PORT), validate settings, serve."""
    parser = argparse.ArgumentParser(prog="sce-serve", description=__doc__)
    parser.add_argument("--host", help="address to listen on (SCE_HOST)")
    parser.add_argument("--port", type=int, help="TCP port (SCE_PORT)")
    parser.add_argument("--workers", type=int, help="worker processes (SCE_WORKERS)")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        sys.exit(f"invalid settings:\n{exc}")
    # Workers re-read the environment: pass the flags on through it.
    for key, value in overrides.items():
        os.environ[f"SCE_{key.upper()}"] = str(value)
    options: dict[str, Any] = {
        "factory": True,
        "host": settings.host,
        "port": settings.port,
        "workers": settings.workers,
        "log_level": settings.log_level,
        "log_config": log_config(
            settings.log_level, settings.log_json, settings.access_log, settings.access_log_flush
        ),
        "loop": settings.event_loop,
        # Header size and time limits, keep-alive and send timeouts (SCE_*): see protocol.py
        "http": ServiceHttpProtocol,
        "access_log": False,
        "timeout_graceful_shutdown": 30,
    }
    app = "service.app:app_from_environment"
    if settings.workers == 1:
        uvicorn.run(app, **options)
        return
    metrics_dir = None
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # Each worker has its own metrics; this directory lets /metrics add them up.
        metrics_dir = tempfile.mkdtemp(prefix="sce-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        # uvicorn.run's multi-worker branch, with the supervisor above.
        config = uvicorn.Config(app, **options)
        Supervisor(config, sockets=[config.bind_socket()]).run()
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
