"""Start and stop the servers that benchmarks compare, on loopback, under one uvicorn setup."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """VmRSS (now) or VmHWM (peak) of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


def reset_peak_rss(pid: int) -> None:
    """Reset a process's VmHWM to its current RSS (Linux: clear_refs 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def cpu_seconds(pid: int) -> float:
    """A process's user + system CPU time so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def running(command: list[str], ready: str, env: dict[str, str] | None = None) -> Iterator[int]:
    """Run a server until the block ends; yields its pid once `ready` answers."""
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        command, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        for _ in range(1200):
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"{command} exited:\n{log.read().decode()[-2000:]}")
            try:
                if httpx.get(ready, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"{command} did not become ready")
        yield proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def service(port: int, workers: int = 1, **env: str) -> tuple[list[str], str, dict[str, str]]:
    """The service as users start it (JSON access logs on, as by default)."""
    command = [sys.executable, "-m", "service", "--port", str(port), "--workers", str(workers)]
    return command, f"http://127.0.0.1:{port}/v2/health/ready", env


def bare(port: int, loop: str = "asyncio") -> tuple[list[str], str, dict[str, str]]:
    """Bare FastAPI under uvicorn with the service's parser (httptools) and, by default, the
    loop its one worker runs on (SCE_LOOP=auto: asyncio's)."""
    command = [
        sys.executable, "-m", "uvicorn", "bench.bare_app:app",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
        "--loop", loop, "--http", "httptools",
    ]  # fmt: skip
    return command, f"http://127.0.0.1:{port}/docs", {}


def granian(port: int) -> tuple[list[str], str, dict[str, str]]:
    """The same bare FastAPI app under granian (Rust HTTP server, one worker)."""
    binary = Path(sys.executable).parent / "granian"
    command = [
        str(binary), "--interface", "asgi", "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1", "--log-level", "warning", "bench.bare_app:app",
    ]  # fmt: skip
    return command, f"http://127.0.0.1:{port}/docs", {}


def mlserver(port: int) -> tuple[list[str], str, dict[str, str]] | None:
    """MLServer 1.7.1 with a numpy runtime, if bench/.venv-mlserver exists (make bench-peers)."""
    binary = ROOT / "bench" / ".venv-mlserver" / "bin" / "mlserver"
    if not binary.exists():
        return None
    env = {"MLSERVER_HTTP_PORT": str(port), "MLSERVER_GRPC_PORT": str(free_port()),
           "MLSERVER_METRICS_PORT": str(free_port()), "MLSERVER_PARALLEL_WORKERS": "0"}  # fmt: skip
    command = [str(binary), "start", str(ROOT / "bench" / "mlserver")]
    ready = f"http://127.0.0.1:{port}/v2/models/softmax_cross_entropy_with_logits/ready"
    return command, ready, env


def kserve(port: int) -> tuple[list[str], str, dict[str, str]] | None:
    """KServe 0.21's model server with a numpy model, if .venv-kserve exists."""
    python = ROOT / ".venv-kserve" / "bin" / "python"
    if not python.exists():
        return None
    # -P: bench/ must not come first on sys.path (bench/http.py would shadow http)
    command = [str(python), "-P", str(ROOT / "bench" / "kserve_model.py"),
               "--http_port", str(port), "--enable_latency_logging", "false"]  # fmt: skip
    ready = f"http://127.0.0.1:{port}/v2/models/softmax_cross_entropy_with_logits/ready"
    return command, ready, {}
