"""`python -m service` / `sce-serve`: flags and environment -> Settings -> uvicorn."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import uvicorn
from pydantic import ValidationError

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
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    uvicorn.run(
        "service.app:app_from_environment",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
    )


if __name__ == "__main__":
    main()
