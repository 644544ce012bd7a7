"""The OpenAPI document: request models that routes read themselves join the components,
and the API-key scheme (checked by a middleware, which FastAPI cannot see) is declared."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from service.api import auth
from service.schemas import InferenceRequest, LossRequest, SparseLossRequest

# Routes that read their raw body (to stream it, inflate it, or take binary) declare
# these by reference; FastAPI only registers models it parses itself.
REQUEST_MODELS: tuple[type[BaseModel], ...] = (LossRequest, SparseLossRequest, InferenceRequest)
REF = "#/components/schemas/{model}"


def ref(model: type[BaseModel]) -> dict[str, str]:
    """A JSON reference to a request model's component."""
    return {"$ref": REF.format(model=model.__name__)}


def install(app: FastAPI) -> None:
    """Make `app.openapi()` include REQUEST_MODELS (and what they reference) as components,
    and the bearer scheme on every protected path."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            _, defs = models_json_schema(
                [(m, "validation") for m in REQUEST_MODELS], ref_template=REF
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, definition in defs.get("$defs", {}).items():
                components.setdefault(name, definition)
            schema["components"]["securitySchemes"] = {auth.SCHEME: auth.SECURITY_SCHEME}
            for path, operations in schema["paths"].items():
                if auth.protected(path):
                    for operation in operations.values():
                        operation["security"] = [{auth.SCHEME: []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
