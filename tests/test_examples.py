"""examples/evaluate.py run as users run it: a subprocess against a live server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import free_port
from tests.reference import softmax_xent

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "evaluate.py"


def _run(url: str, data: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(EXAMPLE), "--url", url, "--data", str(data)]
    command += ["--classes", "10", "--batch", "512", *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def _report(result: subprocess.CompletedProcess[str]) -> dict[str, float]:
    assert result.returncode == 0, result.stderr
    lines = [line.rsplit(":", 1) for line in result.stdout.strip().splitlines()]
    return {key: float(value) for key, value in lines}


def test_example_evaluates_a_dataset(server_url: str, tmp_path: Path) -> None:
    data = tmp_path / "data.npz"
    result = _run(server_url, data, "--samples", "3000", "--transport", "safetensors")
    reported = _report(result)
    arrays = np.load(data)
    expected = softmax_xent(arrays["labels"], arrays["logits"])["loss"].mean()
    assert reported["mean loss over 3000 samples"] == pytest.approx(expected, rel=1e-5)
    assert reported["perplexity"] == pytest.approx(np.exp(expected), rel=1e-5)
    assert "6/6" in result.stderr  # the progress bar: 3000 samples in batches of 512


def test_example_evaluates_integer_labels_with_padding(server_url: str, tmp_path: Path) -> None:
    data = tmp_path / "data.npz"
    reported = _report(_run(server_url, data, "--samples", "3000", "--sparse"))
    arrays = np.load(data)
    tokens, logits = arrays["tokens"], arrays["logits"].astype(np.float64)
    kept = tokens != -100
    assert 0 < kept.sum() < len(tokens)  # the dataset holds padding
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -log_p[kept, tokens[kept]].mean()
    assert reported[f"mean loss over {kept.sum()} labelled positions"] == pytest.approx(
        expected, rel=1e-5
    )
    assert reported["perplexity"] == pytest.approx(np.exp(expected), rel=1e-5)


def test_example_remakes_its_data_for_another_sample_count(server_url: str, tmp_path: Path) -> None:
    data = tmp_path / "data.npz"
    assert "mean loss over 3000 samples" in _report(_run(server_url, data, "--samples", "3000"))
    assert "mean loss over 1000 samples" in _report(_run(server_url, data, "--samples", "1000"))
    assert np.load(data)["logits"].shape == (1000, 10)
    assert "mean loss over 1000 samples" in _report(_run(server_url, data))  # the file's size


def test_example_keeps_a_data_file_it_did_not_make(server_url: str, tmp_path: Path) -> None:
    data = tmp_path / "mine.npz"
    with data.open("wb") as file:
        np.savez(file, logits=np.zeros((50, 10), np.float32), labels=np.full((50, 10), 0.1))
    result = _run(server_url, data, "--samples", "1000")
    assert result.returncode != 0 and "not made by this script" in result.stderr
    assert np.load(data)["logits"].shape == (50, 10)


def test_example_reports_an_unreachable_server_in_one_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = _run(url, tmp_path / "data.npz", "--samples", "100")
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if not line.startswith("made ")]
    assert lines == [f"evaluate.py: cannot connect to {url}: Connection refused"]
    assert result.stdout == ""
