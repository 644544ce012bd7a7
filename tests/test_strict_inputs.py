"""Inputs are strict and answers bounded: integers are JSON integers, integers in text are
ASCII digits, strings are valid Unicode, error messages are short and always encodable,
safetensors headers are bounded, and Accept's q values are honoured. The fuzz tests send
invalid Unicode in every text field a client controls to a real server."""

from __future__ import annotations

import json
import logging
import socket
import struct
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from service.api.errors import MAX_MESSAGE_CHARS, describe_validation
from service.codecs import safetensors, text, v2
from service.errors import InvalidArgument, MalformedBody, TooLarge
from service.logs import SafeJsonFormatter, SafeTextFormatter
from service.schemas import InferenceRequest
from tests.conftest import start_server, stop_server

SOFT = "/v1/softmax_cross_entropy_with_logits"
INFER = "/v2/models/softmax_cross_entropy_with_logits/infer"
ST = "application/x-safetensors"
GOOD_V1: dict[str, Any] = {"labels": [0.0, 1.0], "logits": [0.0, 0.0]}
LABELS = {"name": "labels", "shape": [2], "datatype": "FP32", "data": [0.0, 1.0]}
LOGITS = {"name": "logits", "shape": [2], "datatype": "FP32", "data": [0.0, 0.0]}
# A message may quote a few bounded items and end with "... (N more characters)".
MAX_BODY = MAX_MESSAGE_CHARS + 100


def _v2(**request: Any) -> dict[str, Any]:
    return {"inputs": [LABELS, LOGITS], **request}


def _nan(document: dict[str, Any]) -> bytes:
    """The JSON of a v2 request with a bare NaN in its logits, as tritonclient writes it:
    this takes the header parser's slow path (Python's json), which accepts lone surrogates."""
    raw = json.dumps(document)  # ensure_ascii: a lone surrogate becomes "\ud800"
    return raw.replace('"data": [0.0, 0.0]', '"data": [NaN, 0.0]', 1).encode()


def _safetensors(header: dict[str, Any], data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _st_pair(**more: Any) -> dict[str, Any]:
    entry = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
    return {"labels": entry, "logits": {**entry, "data_offsets": [4, 8]}, **more}


# --- text: the helpers


@pytest.mark.parametrize(
    ("given_text", "signed", "value"),
    [("0", False, 0), ("123", False, 123), ("007", False, 7), ("-1", True, -1), ("5", True, 5)],
)
def test_ascii_int_reads_plain_decimal_integers(given_text: str, signed: bool, value: int) -> None:
    assert text.ascii_int(given_text, "n", signed=signed) == value


@pytest.mark.parametrize(
    "given_text",
    [
        "",
        "+1",
        "1_0",
        " 1",
        "1 ",
        "\u0661",
        "1.0",
        "8.0",
        "1e3",
        "0x10",
        "-",
        "--1",
        "-1",
        "\uff11",
    ],
)
def test_ascii_int_refuses_what_int_would_take(given_text: str) -> None:
    with pytest.raises(MalformedBody, match="ASCII digits"):
        text.ascii_int(given_text, "Inference-Header-Content-Length", error=MalformedBody)


def test_ascii_int_signed_refuses_a_plus_and_bounds_digits() -> None:
    with pytest.raises(InvalidArgument, match="dim must be a decimal integer"):
        text.ascii_int("+1", "dim", signed=True)
    with pytest.raises(InvalidArgument, match="at most 18 digits"):
        text.ascii_int("-" + "9" * 19, "dim", signed=True)
    assert text.ascii_int("9" * 18, "n") == int("9" * 18)


def test_quote_and_some_are_bounded_and_encodable() -> None:
    assert text.quote("\ud800") == "'\\ud800'"
    long = text.quote("x" * 10_000)
    assert len(long) < 100 and "9960 more characters" in long
    listed = text.some(f"t{i}" for i in range(1_000_000))
    assert listed == "'t0', 't1', 't2' and 999997 more"
    assert text.some(["a"]) == "'a'"
    listed.encode()


def test_bounded_caps_and_escapes() -> None:
    message = text.bounded("\ud800" + "y" * 100_000, 400)
    message.encode("utf-8")  # no lone surrogate left
    assert message.startswith("\\ud800y")
    assert len(message) < 450 and message.endswith("(99601 more characters)")
    assert text.bounded("short", 400) == "short"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (True, "true"),
        (None, "null"),
        ("-1", '"-1"'),
        (-1.0, "-1.0"),
        ([1], "an array"),
        ({}, "an object"),
        (10**400, "an integer over 40 digits"),
        ("\ud800", '"\\ud800"'),
    ],
)
def test_json_value_shows_what_the_client_wrote(value: object, shown: str) -> None:
    assert text.json_value(value) == shown


