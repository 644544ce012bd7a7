"""The OpenAPI document: request models that routes read themselves join the components,
and the API-key scheme (checked by a middleware, which FastAPI cannot see) is declared.
Also the interactive docs, /docs (Swagger UI) and /redoc, served with their assets from
the fastapi-offline package: FastAPI's own pages load them from a CDN, and air-gapped
clusters have none."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from service.api import auth
from service.schemas import InferenceRequest, LossRequest, SparseLossRequest

# Routes that read their raw body (to stream it, inflate it, or take binary) declare
# these by reference; FastAPI only registers models it parses itself.
REQUEST_MODELS: tuple[type[BaseModel], ...] = (LossRequest, SparseLossRequest, InferenceRequest)
REF = "#/components/schemas/{model}"

DOCS = "/docs"
REDOC = "/redoc"
ASSETS = "/docs/assets"  # swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js, favicon.png
ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"
# The pages may load and call this origin only: ReDoc's sidebar shows a logo from its CDN
# and Swagger UI sends the spec's URL to validator.swagger.io for a badge (turned off below
# as well). Inline scripts and styles are the pages' own (Swagger UI's setup, ReDoc's
# styled-components); ReDoc's search runs in a worker made from a blob.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:; connect-src 'self'"
)


def ref(model: type[BaseModel]) -> dict[str, str]:
    """A JSON reference to a request model's component."""
    return {"$ref": REF.format(model=model.__name__)}


def install(app: FastAPI) -> None:
    """Make `app.openapi()` include REQUEST_MODELS (and what they reference) as components,
    and the bearer scheme, optional, on every protected path."""
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
            # The key or nothing (`{}`): without SCE_API_KEY there is no auth. Said once for
            # the document, and `[]` on the open paths: openapi-python-client 0.29 types an
            # operation with a `security` of its own as needing an AuthenticatedClient even
            # when `{}` is among it (openapi-generators/openapi-python-client#1372).
            schema["security"] = [{auth.SCHEME: []}, {}]
            for path, operations in schema["paths"].items():
                if not auth.protected(path):
                    for operation in operations.values():
                        operation["security"] = []
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_docs(app: FastAPI) -> None:
    """/docs and /redoc with their scripts and styles served from ASSETS: no request leaves
    the service. Create the app with `docs_url=None, redoc_url=None` (FastAPI's pages use a
    CDN). Like the spec, the pages and assets are open when an API key is set (auth.protected)."""
    app.mount(ASSETS, StaticFiles(directory=ASSETS_DIR), name="docs-assets")
    oauth2_redirect = f"{DOCS}/oauth2-redirect"

    def urls(request: Request) -> tuple[str, str]:
        root = request.scope.get("root_path", "")  # behind a proxy that strips a prefix
        return f"{root}{app.openapi_url}", f"{root}{ASSETS}"

    @app.get(DOCS, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        spec, assets = urls(request)
        page = get_swagger_ui_html(
            openapi_url=spec,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{assets}/swagger-ui-bundle.js",
            swagger_css_url=f"{assets}/swagger-ui.css",
            swagger_favicon_url=f"{assets}/favicon.png",
            oauth2_redirect_url=oauth2_redirect,
            swagger_ui_parameters={**(app.swagger_ui_parameters or {}), "validatorUrl": None},
        )
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page

    @app.get(oauth2_redirect, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        spec, assets = urls(request)
        page = get_redoc_html(
            openapi_url=spec,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{assets}/redoc.standalone.js",
            redoc_favicon_url=f"{assets}/favicon.png",
            with_google_fonts=False,  # fonts.googleapis.com is a CDN too
        )
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page
