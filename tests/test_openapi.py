"""The committed OpenAPI spec: equal to what the app serves, clean, and good for a client."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from openapi.generate import SPEC, render
from tests.reference import assert_close, random_distribution, softmax_xent

ROOT = Path(__file__).resolve().parents[1]


def test_committed_spec_matches_the_app() -> None:
    assert SPEC.read_text() == render(), "openapi/openapi.json is stale: run `make openapi`"


def test_served_spec_is_the_committed_one(client: TestClient) -> None:
    assert client.get("/openapi.json").json() == json.loads(SPEC.read_text())


def test_every_operation_is_named_tagged_and_documents_its_errors() -> None:
    spec = json.loads(SPEC.read_text())
    seen = set()
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            assert op.get("operationId") and op["operationId"] not in seen, (method, path)
            seen.add(op["operationId"])
            assert op.get("tags") and op.get("summary"), (method, path)
            if method == "post":
                assert {"400", "413", "415", "422"} <= set(op["responses"]), (method, path)
    schemas = spec["components"]["schemas"]
    for model in ("LossRequest", "SparseLossRequest", "InferenceRequest"):
        assert schemas[model].get("examples"), model
    # the evaluation options are documented on every transport (issue 13)
    for model in ("LossRequest", "SparseLossRequest"):
        members = schemas[model]["properties"]
        options = {"reduction", "label_smoothing", "class_weights", "sample_weights"}
        assert options <= set(members), model
        assert "weight_sum" in members["outputs"]["items"]["enum"], model
    assert "ignore_index" in schemas["SparseLossRequest"]["properties"]
    assert "ignore_index" not in schemas["LossRequest"]["properties"]  # integer labels only
    assert {"reduction", "label_smoothing", "ignore_index"} <= set(
        schemas["InferParameters"]["properties"]
    )
    sparse_query = spec["paths"]["/v1/sparse_softmax_cross_entropy_with_logits"]["post"]
    assert {"dim", "reduction", "label_smoothing", "ignore_index"} <= {
        parameter["name"] for parameter in sparse_query["parameters"]
    }
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_generated_client_calls_the_live_server(
    tmp_path: Path, server_url: str, rng: np.random.Generator
) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        [
            Path(sys.executable).parent / "openapi-python-client",
            "generate",
            "--path",
            str(SPEC),
            "--config",
            str(ROOT / "openapi" / "client-config.yaml"),
            "--meta",
            "none",
            "--output-path",
            str(tmp_path / "sce_client"),
            "--fail-on-warning",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    sys.path.insert(0, str(tmp_path))
    try:
        client_module = importlib.import_module("sce_client")
        api = importlib.import_module("sce_client.api.native.softmax_cross_entropy_with_logits")
        models = importlib.import_module("sce_client.models")
        v2_api = importlib.import_module("sce_client.api.open_inference_protocol.server_metadata")
    finally:
        sys.path.remove(str(tmp_path))

    labels = random_distribution(rng, (3, 4), -1)
    logits = rng.standard_normal((3, 4))
    client = client_module.AuthenticatedClient(base_url=server_url, token="unused")
    body = models.LossRequest(
        labels=labels.tolist(), logits=logits.tolist(), dtype=models.LossRequestDtype.FLOAT64
    )
    response = api.sync(client=client, body=body)
    assert isinstance(response, models.LossResponse), response
    assert response.loss.shape == [3]
    assert_close(np.array(response.loss.data), softmax_xent(labels, logits)["loss"], "float64")

    reduced = api.sync(
        client=client,
        body=models.LossRequest(
            labels=labels.tolist(),
            logits=logits.tolist(),
            dtype=models.LossRequestDtype.FLOAT64,
            reduction=models.LossRequestReduction.MEAN,
            label_smoothing=0.0,
            outputs=[models.LossRequestOutputsItem.LOSS, models.LossRequestOutputsItem.WEIGHT_SUM],
        ),
    )
    assert isinstance(reduced, models.LossResponse), reduced
    assert reduced.loss.shape == [] and reduced.weight_sum.data == 3.0
    expected = softmax_xent(labels, logits)["loss"].mean()
    assert_close(np.array(reduced.loss.data), expected, "float64")

    bad = api.sync(
        client=client, body=models.LossRequest(labels=[1.0, 0.0], logits=[1.0, 2.0, 3.0])
    )
    assert isinstance(bad, models.ErrorDetail) and "broadcast" in bad.detail

    metadata = v2_api.sync(client=client)
    assert metadata.providers == ["CPUExecutionProvider"]