@pytest.mark.parametrize(
    ("accept", "wanted"),
    [
        ("", False),
        ("*/*", False),
        ("application/*", False),
        ("application/json", False),
        ("application/x-safetensors", True),
        ("Application/X-Safetensors", True),
        ("application/x-safetensors;q=0", False),
        ("application/x-safetensors; q=0.0", False),
        ("application/x-safetensors;q=0.000", False),
        ("application/x-safetensors;q=0.5", True),
        ("application/x-safetensors;q=0.5, application/json", False),
        ("application/json;q=0.9, application/x-safetensors", True),
        ("application/x-safetensors, */*;q=0.1", True),
        ("application/x-safetensors;q=0.2, */*;q=0.5", False),
        ("application/x-safetensors, application/json", True),  # a tie: the named one
        ("application/x-safetensors;q=2", False),  # malformed q: the range is ignored
        ("application/x-safetensors;q=abc, application/json", False),
        ("text/html, application/x-safetensors;q=0.8", True),
    ],
)
def test_accepts_honours_q_values(accept: str, wanted: bool) -> None:
    assert text.accepts(accept, ST) is wanted


# --- v2: the header length


@pytest.mark.parametrize("length", ["+{}", "{}_", "{}.0", " {}", "{} ", "\u0661", "-0"])
def test_header_length_is_ascii_digits(length: str) -> None:
    body = json.dumps(_v2()).encode()
    with pytest.raises(MalformedBody, match="ASCII digits"):
        v2.header_length(length.format(len(body)))
    header, binary = v2.split(body, v2.header_length(str(len(body))))
    assert len(header) == len(body) and not binary


def test_schema_refuses_lone_surrogates_whatever_parsed_the_json() -> None:
    """A backstop behind parse_header: the echoed or named strings are refused by the
    schema too (pydantic-core reads them as UTF-8 because they have a length bound)."""
    for document in (
        _v2(id="\ud800"),
        {"inputs": [{**LABELS, "name": "a\udc00"}, LOGITS]},
        {"inputs": [{**LABELS, "datatype": "\ud800"}, LOGITS]},
        _v2(outputs=[{"name": "\udfff"}]),
        _v2(parameters={"\ud800": 1}),
        {"inputs": [{**LABELS, "parameters": {"\ud800": 1}}, LOGITS]},
    ):
        with pytest.raises(ValidationError) as caught:
            InferenceRequest.model_validate(document)
        message = describe_validation(caught.value.errors())
        assert "valid Unicode" in message, message
        message.encode("utf-8")


# --- safetensors: bounded headers, valid names


def test_safetensors_header_entries_are_bounded_before_any_work() -> None:
    entry = {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
    body = _safetensors({f"t{i}": entry for i in range(17)}, b"")
    with pytest.raises(TooLarge, match="holds 17 tensors; at most 16"):
        safetensors.decode(body)
    many = _safetensors({f"t{i}": entry for i in range(15_000)}, b"")
    start = time.perf_counter()
    with pytest.raises(TooLarge) as caught:
        safetensors.decode(many)
    assert time.perf_counter() - start < 0.5
    assert len(str(caught.value)) < 200
    sixteen = _safetensors({f"t{i}": entry for i in range(16)} | {"__metadata__": {}}, b"")
    assert len(safetensors.decode(sixteen)) == 16


def test_safetensors_header_size_is_bounded() -> None:
    body = _safetensors(_st_pair(__metadata__={"pad": "x" * (1 << 20)}), bytes(8))
    with pytest.raises(TooLarge, match="limit of 1048576 bytes"):
        safetensors.decode(body)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (b'"X"', b'"\\ud800"', "tensor names must be valid Unicode; got '\\\\ud800'"),
        (b'"X"', b'"\xed\xa0\x80"', "not UTF-8"),
        (b'"k"', b'"\\udfff"', "__metadata__ must be valid Unicode"),
        (b'"v"', b'"a\\ud800b"', "__metadata__ must be valid Unicode"),
    ],
)
def test_safetensors_names_and_metadata_are_valid_unicode(
    old: bytes, new: bytes, message: str
) -> None:
    entry = {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}
    raw = json.dumps(_st_pair(X=entry, __metadata__={"k": "v"})).encode().replace(old, new)
    body = struct.pack("<Q", len(raw)) + raw + bytes(12)
    with pytest.raises(MalformedBody) as caught:
        safetensors.decode(body)
    assert message.replace("\\\\", "\\") in str(caught.value)
    str(caught.value).encode("utf-8")


