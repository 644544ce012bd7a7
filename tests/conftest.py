"""Shared fixtures: fresh random draws, the engine, the ASGI app, a real server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.engine.engine import Engine
from service.settings import Settings


@pytest.fixture
def rng() -> np.random.Generator:
    """A generator seeded fresh for every test; the seed is printed for replay on failure."""
    seed = np.random.SeedSequence().entropy
    print(f"rng seed: {seed}")
    return np.random.default_rng(seed)


@pytest.fixture(scope="session")
def engine() -> Engine:
    return Engine(providers="cpu")


@pytest.fixture(scope="session")
def client() -> Iterator[TestClient]:
    """The app in-process (lifespan run), with a small body limit to test 413."""
    app = create_app(Settings(max_request_bytes=4 * 1024 * 1024))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_server(
    env: dict[str, str] | None = None,
    command: list[str] | None = None,
    timeout: float = 60.0,
) -> tuple[subprocess.Popen[bytes], str]:
    """`python -m service` (or `command`) on a free loopback port; returns once it is ready."""
    port = free_port()
    # Logs go to a file, not a pipe: an unread pipe fills up and then blocks the server.
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [
            *(command or [sys.executable, "-m", "service"]),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env={**os.environ, **(env or {})},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    proc.log = log  # type: ignore[attr-defined]
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url, timeout)
    return proc, url


def wait_ready(proc: subprocess.Popen[bytes], url: str, timeout: float = 60.0) -> None:
    """Return once the server at `url` answers its readiness probe; RuntimeError with its
    log when it exits first, and killed when it is not ready within `timeout` seconds.
    `proc` writes to a file kept as `proc.log` (see start_server)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server_log(proc)}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not become ready")


def server_log(proc: subprocess.Popen[bytes]) -> str:
    """Everything the server wrote so far."""
    log = proc.log  # type: ignore[attr-defined]
    log.seek(0)
    return str(log.read().decode(errors="replace"))


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """A real uvicorn server, started as users start it."""
    proc, url = start_server()
    try:
        yield url
    finally:
        stop_server(proc)
