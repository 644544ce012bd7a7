"""KServe's own client (`kserve.InferenceRESTClient`, protocol v2) against the real server.

kserve 0.21 pins protobuf below what onnx here needs, so it lives in a venv of its own
(.venv-kserve, which `make test` builds); tests/kserve_client.py runs in it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.reference import assert_close, random_distribution, softmax_xent, sparse_softmax_xent

ROOT = Path(__file__).resolve().parents[1]
PYTHON = ROOT / ".venv-kserve" / "bin" / "python"
SOFT = "softmax_cross_entropy_with_logits"
SPARSE = "sparse_softmax_cross_entropy_with_logits"


@pytest.fixture(scope="module")
def kserve_python() -> str:
    assert PYTHON.exists(), "KServe's client is not installed: make .venv-kserve/.installed"
    return str(PYTHON)


def test_kserve_rest_client_json_and_binary(
    kserve_python: str, server_url: str, rng: np.random.Generator, tmp_path: Path
) -> None:
    labels = random_distribution(rng, (5, 7), -1).astype(np.float32)
    logits = (rng.standard_normal((5, 7)) * 3).astype(np.float32)
    grad_loss = rng.standard_normal(5).astype(np.float32)
    sparse_labels = rng.integers(0, 6, size=4).astype(np.int64)
    sparse_logits = rng.standard_normal((4, 6)).astype(np.float32)
    source, target = tmp_path / "inputs.npz", tmp_path / "outputs.npz"
    np.savez(
        source,
        labels=labels,
        logits=logits,
        grad_loss=grad_loss,
        sparse_labels=sparse_labels,
        sparse_logits=sparse_logits,
    )
    run = subprocess.run(
        [kserve_python, str(ROOT / "tests" / "kserve_client.py"), server_url, source, target],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    found = dict(np.load(target))

    expected = {
        SOFT: softmax_xent(labels, logits, -1, grad_loss),
        SPARSE: sparse_softmax_xent(sparse_labels, sparse_logits),
    }
    for transport in ("json", "binary"):
        for model, outputs in expected.items():
            assert bool(found[f"{transport}/{model}/binary"]) is (transport == "binary")
            for name, reference in outputs.items():
                got = found[f"{transport}/{model}/{name}"]
                assert got.dtype == np.float32, (transport, model, name)
                assert_close(got, reference, "float32", f"{transport} {model} {name}")

    # A body whose model_name contradicts the URL is a 400 that says so, through the client.
    assert int(found["mismatch/status"]) == 400
    assert "contradicts the URL's model" in str(found["mismatch/message"])
