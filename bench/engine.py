"""In-process engine figures: time against a memcpy of the inputs, numpy, and where
installed PyTorch (in .venv) and TensorFlow (bench/.venv-tf, `make bench-peers`), for the
loss and for loss + both gradients; and accuracy against float64.

    python -m bench.engine [--sizes 32x10 1024x1000 8192x4096 8192x32000 --repeat 5]
    python -m bench.engine --providers cuda   # on a GPU machine with onnxruntime-gpu

Contenders run interleaved (round-robin), best of `repeat`. With `--providers cuda` the
engine runs on the CUDA provider (numpy in, numpy out, as the server calls it), beside
PyTorch on the GPU the same way and two floors that leave the data on the device: the
same ONNX graph through IO binding to device memory, and PyTorch on device tensors.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from service.engine.engine import Engine
from tests.engine.test_accuracy import TF_GRAD_ABS, TF_LOSS_REL, sparse_soft_inputs
from tests.reference import NUMPY, random_distribution, softmax_xent

EVERYTHING = ["loss", "grad_logits", "grad_labels"]
TF_PYTHON = Path(__file__).resolve().parent / ".venv-tf" / "bin" / "python"


@dataclass(frozen=True)
class SelfTimed:
    """A contender in another process reports its own time, without the round trip."""

    seconds: float


def numpy_loss(labels: np.ndarray, logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return -(labels * log_p).sum(axis=-1)


def numpy_loss_and_grads(labels: np.ndarray, logits: np.ndarray) -> tuple[np.ndarray, ...]:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return -(labels * log_p).sum(axis=-1), np.exp(log_p) - labels, -log_p


def torch_contenders(labels: np.ndarray, logits: np.ndarray) -> dict[str, Callable[[], object]]:
    try:
        import torch
    except ImportError:
        return {}
    torch.set_num_threads(2)
    y, x = torch.from_numpy(labels), torch.from_numpy(logits)

    def loss() -> object:
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(x, y, reduction="none")

    def loss_and_grads() -> object:
        xg, yg = x.detach().requires_grad_(), y.detach().requires_grad_()
        out = torch.nn.functional.cross_entropy(xg, yg, reduction="none")
        out.backward(torch.ones_like(out))
        return out, xg.grad, yg.grad

    return {"PyTorch loss": loss, "PyTorch loss + grads": loss_and_grads}


class TensorFlow:
    """bench/tf_worker.py in bench/.venv-tf, one process for the whole run."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc

    def _ask(self, command: dict[str, object]) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def _run(self, run: str) -> SelfTimed:
        return SelfTimed(float(self._ask({"run": run})))

    def contenders(self, shape: tuple[int, int]) -> dict[str, Callable[[], object]]:
        self._ask({"size": list(shape)})
        return {f"TensorFlow {run}": partial(self._run, run) for run in ("loss", "loss + grads")}


