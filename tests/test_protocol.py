"""The connection layer (service/api/protocol.py) at the socket level, on both event loops:
header size and time limits, idle and keep-alive closes, h2c offers, clients that never read.
"""

from __future__ import annotations

import contextlib
import json
import select
import shutil
import socket
import subprocess
import threading
import time
import weakref
from collections.abc import Iterator

import numpy as np
import pytest

from tests.conftest import server_log, start_server, stop_server

SOFT = "/v1/softmax_cross_entropy_with_logits"
SPARSE_INFER = "/v2/models/sparse_softmax_cross_entropy_with_logits/infer"
HEADER_TIMEOUT = 1.0
KEEP_ALIVE = 1.0
SEND_TIMEOUT = 2.0
LIMITS = {
    "SCE_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
    "SCE_KEEP_ALIVE_TIMEOUT": str(KEEP_ALIVE),
    "SCE_SEND_TIMEOUT": str(SEND_TIMEOUT),
    "SCE_MAX_HEADER_BYTES": str(64 * 1024),
    "SCE_MEMORY_BUDGET": str(2 << 30),
}
LIVE = b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n"


class Server:
    def __init__(self, proc: subprocess.Popen[bytes], url: str) -> None:
        self.proc, self.url = proc, url
        host, port = url.removeprefix("http://").split(":")
        self.address = (host, int(port))

    def connect(self, timeout: float = 10.0) -> socket.socket:
        return socket.create_connection(self.address, timeout=timeout)


@pytest.fixture(scope="module", params=["uvloop", "asyncio"])
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    proc, url = start_server({**LIMITS, "SCE_LOOP": request.param})
    try:
        yield Server(proc, url)
    finally:
        stop_server(proc)


