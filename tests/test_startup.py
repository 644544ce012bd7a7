"""Where the server listens: flags over SCE_HOST/SCE_PORT over PORT (Knative's container
contract) over 127.0.0.1:8000, both for `python -m service` and under `make run`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from service.settings import Settings
from tests.conftest import free_port, stop_server, wait_ready

ROOT = Path(__file__).resolve().parents[1]
# What could change where the server listens, or what an outer make passes down.
PLACEMENT = ("HOST", "PORT", "SCE_HOST", "SCE_PORT", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")


def _clean_environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PLACEMENT}
    return {**env, **extra}


@pytest.mark.parametrize(
    ("env", "flag", "expected"),
    [
        ({}, None, 8000),
        ({"PORT": "9001"}, None, 9001),
        ({"PORT": "9001", "SCE_PORT": "9002"}, None, 9002),
        ({"PORT": "9001", "SCE_PORT": "9002"}, 9003, 9003),
        ({"PORT": "9001"}, 9003, 9003),
    ],
)
def test_port_precedence(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], flag: int | None, expected: int
) -> None:
    for key in ("PORT", "SCE_PORT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings() if flag is None else Settings(port=flag)
    assert settings.port == expected


def test_a_bad_port_variable_fails_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCE_PORT", raising=False)
    monkeypatch.setenv("PORT", "http")
    with pytest.raises(ValueError, match="port"):
        Settings()


def test_the_server_listens_on_the_platforms_port() -> None:
    """As Knative runs the image: no flags, no SCE_PORT, PORT set."""
    port = free_port()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service"],
            env=_clean_environment(PORT=str(port)),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        proc.log = log  # type: ignore[attr-defined]
        try:
            wait_ready(proc, f"http://127.0.0.1:{port}")
        finally:
            stop_server(proc)


def _make_run(args: list[str], env: dict[str, str]) -> str:
    make = shutil.which("make")
    assert make, "make is not installed"
    result = subprocess.run(
        [make, "-n", "run", *args],
        cwd=ROOT,
        env=_clean_environment(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    (command,) = [line for line in result.stdout.splitlines() if " -m service" in line]
    return command.split(" -m service", 1)[1].strip()


@pytest.mark.parametrize(
    ("args", "env", "flags"),
    [
        ([], {}, ""),  # the service's own defaults, 127.0.0.1:8000
        ([], {"SCE_HOST": "0.0.0.0", "SCE_PORT": "9000"}, ""),  # left to the service
        ([], {"HOST": "machine-name", "PORT": "9000"}, ""),  # zsh exports HOST; PORT counts
        (["HOST=0.0.0.0", "PORT=9000"], {}, "--host 0.0.0.0 --port 9000"),
        (["PORT=9000"], {"SCE_PORT": "1"}, "--port 9000"),  # the make command line wins
    ],
)
def test_make_run_passes_only_the_command_lines_host_and_port(
    args: list[str], env: dict[str, str], flags: str
) -> None:
    assert _make_run(args, env) == flags
