"""The CUDA execution provider, on a machine with a GPU and onnxruntime-gpu: pytest -m cuda.

In process (the engine, and the device memory across its sessions) and end to end
(`python -m service` with SCE_PROVIDERS=cuda, over HTTP: JSON in every dtype and dim,
and a large safetensors body)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from bench.engine_memory import many_sessions_in_subprocess
from service.engine.engine import Engine
from tests.api.test_safetensors import pack, unpack
from tests.conftest import start_server, stop_server
from tests.reference import NUMPY, assert_close, random_distribution, softmax_xent

pytestmark = pytest.mark.cuda
SOFT = "softmax_cross_entropy_with_logits"


@pytest.fixture(scope="module")
def cuda_engine() -> Engine:
    engine = Engine(providers="cuda")
    assert engine.providers[0] == "CUDAExecutionProvider", engine.providers
    return engine


@pytest.mark.parametrize("dtype", list(NUMPY))
@pytest.mark.parametrize("dim", [0, -1])
def test_cuda_matches_reference(
    cuda_engine: Engine, rng: np.random.Generator, dtype: str, dim: int
) -> None:
    labels = random_distribution(rng, (64, 33, 10), dim).astype(NUMPY[dtype])
    logits = (rng.standard_normal((64, 33, 10)) * 3).astype(NUMPY[dtype])
    outputs = ["loss", "grad_logits", "grad_labels"]
    result = cuda_engine.softmax_cross_entropy(
        labels=labels, logits=logits, dim=dim, outputs=outputs
    )
    expected = softmax_xent(labels, logits, dim)
    for name, array in result.items():
        assert_close(array, expected[name], dtype, name)


def test_cuda_sparse(cuda_engine: Engine, rng: np.random.Generator) -> None:
    logits = rng.standard_normal((256, 1000)).astype(np.float32)
    labels = rng.integers(0, 1000, 256)
    loss = cuda_engine.sparse_softmax_cross_entropy(labels=labels, logits=logits).loss
    log_p = logits - np.log(np.exp(logits.astype(np.float64)).sum(-1, keepdims=True))
    assert_close(loss, -log_p[np.arange(256), labels], "float32")


MiB = 1 << 20
# What GPU 0's used memory may grow by after the first large call, however many sessions
# follow (the CPU's test is tests/engine/test_arena.py): the shared device arena's growth
# to the most demanding call. Measured on an H100 (ORT 1.31.1): +34 MiB over 45 calls
# through 44 sessions; +3192 MiB with a stream per session thread (ORT's default), and
# +4896 MiB with an arena per session as well.
GPU_GROWTH_BOUND = 512 * MiB


def test_cuda_sessions_share_one_device_arena() -> None:
    """A large call through each of 44 sessions on the GPU, in a fresh process: the
    device's used memory after each stays within GPU_GROWTH_BOUND of its use after the
    first (an arena per session kept each one's high-water mark)."""
    measured = many_sessions_in_subprocess(
        rows=2048, classes=4096, broadcast=8192, providers="cuda"
    )
    assert measured["providers"][0] == "CUDAExecutionProvider"
    growth = [(after - measured["gpu"][0]) / MiB for after in measured["gpu"]]
    assert max(growth) * MiB <= GPU_GROWTH_BOUND, (
        f"GPU memory grew by up to {max(growth):.0f} MiB after the first large call; "
        f"after each, MiB: {[round(g) for g in growth]}"
    )


# A fresh CUDA engine, in a fresh process, on an H100 (ORT 1.31.1): GPU 0's used memory
# grew by 539 MiB when it was made (the CUDA context and one session), and by 28 MiB
# more over three sessions made on first use. With all 80 sessions made at start it grew
# by ~6 GiB; with cuBLAS's default workspace, a session held 73 MiB rather than ~9.
GPU_START_BOUND = 1024 * MiB
GPU_SESSION_BOUND = 32 * MiB


def test_cuda_engine_makes_sessions_on_first_use() -> None:
    """A fresh CUDA engine holds device memory for the calls made, not for every session
    it could make, and each session holds no cuBLAS workspace."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.cuda_probes", "start"],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    assert measured["providers"][0] == "CUDAExecutionProvider"
    assert measured["sessions"] == 4, measured  # float32's made at start, then one a dtype
    made = measured["made"] - measured["before"]
    assert made <= GPU_START_BOUND, f"a fresh CUDA engine took {made / MiB:.0f} MiB"
    per_session = (measured["after_calls"] - measured["made"]) / 3
    assert per_session <= GPU_SESSION_BOUND, f"{per_session / MiB:.0f} MiB a session"


@pytest.fixture(scope="module")
def cuda_server() -> Iterator[str]:
    proc, url = start_server(env={"SCE_PROVIDERS": "cuda"}, timeout=180)
    try:
        yield url
    finally:
        stop_server(proc)


def test_cuda_server_says_so(cuda_server: str) -> None:
    assert httpx.get(cuda_server + "/v2", timeout=10).json()["providers"][0] == (
        "CUDAExecutionProvider"
    )
    config = httpx.get(f"{cuda_server}/v2/models/{SOFT}/config", timeout=10)
    assert config.json()["instance_group"][0]["kind"] == "KIND_GPU"


@pytest.mark.parametrize("dtype", list(NUMPY))
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_cuda_server_json_matches_reference(
    cuda_server: str, rng: np.random.Generator, dtype: str, dim: int
) -> None:
    labels = random_distribution(rng, (5, 7, 11), dim).astype(NUMPY[dtype])
    logits = (rng.standard_normal((5, 7, 11)) * 3).astype(NUMPY[dtype])
    outputs = ["loss", "grad_logits", "grad_labels"]
    body = {
        "labels": labels.astype(np.float64).tolist(),
        "logits": logits.astype(np.float64).tolist(),
        "dtype": dtype,
        "dim": dim,
        "outputs": outputs,
    }
    response = httpx.post(f"{cuda_server}/v1/{SOFT}", json=body, timeout=60)
    assert response.status_code == 200, response.text
    expected = softmax_xent(labels, logits, dim)
    for name in outputs:
        got = np.array(response.json()[name]["data"], np.float64)
        assert_close(got, expected[name], dtype, name)


def test_cuda_server_large_safetensors(cuda_server: str, rng: np.random.Generator) -> None:
    labels = random_distribution(rng, (2048, 32000), -1).astype(np.float32)
    logits = rng.standard_normal((2048, 32000), dtype=np.float32)
    response = httpx.post(
        f"{cuda_server}/v1/{SOFT}?outputs=loss,grad_logits",
        content=pack({"labels": labels, "logits": logits}),
        headers={
            "content-type": "application/x-safetensors",
            "accept": "application/x-safetensors",
        },
        timeout=120,
    )
    assert response.status_code == 200, response.text[:500]
    arrays, _ = unpack(response.content)
    expected = softmax_xent(labels, logits)
    assert_close(arrays["loss"], expected["loss"], "float32", "loss")
    assert_close(arrays["grad_logits"], expected["grad_logits"], "float32", "grad_logits")
    metrics = httpx.get(cuda_server + "/metrics", timeout=10).text
    assert 'provider="CUDAExecutionProvider"' in metrics