@contextmanager
def tensorflow() -> Iterator[TensorFlow | None]:
    """The TensorFlow worker, or None when bench/.venv-tf does not exist."""
    if not TF_PYTHON.exists():
        yield None
        return
    worker = Path(__file__).with_name("tf_worker.py")
    proc = subprocess.Popen(
        [str(TF_PYTHON), "-P", str(worker)],  # -P: bench/http.py must not shadow http
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"},
    )
    try:
        yield TensorFlow(proc)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def interleaved(contenders: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    best = dict.fromkeys(contenders, float("inf"))
    for fn in contenders.values():
        fn()  # warm-up
    for _ in range(repeat):
        for name, fn in contenders.items():
            start = time.perf_counter()
            result = fn()
            took = result.seconds if isinstance(result, SelfTimed) else time.perf_counter() - start
            best[name] = min(best[name], took)
    return best


def contenders(
    engine: Engine, labels: np.ndarray, logits: np.ndarray
) -> dict[str, Callable[[], object]]:
    return {
        "memcpy of both inputs": lambda: (labels.copy(), logits.copy()),
        "engine loss": lambda: engine.softmax_cross_entropy(labels=labels, logits=logits),
        "engine loss + grads": lambda: engine.softmax_cross_entropy(
            labels=labels, logits=logits, outputs=EVERYTHING
        ),
        "numpy loss": lambda: numpy_loss(labels, logits),
        "numpy loss + grads": lambda: numpy_loss_and_grads(labels, logits),
        **torch_contenders(labels, logits),
    }


def device_binding(
    outputs: Iterable[str], labels: np.ndarray, logits: np.ndarray, options: Any = None
) -> tuple[Any, Any]:
    """The float32 soft graph of `outputs` in a CUDA session (ONNX Runtime's session
    options, or `options`), and an IO binding whose inputs were copied to device memory
    once and whose outputs stay there: `session.run_with_iobinding(binding)` runs it
    (ORT syncs the stream at its end)."""
    import onnxruntime as ort

    from service.engine import graphs
    from service.engine.types import DType

    wanted = sorted(outputs)
    model = graphs.soft_graph(DType.float32, 2, wanted)  # type: ignore[arg-type]
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CUDAExecutionProvider"]
    )
    binding = session.io_binding()
    feeds = {"labels": labels, "logits": logits}
    if wanted != ["loss"]:
        feeds["grad_loss"] = np.ones((labels.shape[0], 1), np.float32)
    for name, array in feeds.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0))
    for name in wanted:
        binding.bind_output(name, "cuda", 0)
    return session, binding


def cuda_contenders(labels: np.ndarray, logits: np.ndarray) -> dict[str, Callable[[], object]]:
    """On the GPU: PyTorch from and to numpy (the server's case), and the two floors that
    keep inputs and outputs in device memory (what IO binding to the device would give
    a caller whose tensors already live there)."""
    import torch

    def device_resident(outputs: list[str]) -> Callable[[], object]:
        session, binding = device_binding(outputs, labels, logits)
        return lambda: session.run_with_iobinding(binding)

    x_gpu, y_gpu = torch.from_numpy(logits).cuda(), torch.from_numpy(labels).cuda()

    def torch_on_device(grads: bool) -> Callable[[], object]:
        def run() -> object:
            x, y = x_gpu.detach().requires_grad_(grads), y_gpu.detach().requires_grad_(grads)
            out = torch.nn.functional.cross_entropy(x, y, reduction="none")
            if grads:
                out.backward(torch.ones_like(out))
            torch.cuda.synchronize()
            return out

        return run

    def torch_from_host(grads: bool) -> Callable[[], object]:
        def run() -> object:
            x = torch.from_numpy(logits).cuda().requires_grad_(grads)
            y = torch.from_numpy(labels).cuda().requires_grad_(grads)
            with torch.set_grad_enabled(grads):
                out = torch.nn.functional.cross_entropy(x, y, reduction="none")
            if not grads:
                return out.cpu().numpy()
            out.backward(torch.ones_like(out))
            assert x.grad is not None and y.grad is not None
            return out.detach().cpu().numpy(), x.grad.cpu().numpy(), y.grad.cpu().numpy()

        return run

    return {
        "ORT CUDA loss, device-resident": device_resident(["loss"]),
        "ORT CUDA loss + grads, device-resident": device_resident(EVERYTHING),
        "PyTorch CUDA loss": torch_from_host(False),
        "PyTorch CUDA loss + grads": torch_from_host(True),
        "PyTorch CUDA loss, device-resident": torch_on_device(False),
        "PyTorch CUDA loss + grads, device-resident": torch_on_device(True),
    }


