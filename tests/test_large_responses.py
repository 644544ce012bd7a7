"""Half-gigabyte responses over one kept-alive connection.

Reported: tritonclient.http, sparse op, logits 4096 x 32000 FP32, loss and grad_logits as
binary (~524 MB back), inputs rebuilt each iteration: HTTPConnectionClosed in 4 runs of 4
on uvloop, the server logging nothing. It was the keep-alive close (uvicorn's own 5 s,
armed when the last body chunk was handed to the transport, seconds before a response
that size has reached the client) landing after tritonclient had taken the connection
from its pool and before it sent its next request, a POST it does not retry. Now the
timeout is the setting and counts from the end of the response (service/api/protocol.py);
a client whose pauses are shorter than it keeps its connection.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton

from tests.conftest import start_server, stop_server
from tests.test_protocol import large_response_request, read_response_at

SPARSE = "sparse_softmax_cross_entropy_with_logits"


def _client_ports(server_port: int) -> set[int]:
    """Local ports of this machine's established TCP connections to `server_port`."""
    ports = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state = fields[1], fields[2], fields[3]
        if state == "01" and int(remote.split(":")[1], 16) == server_port:
            ports.add(int(local.split(":")[1], 16))
    return ports


def _inputs(rows: int, classes: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels that differ every step: 61 distinct rows, repeated (one copy)."""
    column = np.linspace(-4.0, 4.0, classes, dtype=np.float32) * np.float32(1 + step / 10)
    distinct = np.arange(61, dtype=np.float32)[:, None] / np.float32(10)
    table = np.sin(distinct + column[None, :] * np.float32(0.5)) * np.float32(3) + column
    logits = np.take(table, np.arange(rows) % 61, axis=0)
    labels = (np.arange(rows, dtype=np.int64) * 7919 + step) % classes
    return logits, labels


def _reference(logits: np.ndarray, label: int) -> tuple[float, np.ndarray]:
    """Loss and grad_logits of one row, in float64."""
    row = logits.astype(np.float64)
    shifted = row - row.max()
    log_softmax = shifted - np.log(np.exp(shifted).sum())
    grad = np.exp(log_softmax)
    grad[label] -= 1.0
    return float(-log_softmax[label]), grad


@pytest.mark.timeout(120)
def test_three_half_gigabyte_round_trips_on_one_tritonclient_connection() -> None:
    rows, classes = 4096, 32000  # grad_logits: 524 MB
    pause = 5.5  # longer than uvicorn's own keep-alive (5 s), far under the setting
    proc, url = start_server({"SCE_MEMORY_BUDGET": "8589934592", "SCE_KEEP_ALIVE_TIMEOUT": "60"})
    server_port = int(url.rsplit(":", 1)[1])
    ports = []
    try:
        client = triton.InferenceServerClient(url.removeprefix("http://"))
        for step in range(3):
            logits, labels = _inputs(rows, classes, step)
            if step:
                time.sleep(pause)  # a training step between requests
            inputs = [
                triton.InferInput("labels", [rows], "INT64"),
                triton.InferInput("logits", [rows, classes], "FP32"),
            ]
            inputs[0].set_data_from_numpy(labels, binary_data=True)
            inputs[1].set_data_from_numpy(logits, binary_data=True)
            outputs = [
                triton.InferRequestedOutput("loss", binary_data=True),
                triton.InferRequestedOutput("grad_logits", binary_data=True),
            ]
            result = client.infer(SPARSE, inputs, outputs=outputs)
            ports.append(_client_ports(server_port))
            loss, grad = result.as_numpy("loss"), result.as_numpy("grad_logits")
            assert loss.shape == (rows,) and loss.dtype == np.float32
            assert grad.shape == (rows, classes) and grad.dtype == np.float32
            assert np.isfinite(loss).all()
            for i in (0, 1, rows // 2, rows - 1):
                want_loss, want_grad = _reference(logits[i], int(labels[i]))
                np.testing.assert_allclose(loss[i], want_loss, rtol=1e-5, atol=1e-5)
                np.testing.assert_allclose(grad[i], want_grad, rtol=1e-4, atol=1e-6)
            del result, loss, grad, inputs, logits, labels
        client.close()
    finally:
        stop_server(proc)
    # One connection served all three: none was closed under the client.
    assert len(ports[0]) == 1 and ports[0] == ports[1] == ports[2], ports


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_keep_alive_counts_from_the_end_of_a_slowly_read_response(loop: str) -> None:
    """A client that takes longer than the keep-alive timeout to read a response, and then
    sends its next request at once, is served on the same connection."""
    keep_alive, rate = 2.0, 20e6  # 131 MB at 20 MB/s: ~6.5 s, over uvicorn's 5 s as well
    proc, url = start_server(
        {
            "SCE_LOOP": loop,
            "SCE_KEEP_ALIVE_TIMEOUT": str(keep_alive),
            "SCE_MEMORY_BUDGET": "2147483648",
        }
    )
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.settimeout(30)
    try:
        sock.connect((host, int(port)))
        sock.sendall(large_response_request())
        assert read_response_at(sock, rate) > 5.5  # the slow read outlasted both timeouts
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n")
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200 "), answer
    finally:
        sock.close()
        stop_server(proc)
