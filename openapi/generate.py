"""Write openapi/openapi.json from the app (`make openapi`); a test fails when it drifts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from service.app import create_app
from service.settings import Settings

SPEC = Path(__file__).resolve().parent / "openapi.json"


def render() -> str:
    """The spec the app serves, as committed text."""
    spec = create_app(Settings()).openapi()
    return json.dumps(spec, indent=2, sort_keys=False) + "\n"


if __name__ == "__main__":
    SPEC.write_text(render())
    print(
        f"wrote {SPEC.relative_to(Path.cwd()) if SPEC.is_relative_to(Path.cwd()) else SPEC}",
        file=sys.stderr,
    )
