"""The CUDA execution provider, on a machine with a GPU and onnxruntime-gpu: pytest -m cuda."""

from __future__ import annotations

import numpy as np
import pytest

from service.engine.engine import Engine
from tests.reference import NUMPY, assert_close, random_distribution, softmax_xent

pytestmark = pytest.mark.cuda


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