def measure(
    sizes: list[tuple[int, int]], repeat: int, providers: str = "cpu"
) -> list[dict[str, object]]:
    engine = Engine(providers=providers)
    if providers == "cuda" and engine.providers[0] != "CUDAExecutionProvider":
        raise SystemExit(f"CUDA was asked for, but the engine runs on {engine.providers}")
    rng = np.random.default_rng(0)
    rows = []
    with tensorflow() as tf:
        for n, c in sizes:
            labels = random_distribution(rng, (n, c), -1).astype(np.float32)
            logits = rng.standard_normal((n, c), dtype=np.float32)
            rounds = repeat if n * c < 1 << 26 else max(2, repeat // 2)
            if providers == "cuda":
                others = cuda_contenders(labels, logits)
            else:
                others = tf.contenders((n, c)) if tf is not None else {}
            times = interleaved({**contenders(engine, labels, logits), **others}, rounds)
            rows.extend(
                {"size": f"{n}x{c}", "contender": k, "seconds": v} for k, v in times.items()
            )
    return rows


def accuracy(providers: str = "cpu") -> list[dict[str, object]]:
    """Error by dtype at 256 x 1000 (bench/run.py's table); see accuracy_by_classes."""
    engine = Engine(providers=providers)
    rng = np.random.default_rng(1)
    rows = []
    for dtype in NUMPY:
        y = random_distribution(rng, (256, 1000), -1).astype(NUMPY[dtype])
        x = (rng.standard_normal((256, 1000)) * 3).astype(NUMPY[dtype])
        got = engine.softmax_cross_entropy(labels=y, logits=x, outputs=EVERYTHING)
        want = softmax_xent(y, x)
        row: dict[str, object] = {"dtype": dtype}
        for name, array in got.items():
            err = np.abs(array.astype(np.float64) - want[name])
            row[name] = float(np.max(err / np.maximum(np.abs(want[name]), 1e-30)))
            row[name + "_abs"] = float(err.max())
        rows.append(row)
    return rows


def accuracy_by_classes(providers: str = "cpu") -> list[dict[str, object]]:
    """float32 error at 32 rows by class count (tests/engine/test_accuracy.py's inputs and
    measures), beside TensorFlow 2.21's (the issue's figures: loss relative, grad_logits
    absolute; grad_labels normwise relative, set against the loss's figure)."""
    engine = Engine(providers=providers)
    rows: list[dict[str, object]] = []
    for classes in (1_000, 32_000, 128_000, 256_000):
        for scale in (3.0, 6.0):
            y, x = sparse_soft_inputs(classes, scale, "float32")
            want = softmax_xent(y, x)
            got = dict(engine.softmax_cross_entropy(labels=y, logits=x, outputs=EVERYTHING).items())
            loss_only = engine.softmax_cross_entropy(labels=y, logits=x).loss
            assert loss_only is not None

            def err(name: str, array: np.ndarray, want: dict[str, np.ndarray] = want) -> np.ndarray:
                diff: np.ndarray = np.abs(array.astype(np.float64) - want[name])
                return diff

            rows.append(
                {
                    "classes": classes,
                    "logits_scale": scale,
                    "loss_rel": float(np.max(err("loss", loss_only) / np.abs(want["loss"]))),
                    "loss_rel_with_grads": float(
                        np.max(err("loss", got["loss"]) / np.abs(want["loss"]))
                    ),
                    "grad_logits_abs": float(err("grad_logits", got["grad_logits"]).max()),
                    "grad_labels_normwise": float(
                        err("grad_labels", got["grad_labels"]).max()
                        / np.abs(want["grad_labels"]).max()
                    ),
                    "tensorflow_loss_rel": TF_LOSS_REL,
                    "tensorflow_grad_logits_abs": TF_GRAD_ABS,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", nargs="+", default=["32x10", "1024x1000", "8192x4096"])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--providers", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes]
    report = {
        "speed": measure(sizes, args.repeat, args.providers),  # type: ignore[arg-type]
        "accuracy": accuracy(args.providers),
        "accuracy_by_classes": accuracy_by_classes(args.providers),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