def test_safetensors_dtype_must_be_a_string() -> None:
    body = _safetensors(
        _st_pair(logits={"dtype": ["F32"], "shape": [1], "data_offsets": [4, 8]}), bytes(8)
    )
    with pytest.raises(MalformedBody, match="unknown dtype"):
        safetensors.decode(body)


# --- through the app: integers are JSON integers, messages bounded


@pytest.mark.parametrize("key", ["dim", "axis"])
@pytest.mark.parametrize(("value", "shown"), [(True, "true"), ("-1", '"-1"'), (-1.0, "-1.0")])
def test_v1_dim_is_a_json_integer(client: TestClient, key: str, value: object, shown: str) -> None:
    response = client.post(SOFT, json={**GOOD_V1, key: value})
    assert response.status_code == 422
    assert response.json()["detail"] == f"{key} must be a JSON integer; got {shown}"


@pytest.mark.parametrize("key", ["dim", "axis"])
@pytest.mark.parametrize(("value", "shown"), [(False, "false"), ("0", '"0"'), (0.0, "0.0")])
def test_v2_dim_is_a_json_integer(client: TestClient, key: str, value: object, shown: str) -> None:
    response = client.post(INFER, json=_v2(parameters={key: value}))
    assert response.status_code == 422
    assert f"parameters.{key} must be a JSON integer; got {shown}" in response.json()["error"]


