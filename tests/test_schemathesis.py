"""schemathesis (v4) against the app's own OpenAPI schema, in-process and bounded:
no 5xx for anything it generates, and every response conforms to the schema."""

from __future__ import annotations

import os

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.app import create_app
from service.engine.engine import Engine
from service.settings import Settings

app = create_app(Settings(max_request_bytes=1 << 20, max_elements=1 << 16))
# The lifespan is not run by schemathesis' ASGI transport: build the engine here, once.
app.state.engine = Engine(max_elements=1 << 16)
schema = schemathesis.openapi.from_asgi("/openapi.json", app)
EXAMPLES = 1000 if os.environ.get("HYPOTHESIS_PROFILE") == "long" else 40
# Conformance, not acceptance: a schema-valid body can still hold shapes that do not
# broadcast, which is a 422 the schema cannot express.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_and_never_fails(case: schemathesis.Case) -> None:
    response = case.call()
    assert response.status_code < 500, response.text
    case.validate_response(response, checks=CHECKS)