_unread: weakref.WeakKeyDictionary[socket.socket, bytes] = weakref.WeakKeyDictionary()


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length: status, headers, body. Bytes read past
    it (pipelined responses) are kept for the next call on the same socket."""
    data = _unread.pop(sock, b"")
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(max(65536, length - len(body)))
        if not chunk:
            raise ConnectionError("closed in the body")
        body += chunk
    _unread[sock] = body[length:]
    return int(status_line.split()[1]), headers, body[:length]


def closed_by_server(sock: socket.socket, within: float) -> float | None:
    """Seconds until the server closes (EOF or reset), reading and dropping what comes;
    None if it is still open after `within`."""
    start = time.monotonic()
    sock.settimeout(0.05)
    while (elapsed := time.monotonic() - start) < within:
        try:
            if not sock.recv(65536):
                return elapsed
        except TimeoutError:
            continue
        except ConnectionResetError:
            return elapsed
    return None


def soft_request(
    extra_headers: bytes = b"",
    labels: tuple[float, ...] = (0.0, 1.0),
    logits: tuple[float, ...] = (0.0, 0.0),
) -> bytes:
    body = json.dumps({"labels": list(labels), "logits": list(logits)}).encode()
    return (
        b"POST "
        + SOFT.encode()
        + b" HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        + extra_headers
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


def test_a_head_over_the_limit_gets_431_and_a_head_under_it_is_served(server: Server) -> None:
    with server.connect() as sock:
        sock.sendall(
            b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\nX-Pad: " + b"a" * 60_000 + b"\r\n\r\n"
        )
        assert read_response(sock)[0] == 200
    with server.connect() as sock:
        sock.sendall(
            b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\nX-Pad: " + b"a" * 70_000 + b"\r\n\r\n"
        )
        status, headers, body = read_response(sock)
        assert status == 431
        assert headers["content-type"] == "application/json"
        assert headers["connection"] == "close"
        assert "SCE_MAX_HEADER_BYTES" in json.loads(body)["detail"]
        assert closed_by_server(sock, 5) is not None
    # many small headers add up the same way
    with server.connect() as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\n" + b"X-A: b\r\n" * 10_000 + b"\r\n")
        assert read_response(sock)[0] == 431
    # a head pipelined behind a body, in the same write, is counted from its first byte:
    # the request before it is answered, and the connection closes after that answer
    with server.connect() as sock:
        big = b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\nX-Pad: " + b"a" * 70_000 + b"\r\n\r\n"
        sock.sendall(soft_request() + big)
        assert read_response(sock)[0] == 200
        try:
            assert read_response(sock)[0] == 431
        except ConnectionError:
            pass  # closed without a second answer


def test_heads_split_anywhere_between_reads_are_parsed(server: Server) -> None:
    with server.connect() as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for split in range(len(LIVE) - 6, len(LIVE)):  # around the blank line
            sock.sendall(LIVE[:split])
            time.sleep(0.05)
            sock.sendall(LIVE[split:] + LIVE)  # and one pipelined behind it
            assert [read_response(sock)[0] for _ in range(2)] == [200, 200]


def test_an_8_mib_head_is_cut_early_and_the_server_stays_live(server: Server) -> None:
    result: dict[str, object] = {}

    def upload() -> None:
        with server.connect(timeout=30) as sock:
            start = time.monotonic()
            try:
                sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\nX-Big: ")
                for _ in range(128):  # 8 MiB in 64 KiB writes, as a slow link delivers it
                    sock.sendall(b"a" * 65536)
                sock.sendall(b"\r\n\r\n")
            except OSError:
                pass  # the server closed after its answer: read the answer
            result["response"] = read_response(sock)
            result["seconds"] = time.monotonic() - start

    latencies = []
    with server.connect() as live:
        live.sendall(LIVE)
        assert read_response(live)[0] == 200  # connected and warm
        thread = threading.Thread(target=upload)
        thread.start()
        while thread.is_alive() or len(latencies) < 20:
            start = time.monotonic()
            live.sendall(LIVE)
            assert read_response(live)[0] == 200
            latencies.append(time.monotonic() - start)
            time.sleep(0.005)
        thread.join()
    status, _, body = result["response"]  # type: ignore[misc]
    assert status == 431, body
    assert result["seconds"] < 5  # type: ignore[operator]
    assert max(latencies) < 0.1, f"liveness latencies (s): {sorted(latencies)[-5:]}"


def test_a_head_sent_a_byte_a_second_gets_408(server: Server) -> None:
    for first_request in (False, True):  # timed from the connection's start, or a later head
        with server.connect() as sock:
            if first_request:
                sock.sendall(LIVE)
                assert read_response(sock)[0] == 200
            start = time.monotonic()
            sent = b""
            sock.settimeout(1.0)
            response = b""
            for byte in LIVE[:-2]:  # never the final CRLF
                if time.monotonic() - start > HEADER_TIMEOUT + 3:
                    break
                try:
                    sock.sendall(bytes([byte]))
                    sent += bytes([byte])
                    response = sock.recv(65536)
                    break  # an answer, or the close
                except TimeoutError:
                    continue
                except OSError:
                    break
            elapsed = time.monotonic() - start
            assert response.startswith(b"HTTP/1.1 408 "), (sent, response)
            assert b"SCE_HEADER_TIMEOUT" in response
            assert HEADER_TIMEOUT - 0.1 < elapsed < HEADER_TIMEOUT + 2.5
            sock.settimeout(5)
            assert closed_by_server(sock, 5) is not None


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(server: Server) -> None:
    with server.connect() as sock:
        start = time.monotonic()
        sock.settimeout(HEADER_TIMEOUT + 3)
        assert sock.recv(65536) == b""  # closed, nothing written
        assert HEADER_TIMEOUT - 0.1 < time.monotonic() - start < HEADER_TIMEOUT + 2.5


def test_keep_alive_timeout_closes_idle_connections_only(server: Server) -> None:
    with server.connect() as sock:
        for _ in range(3):  # within the keep-alive timeout the connection is reused
            sock.sendall(LIVE)
            assert read_response(sock)[0] == 200
            time.sleep(KEEP_ALIVE / 2)
        sock.sendall(LIVE)
        assert read_response(sock)[0] == 200
        closed_after = closed_by_server(sock, KEEP_ALIVE + 3)
        assert closed_after is not None and closed_after > KEEP_ALIVE - 0.1


def test_an_h2c_upgrade_offer_is_served_as_http_1_1(server: Server) -> None:
    offer = (
        b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
    )
    with server.connect() as sock:
        sock.sendall(soft_request(offer))
        status, _, body = read_response(sock)
        assert status == 200, body
        assert json.loads(body)["loss"]["data"] == pytest.approx(np.log(2))
        # the connection goes on as HTTP/1.1: pipelined, and with another offer
        sock.sendall(LIVE + soft_request(offer) + LIVE)
        assert [read_response(sock)[0] for _ in range(3)] == [200, 200, 200]
        offered_live = LIVE[:-2] + offer + b"\r\n"
        sock.sendall(offered_live * 1500)  # in one write: far more than fits Python's stack
        assert {read_response(sock)[0] for _ in range(1500)} == {200}
        chunked = (
            b"POST "
            + SOFT.encode()
            + b" HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            + offer
            + b"Transfer-Encoding: chunked\r\n\r\n"
            b"10\r\n" + b'{"labels": [0.0,' + b"\r\n"
            b"1c\r\n" + b' 1.0], "logits": [0.0, 0.0]}' + b"\r\n0\r\n\r\n"
        )
        sock.sendall(chunked)
        status, _, body = read_response(sock)
        assert status == 200, body


def test_bodies_of_known_length_end_where_the_next_request_begins(server: Server) -> None:
    """Bodies with a Content-Length go to the request past the parser, which is renewed
    for each head (protocol._body_past_parser): pipelined requests, bodies cut anywhere,
    a body longer than it said, and the parser's own ways (chunked, 100-continue)."""
    first, second = soft_request(), soft_request(labels=(1.0, 0.0), logits=(2.0, 0.0))
    losses = [np.log(2), np.log1p(np.exp(-2.0))]
    with server.connect() as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(first + second + LIVE + first)  # in one write
        answers = [read_response(sock) for _ in range(4)]
        assert [a[0] for a in answers] == [200, 200, 200, 200]
        loss = [json.loads(answers[k][2])["loss"]["data"] for k in (0, 1, 3)]
        assert loss == pytest.approx([losses[0], losses[1], losses[0]])
        both = first + second
        for cut in range(len(first) - 8, len(first) + 8):  # around the first body's end
            sock.sendall(both[:cut])
            time.sleep(0.02)
            sock.sendall(both[cut:])
            statuses = [read_response(sock) for _ in range(2)]
            assert [json.loads(b)["loss"]["data"] for _, _, b in statuses] == pytest.approx(losses)
        sock.sendall(first[:-1])  # one byte short: the request waits for it
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(1)
        sock.settimeout(10)
        sock.sendall(first[-1:])
        assert read_response(sock)[0] == 200
        continued = soft_request(b"Expect: 100-continue\r\n")
        head, _, body = continued.partition(b"\r\n\r\n")
        sock.sendall(head + b"\r\n\r\n")
        assert sock.recv(64).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(body)
        assert read_response(sock)[0] == 200
    with server.connect() as sock:
        sock.sendall(first + b"}junk\r\n\r\n")  # the body is longer than it said
        statuses = set()
        with contextlib.suppress(ConnectionError):
            for _ in range(2):
                statuses.add(read_response(sock)[0])
        assert 400 in statuses  # what follows the body is read as a head: not one
        assert closed_by_server(sock, 5) is not None
    with server.connect() as sock:
        chunked = (
            b"POST " + SOFT.encode() + b" HTTP/1.1\r\nHost: t\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"10\r\n" + b'{"labels": [0.0,' + b"\r\n"
            b"1c\r\n" + b' 1.0], "logits": [0.0, 0.0]}' + b"\r\n0\r\n\r\n"
        )
        sock.sendall(chunked + first)
        assert [read_response(sock)[0] for _ in range(2)] == [200, 200]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_http2_against_plain_http_gets_its_answer(server: Server) -> None:
    result = subprocess.run(
        [
            "curl", "-sS", "--http2", "-H", "Content-Type: application/json",
            "-d", '{"labels": [0.0, 1.0], "logits": [0.0, 0.0]}',
            "-w", "\n%{http_code} %{http_version}",
            server.url + SOFT,
        ],
        capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    body, _, status = result.stdout.rpartition("\n")
    assert status == "200 1.1"
    assert json.loads(body)["loss"]["data"] == pytest.approx(np.log(2))


def _hung_up(sock: socket.socket, within: float) -> bool:
    """Whether the peer closed or reset, without reading (reading would let it send)."""
    poller = select.poll()
    poller.register(sock, select.POLLRDHUP | select.POLLHUP | select.POLLERR)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        events = poller.poll(100)
        if any(e & (select.POLLRDHUP | select.POLLHUP | select.POLLERR) for _, e in events):
            return True
    return False


def large_response_request() -> bytes:
    """A v2 request whose response is 131 MB (binary grad_logits of 1024 x 32000 FP32),
    far more than socket buffers hold."""
    rows, classes = 1024, 32000
    labels = np.zeros(rows, np.int64).tobytes()
    logits = np.zeros((rows, classes), np.float32).tobytes()
    header = json.dumps(
        {
            "inputs": [
                {"name": "labels", "shape": [rows], "datatype": "INT64",
                 "parameters": {"binary_data_size": len(labels)}},
                {"name": "logits", "shape": [rows, classes], "datatype": "FP32",
                 "parameters": {"binary_data_size": len(logits)}},
            ],
            "outputs": [{"name": "grad_logits", "parameters": {"binary_data": True}}],
        }
    ).encode()  # fmt: skip
    head = (
        f"POST {SPARSE_INFER} HTTP/1.1\r\nHost: t\r\nInference-Header-Content-Length: "
        f"{len(header)}\r\nContent-Length: {len(header) + len(labels) + len(logits)}\r\n\r\n"
    ).encode()
    return head + header + labels + logits


def small_buffer_connection(server: Server) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.settimeout(30)
    sock.connect(server.address)
    return sock


def test_a_client_that_never_reads_is_dropped_after_the_send_timeout(server: Server) -> None:
    with small_buffer_connection(server) as sock:
        sock.sendall(large_response_request())
        start = time.monotonic()
        assert _hung_up(sock, SEND_TIMEOUT + 20), "the server still holds the connection"
        assert time.monotonic() - start > SEND_TIMEOUT - 0.1
        with server.connect() as other:  # and it goes on serving
            other.sendall(soft_request())
            assert read_response(other)[0] == 200
    assert "SCE_SEND_TIMEOUT" in server_log(server.proc)


def read_response_at(sock: socket.socket, rate: float) -> float:
    """Read one 200 response at about `rate` bytes/s; the seconds its body took."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "closed before the response"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    lines = head.decode("latin-1").split("\r\n")[1:]
    length = int(dict(line.lower().split(": ", 1) for line in lines)["content-length"])
    received, start = len(body), time.monotonic()
    while received < length:
        chunk = sock.recv(min(65536, length - received))
        assert chunk, f"closed after {received} of {length} bytes"
        received += len(chunk)
        ahead = received / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
    return time.monotonic() - start


def test_a_slow_but_steady_reader_is_not_dropped(server: Server) -> None:
    """The send timeout is for a client that stops reading, not for a transfer that takes
    longer than it (the transport stays paused for writing all along)."""
    rate = 40e6  # bytes/s: 131 MB take over 3 s, more than the send timeout
    with small_buffer_connection(server) as sock:
        sock.sendall(large_response_request())
        assert read_response_at(sock, rate) > SEND_TIMEOUT + 0.5
