"""Data flows one way: HTTP -> codecs -> engine -> graphs. Checked on the imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "service"

# package -> modules it must never import (prefix match)
FORBIDDEN = {
    "engine": ("fastapi", "starlette", "pydantic", "service.codecs", "service.api", "uvicorn"),
    "codecs": ("fastapi", "starlette", "onnxruntime", "service.api", "service.engine.engine"),
    "errors.py": ("fastapi", "starlette", "service"),
    "schemas.py": ("service.engine", "onnxruntime", "fastapi"),
}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_imports_flow_one_way(part: str) -> None:
    target = PACKAGE / part
    files = sorted(target.rglob("*.py")) if target.is_dir() else [target]
    assert files
    for path in files:
        for name in _imports(path):
            assert not name.startswith(FORBIDDEN[part]), f"{path.name} imports {name}"
