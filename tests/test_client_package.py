"""The client is a distribution of its own: its wheel installs into a fresh venv with
numpy and urllib3 only (no server packages), and works there against a live server."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.reference import assert_close, random_distribution, softmax_xent, sparse_softmax_xent

ROOT = Path(__file__).resolve().parents[1]
CLIENT = ROOT / "clients" / "python"
PACKAGE = CLIENT / "src" / "sce_client"
ALLOWED = {"numpy", "urllib3", "ml_dtypes", "tqdm", "sce_client"}  # ml_dtypes, tqdm: extras
SERVER_PACKAGES = ["fastapi", "onnx", "onnxruntime", "pydantic", "uvicorn", "service"]

# Runs inside the fresh venv: calls the server, saves what came back, and says what the
# venv holds.
SCRIPT = """
import importlib.metadata, importlib.util, json, sys
import numpy as np
from sce_client import Client, evaluate

url, inputs, outputs = sys.argv[1:4]
data = np.load(inputs)
got = {}
for transport in ("v2", "safetensors"):
    with Client(url, transport=transport) as client:
        out = client.softmax_cross_entropy(
            labels=data["labels"], logits=data["logits"], outputs=["loss", "grad_logits"]
        )
        got.update({f"{transport}_{k}": v for k, v in out.items()})
        sparse = client.sparse_softmax_cross_entropy(labels=data["tokens"], logits=data["logits"])
        got[f"{transport}_sparse"] = sparse["loss"]
        batches = [(data["labels"][i : i + 3], data["logits"][i : i + 3]) for i in range(0, 8, 3)]
        got[f"{transport}_mean"] = np.array(evaluate(client, batches).mean)
np.savez(outputs, **got)
missing = [m for m in sys.argv[4:] if importlib.util.find_spec(m) is None]
names = sorted(d.metadata["Name"].lower() for d in importlib.metadata.distributions())
print(json.dumps({"missing": missing, "distributions": names}))
"""


def _run(
    command: list[str | Path], cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=cwd, env=env)
    assert result.returncode == 0, f"{command}:\n{result.stdout}\n{result.stderr}"
    return result


def test_client_wheel_installs_alone_and_calls_the_server(
    server_url: str, tmp_path: Path, rng: np.random.Generator
) -> None:
    wheels, venv = tmp_path / "wheels", tmp_path / "venv"
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", wheels, CLIENT])
    (wheel,) = wheels.glob("sce_client-*.whl")
    # A venv without pip of its own, filled by this pip (--python): a second faster.
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet", wheel])

    labels = random_distribution(rng, (8, 5), -1).astype(np.float32)
    logits = rng.standard_normal((8, 5)).astype(np.float32)
    tokens = rng.integers(0, 5, 8)
    np.savez(tmp_path / "inputs.npz", labels=labels, logits=logits, tokens=tokens)
    (tmp_path / "call.py").write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    args = [server_url, tmp_path / "inputs.npz", tmp_path / "outputs.npz"]
    checked = [*SERVER_PACKAGES, "tqdm", "ml_dtypes"]
    result = _run([python, tmp_path / "call.py", *args, *checked], cwd=tmp_path, env=env)

    report = json.loads(result.stdout.splitlines()[-1])
    assert report["missing"] == checked  # none of the server's packages, no extras
    assert report["distributions"] == ["numpy", "sce-client", "urllib3"]
    assert result.stderr == ""  # no progress bar without tqdm, and no warnings
    got = np.load(tmp_path / "outputs.npz")
    expected = softmax_xent(labels, logits)
    sparse = sparse_softmax_xent(tokens, logits)
    for transport in ("v2", "safetensors"):
        for name in ("loss", "grad_logits"):
            assert_close(got[f"{transport}_{name}"], expected[name], "float32", name)
        assert_close(got[f"{transport}_sparse"], sparse["loss"], "float32", "sparse loss")
        assert_close(got[f"{transport}_mean"], expected["loss"].mean(), "float32", "mean")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_client_imports_only_the_standard_library_numpy_and_urllib3() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert files
    for path in files:
        foreign = _imports(path) - ALLOWED - set(sys.stdlib_module_names) - {"__future__"}
        assert not foreign, f"{path.name} imports {foreign}"
