"""Faults against a real server: SIGTERM drains, clients that vanish, slow clients."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import start_server, stop_server

SOFT = "/v1/softmax_cross_entropy_with_logits"


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _head(path: str, length: int, host: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def test_sigterm_lets_an_in_flight_request_finish() -> None:
    proc, url = start_server()
    host, port = _address(url)
    rng = np.random.default_rng()
    logits = rng.standard_normal((256, 100)).round(3)
    labels = np.full((256, 100), 0.01)
    body = json.dumps({"labels": labels.tolist(), "logits": logits.tolist()}).encode()
    result: dict[str, bytes] = {}

    def client() -> None:
        with socket.create_connection((host, port), timeout=30) as sock:
            sock.sendall(_head(SOFT, len(body), host) + body[: len(body) // 2])
            time.sleep(1.0)  # SIGTERM arrives while the body is half sent
            sock.sendall(body[len(body) // 2 :])
            chunks = []
            while chunk := sock.recv(1 << 16):
                chunks.append(chunk)
            result["response"] = b"".join(chunks)

    thread = threading.Thread(target=client)
    thread.start()
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    thread.join(timeout=60)
    # uvicorn re-raises the signal once drained, as a well-behaved process does
    assert proc.wait(timeout=40) in (0, -signal.SIGTERM)
    status_line, _, rest = result["response"].partition(b"\r\n")
    assert status_line == b"HTTP/1.1 200 OK"
    document = json.loads(rest.partition(b"\r\n\r\n")[2])
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    np.testing.assert_allclose(document["loss"]["data"], -(labels * log_p).sum(-1), rtol=1e-5)
    with pytest.raises(httpx.TransportError):
        httpx.get(url + "/v2/health/live", timeout=2)


def _vanish(host: str, port: int, payload: bytes, count: int) -> None:
    for i in range(count):
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(_head(SOFT, len(payload), host))
            if i % 2:  # vanish mid-upload
                sock.sendall(payload[: len(payload) // 3])
            else:  # vanish before reading the response
                sock.sendall(payload)


def _settle(http: httpx.Client) -> list[str]:
    """Wait until only the scrape itself is in flight; return the gauge lines."""
    deadline = time.monotonic() + 30  # completed uploads may still be computing
    while True:
        in_flight = [
            line
            for line in http.get("/metrics").text.splitlines()
            if line.startswith("sce_http_requests_in_flight ")
        ]
        if in_flight == ["sce_http_requests_in_flight 1.0"] or time.monotonic() > deadline:
            return in_flight
        time.sleep(0.2)


def test_clients_that_vanish_leave_nothing_behind() -> None:
    proc, url = start_server()
    host, port = _address(url)
    try:
        payload = json.dumps({"labels": [0.5] * 200_000, "logits": [0.0] * 200_000}).encode()
        with httpx.Client(base_url=url, timeout=30) as http:
            rss = []
            for _ in range(6):  # the first rounds warm the allocator; a leak grows every round
                _vanish(host, port, payload, 40)
                assert _settle(http) == ["sce_http_requests_in_flight 1.0"]
                rss.append(_rss_kib(proc.pid))
            good = http.post(SOFT, json={"labels": [0.0, 1.0], "logits": [0.0, 0.0]})
        assert good.status_code == 200
        assert rss[-1] - rss[2] < 0.1 * rss[2], f"RSS per round (KiB): {rss}"
    finally:
        stop_server(proc)


def test_slow_clients_do_not_hold_the_server() -> None:
    proc, url = start_server()
    host, port = _address(url)
    sockets = []
    try:
        for _ in range(32):  # slowloris: headers that never finish
            sock = socket.create_connection((host, port), timeout=10)
            sock.sendall(b"POST /v1/softmax_cross_entropy_with_logits HTTP/1.1\r\nHost: x\r\n")
            sockets.append(sock)
        start = time.monotonic()
        response = httpx.post(
            url + SOFT, json={"labels": [0.0, 1.0], "logits": [0.0, 0.0]}, timeout=10
        )
        assert response.status_code == 200 and time.monotonic() - start < 2
    finally:
        for sock in sockets:
            sock.close()
        stop_server(proc)