@pytest.mark.parametrize("size", [8.0, "8", True, "+8"])
def test_binary_data_size_is_a_json_integer(client: TestClient, size: object) -> None:
    header = orjson.dumps(
        {
            "inputs": [
                {**LABELS, "data": None, "parameters": {"binary_data_size": size}},
                LOGITS,
            ]
        }
    )
    response = client.post(
        INFER,
        content=header + np.zeros(2, np.float32).tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 422
    assert "binary_data_size must be a JSON integer" in response.json()["error"]


@pytest.mark.parametrize("length", ["+{}", "{}_0", "{}.0", "0{}0"])
def test_v2_header_length_is_ascii_digits(client: TestClient, length: str) -> None:
    body = orjson.dumps(_v2())
    response = client.post(
        INFER, content=body, headers={"Inference-Header-Content-Length": length.format(len(body))}
    )
    assert response.status_code == 400, response.text
    assert "ASCII digits" in response.json()["error"] or "outside" in response.json()["error"]


def test_error_messages_are_bounded(client: TestClient) -> None:
    name = "n" * 100_000
    cases = [
        (INFER, {"content": orjson.dumps({"inputs": [{**LABELS, "name": name}, LOGITS]})}),
        (INFER, {"content": orjson.dumps(_v2(outputs=[{"name": name}]))}),
        (SOFT, {"json": {**GOOD_V1, name: 1}}),
        (SOFT, {"json": {**GOOD_V1, **{f"m{i}": 0 for i in range(100_000)}}}),
        (SOFT, {"json": {**GOOD_V1, "outputs": ["x"] * 100_000}}),
        (INFER, {"content": orjson.dumps({"inputs": [{**LABELS, "shape": ["x"] * 100_000}]})}),
        (
            INFER,
            {
                "content": orjson.dumps(
                    {"inputs": [{**LABELS, **{f"m{i}": 0 for i in range(100_000)}}]}
                )
            },
        ),
    ]
    for path, request in cases:
        start = time.perf_counter()
        response = client.post(path, **request)  # type: ignore[arg-type]
        assert 400 <= response.status_code < 500, response.text[:500]
        assert len(response.content) < MAX_BODY, response.text[:500]
        assert time.perf_counter() - start < 2.0


def test_many_unknown_members_are_one_problem(client: TestClient) -> None:
    response = client.post(SOFT, json={**GOOD_V1, **{f"m{i}": 0 for i in range(10)}})
    detail = response.json()["detail"]
    assert response.status_code == 422
    assert detail.startswith("unknown arguments 'm0', 'm1', 'm2' and 7 more"), detail
    assert "arguments must be named" in detail


def _many_entries(count: int) -> bytes:
    entries = (b'"t%d":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}' % i for i in range(count))
    raw = b"{" + b",".join(entries) + b"}"
    return struct.pack("<Q", len(raw)) + raw


def test_a_million_safetensors_entries_are_refused_at_once() -> None:
    body = _many_entries(1_000_000)  # 50 MB of header: it took 25 s and made an 8.9 MB error
    start = time.perf_counter()
    with pytest.raises(TooLarge) as caught:
        safetensors.decode(body)
    assert time.perf_counter() - start < 0.1
    assert len(str(caught.value)) < 200


def test_many_safetensors_entries_are_refused_fast_and_briefly(client: TestClient) -> None:
    for count in (60_000, 15_000):  # over the header size limit; under it, over the count
        start = time.perf_counter()
        response = client.post(SOFT, content=_many_entries(count), headers={"content-type": ST})
        assert time.perf_counter() - start < 2.0
        assert response.status_code == 422
        assert "1048576 bytes" in response.json()["detail"] or "at most 16" in response.text
        assert len(response.content) < MAX_BODY


def test_unknown_safetensors_tensors_are_named_briefly(client: TestClient) -> None:
    entry = {"dtype": "F32", "shape": [0], "data_offsets": [8, 8]}
    body = _safetensors(_st_pair(**{f"x{i}": entry for i in range(14)}), bytes(8))
    response = client.post(SOFT, content=body, headers={"content-type": ST})
    assert response.status_code == 422
    assert len(response.content) < MAX_BODY


@pytest.mark.parametrize(
    ("accept", "media_type"),
    [
        (None, "application/json"),
        ("*/*", "application/json"),
        ("application/x-safetensors;q=0", "application/json"),
        ("application/x-safetensors;q=0.1, application/json", "application/json"),
        ("application/x-safetensors", ST),
        ("application/json;q=0.5, application/x-safetensors", ST),
    ],
)
def test_v1_accept_honours_q(client: TestClient, accept: str | None, media_type: str) -> None:
    headers = {} if accept is None else {"accept": accept}
    response = client.post(SOFT, json=GOOD_V1, headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(media_type)


# --- logs: a line is written whatever a client put in it


def _record(message: str, *args: object) -> logging.LogRecord:
    try:
        raise ValueError(f"bad name {message}")
    except ValueError:
        exc_info = sys.exc_info()
    return logging.LogRecord("service", logging.ERROR, __file__, 1, message, args, exc_info)


def test_json_log_lines_survive_lone_surrogates() -> None:
    formatter = SafeJsonFormatter("%(message)s")
    line = formatter.format(_record("tensor \ud800 %s", "\udfff"))
    document = json.loads(line)
    assert document["message"] == "tensor \\ud800 \\udfff"
    assert "bad name tensor \\ud800" in document["exc_info"]
    assert json.loads(formatter.format(_record("plain")))["message"] == "plain"


def test_text_log_lines_survive_lone_surrogates() -> None:
    line = SafeTextFormatter("%(message)s").format(_record("tensor \ud800"))
    line.encode("utf-8")
    assert line.startswith("tensor \\ud800")


# --- fuzz: invalid Unicode in every text field a client controls, on a real server


@pytest.fixture(scope="module")
def server() -> Iterator[httpx.Client]:
    proc, url = start_server()
    try:
        with httpx.Client(base_url=url, timeout=30) as http:
            yield http
    finally:
        stop_server(proc)


# Strings holding at least one lone surrogate, among other text.
invalid_text = st.tuples(
    st.text(max_size=5), st.characters(categories=["Cs"]), st.text(max_size=5)
).map("".join)
# Bytes that are not UTF-8: a surrogate encoded as UTF-8, stray continuation bytes, ...
invalid_utf8 = st.sampled_from([b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\x80", b"\xff", b"\xc3("])
FUZZ = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def _still_serving(http: httpx.Client) -> None:
    good = http.post(SOFT, json=GOOD_V1)
    assert good.status_code == 200
    assert good.json()["loss"]["data"] == pytest.approx(0.6931472, rel=1e-6)
    good = http.post(INFER, json=_v2(outputs=[{"name": "loss"}]))
    assert good.status_code == 200


def _client_error(response: httpx.Response, key: str) -> None:
    assert 400 <= response.status_code < 500, response.text[:500]
    message = response.json()[key]  # the body decodes as UTF-8 JSON
    assert len(message) <= MAX_BODY


def _json_bodies(document: dict[str, Any]) -> list[bytes]:
    """The document as JSON with escapes ("\\ud800"), and as bytes that are not UTF-8."""
    return [
        json.dumps(document).encode(),
        json.dumps(document, ensure_ascii=False).encode("utf-8", "surrogatepass"),
    ]


@FUZZ
@given(value=invalid_text)
def test_fuzz_v1_name(server: httpx.Client, value: str) -> None:
    for body in _json_bodies({**GOOD_V1, "name": value}):
        response = server.post(SOFT, content=body, headers={"content-type": "application/json"})
        _client_error(response, "detail")
    _still_serving(server)


@FUZZ
@given(
    value=invalid_text,
    field=st.sampled_from(["id", "input", "output", "parameter", "input parameter"]),
    nan=st.booleans(),
)
def test_fuzz_v2_text_fields(server: httpx.Client, value: str, field: str, nan: bool) -> None:
    document: dict[str, Any] = _v2()
    if field == "id":
        document["id"] = value
    elif field == "input":
        document["inputs"] = [{**LABELS, "name": value}, LOGITS]
    elif field == "output":
        document["outputs"] = [{"name": value}]
    elif field == "parameter":
        document["parameters"] = {value: 1}
    else:
        document["inputs"] = [{**LABELS, "parameters": {value: "x"}}, LOGITS]
    bodies = [_nan(document)] if nan else _json_bodies(document)
    for body in bodies:
        _client_error(server.post(INFER, content=body), "error")
        length = {"Inference-Header-Content-Length": str(len(body))}
        _client_error(server.post(INFER, content=body, headers=length), "error")
    _still_serving(server)


@FUZZ
@given(value=invalid_text, field=st.sampled_from(["name", "metadata key", "metadata value"]))
def test_fuzz_safetensors_text(server: httpx.Client, value: str, field: str) -> None:
    entry = {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}
    if field == "name":
        header = _st_pair(**{value: entry})
    elif field == "metadata key":
        header = _st_pair(X=entry, __metadata__={value: "v"})
    else:
        header = _st_pair(X=entry, __metadata__={"k": value})
    for raw in (
        json.dumps(header).encode(),
        json.dumps(header, ensure_ascii=False).encode("utf-8", "surrogatepass"),
    ):
        body = struct.pack("<Q", len(raw)) + raw + bytes(12)
        response = server.post(SOFT, content=body, headers={"content-type": ST})
        _client_error(response, "detail")
        assert response.status_code == 400
    _still_serving(server)


@FUZZ
@given(raw=invalid_utf8, prefix=st.text(alphabet="abc-", max_size=4))
def test_fuzz_request_id(server: httpx.Client, raw: bytes, prefix: str) -> None:
    """An X-Request-ID that is not valid is replaced by a generated one (it is metadata, not
    an argument): never a 5xx, and the id echoed is printable ASCII."""
    response = server.post(SOFT, json=GOOD_V1, headers={b"x-request-id": prefix.encode() + raw})
    assert response.status_code < 500
    echoed = response.headers.get("x-request-id", "")
    assert echoed.isascii() and echoed.isprintable()
    _still_serving(server)


def _raw_post(http: httpx.Client, target: bytes, body: bytes) -> tuple[int, bytes]:
    """POST with a request target of raw bytes (httpx percent-encodes or refuses them)."""
    url = http.base_url
    with socket.create_connection((url.host, url.port), timeout=30) as sock:
        head = (
            b"POST " + target + b" HTTP/1.1\r\nHost: " + url.host.encode() + b"\r\n"
            b"Content-Type: " + ST.encode() + b"\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
        )
        sock.sendall(head + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


@FUZZ
@given(
    raw=invalid_utf8,
    key=st.sampled_from(["name", "outputs", "dim", "axis"]),
    escaped=st.booleans(),
)
def test_fuzz_query_strings(server: httpx.Client, raw: bytes, key: str, escaped: bool) -> None:
    """Invalid UTF-8 in a query argument, percent-encoded or raw: a 4xx, or (for `name`,
    which the framework decodes with U+FFFD for what is not UTF-8) an answer whose JSON
    is valid. Never a 5xx."""
    entry = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    body = _safetensors({"labels": entry, "logits": {**entry, "data_offsets": [8, 16]}}, bytes(16))
    value = "".join(f"%{b:02X}" for b in raw).encode() if escaped else raw
    status, content = _raw_post(server, SOFT.encode() + b"?" + key.encode() + b"=" + value, body)
    assert status < 500, content[:500]
    if status == 200:
        assert key == "name"
        json.loads(content)
    elif content.startswith(b"{"):  # else uvicorn's "Invalid HTTP request received."
        message = json.loads(content)["detail"]
        assert len(message) <= MAX_BODY
    _still_serving(server)
