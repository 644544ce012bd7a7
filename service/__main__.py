"""`python -m service` / `sce-serve`: flags and environment -> Settings -> uvicorn."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence

import uvicorn
from pydantic import ValidationError

from service.logs import log_config
from service.settings import Settings


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
    if settings.workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # Each worker has its own metrics; this directory lets /metrics add them up.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="sce-metrics-")
    uvicorn.run(
        "service.app:app_from_environment",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        log_config=log_config(settings.log_level, settings.log_json, settings.access_log),
        loop=settings.loop,
        http="httptools",
        access_log=False,
        timeout_graceful_shutdown=30,
    )


if __name__ == "__main__":
    main()
