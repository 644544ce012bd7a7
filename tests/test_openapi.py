"""The committed OpenAPI spec: equal to what the app serves, clean, and good for a client."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from safetensors.numpy import load

from openapi.generate import SPEC, render
from tests.reference import assert_close, random_distribution, softmax_xent

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
EXAMPLE = ROOT / "openapi" / "client_example.py"


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


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the package `sce_openapi_client`, generated from the committed spec
    as the README says."""
    folder = tmp_path_factory.mktemp("generated")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}  # its ruff hooks
    result = subprocess.run(
        [
            BIN / "openapi-python-client",
            "generate",
            "--path",
            str(SPEC),
            "--config",
            str(ROOT / "openapi" / "client-config.yaml"),
            "--meta",
            "none",
            "--output-path",
            str(folder / "sce_openapi_client"),
            "--fail-on-warning",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return folder


def imported(generated: Path, *modules: str) -> list[ModuleType]:
    """Modules of the generated client (or that use it), imported with it on sys.path."""
    sys.path.insert(0, str(generated))
    try:
        return [importlib.import_module(module) for module in modules]
    finally:
        sys.path.remove(str(generated))


def test_generated_client_calls_the_live_server(
    generated: Path, server_url: str, rng: np.random.Generator
) -> None:
    client_module, api, models, v2_api = imported(
        generated,
        "sce_openapi_client",
        "sce_openapi_client.api.native.softmax_cross_entropy_with_logits",
        "sce_openapi_client.models",
        "sce_openapi_client.api.open_inference_protocol.server_metadata",
    )
    labels = random_distribution(rng, (3, 4), -1)
    logits = rng.standard_normal((3, 4))
    client = client_module.Client(base_url=server_url)  # no key configured: no token either
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


def test_client_example_type_checks_against_the_generated_client(
    generated: Path, tmp_path: Path
) -> None:
    """openapi/client_example.py passes mypy --strict against the generated package: an
    unauthenticated Client is accepted, and the safetensors answer is typed as bytes (File)."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--follow-imports=silent",  # the generated code's own nits are not the user's
            f"--cache-dir={tmp_path / 'mypy'}",
            str(EXAMPLE),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "MYPYPATH": str(generated)},
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_client_example_computes_over_json_and_safetensors(
    generated: Path, server_url: str, rng: np.random.Generator
) -> None:
    (client_module, example) = imported(generated, "sce_openapi_client", "openapi.client_example")
    labels = random_distribution(rng, (4, 6), -1)
    logits = rng.standard_normal((4, 6))
    labels[1, 2], logits[1, 2] = 0.0, -np.inf  # JSON has no -inf: the example writes a string
    labels[1] /= labels[1].sum()
    logits[2, 0] = np.nan  # a NaN travels both ways and comes back as NaN
    with np.errstate(invalid="ignore"):  # 0 * -inf
        expected = softmax_xent(labels, logits)
    with client_module.Client(base_url=server_url) as client:
        outputs = example.evaluate(client, labels, logits)
    for transport in ("", "safetensors_"):
        for name in ("loss", "grad_logits"):
            assert_close(outputs[transport + name], expected[name], "float64", transport + name)
    assert np.isnan(outputs["loss"][1:3]).all()  # the reference says NaN for both rows


@pytest.mark.parametrize(
    ("path", "labels"),
    [
        ("/v1/softmax_cross_entropy_with_logits", [[0.25, 0.75], [1.0, 0.0]]),
        ("/v1/sparse_softmax_cross_entropy_with_logits", [1, 0]),
    ],
)
def test_safetensors_operations_answer_safetensors_without_accept(
    server_url: str, path: str, labels: list[Any]
) -> None:
    """The binary operations that the spec types as bytes answer what it says: the same
    outputs as their JSON twins, as safetensors, with no Accept header."""
    body = {"labels": labels, "logits": [[2.0, -1.0], [0.5, 0.5]], "dtype": "float64"}
    spec = json.loads(SPEC.read_text())["paths"][f"{path}.safetensors"]["post"]
    assert list(spec["responses"]["200"]["content"]) == ["application/x-safetensors"]
    binary = httpx.post(f"{server_url}{path}.safetensors", json=body)
    assert binary.status_code == 200, binary.text
    assert binary.headers["content-type"] == "application/x-safetensors"
    plain = httpx.post(f"{server_url}{path}", json=body).json()
    np.testing.assert_array_equal(load(binary.content)["loss"], plain["loss"]["data"])
    refused = httpx.post(f"{server_url}{path}.safetensors", json={**body, "dim": 5})
    assert refused.status_code == 422 and "detail" in refused.json()  # errors stay JSON
