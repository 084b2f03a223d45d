"""The HTTP layer: uvicorn's h11 protocol with its one adapter, and the guard in front of routing.

The adapter relies on a few of uvicorn's protocol methods and attributes, which are no
documented API; these tests drive a real uvicorn with it, so an upgrade that changes
them fails here, loudly, rather than in production.
"""

from __future__ import annotations

import functools
import json
import socket
import time

import h11
import pytest
from uvicorn.protocols.http.h11_impl import H11Protocol

from agentos_sessions.http import (
    H11_MAX_INCOMPLETE_EVENT_SIZE,
    MAX_HEAD_BYTES,
    MAX_TARGET_BYTES,
    BoundedH11Protocol,
    RequestGuard,
    refusal,
)
from handlers.errors import ApiError
from tests.support import ThreadedServer

TIMEOUT_S = 0.5


async def echo(scope, receive, send):
    """Answers 200 with what it was asked and what body it read."""
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    answer = json.dumps({"path": scope["path"], "raw_path": scope["raw_path"].decode(), "body": body.decode()})
    await respond(send, 200, answer.encode())


async def respond(send, status: int, body: bytes, extra: dict | None = None) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(name.lower().encode(), value.encode()) for name, value in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def guarded(scope, receive, send):
    """The guard in front of ``echo``, with the app's renderer reduced to its essence."""
    try:
        await RequestGuard(echo, request_timeout_s=TIMEOUT_S)(scope, receive, send)
    except ApiError as error:
        await respond(send, error.status, error.body(), error.headers)


@pytest.fixture(scope="module")
def server():
    protocol = functools.partial(BoundedH11Protocol, request_timeout_s=TIMEOUT_S)
    with ThreadedServer(guarded, http=protocol, h11_max_incomplete_event_size=H11_MAX_INCOMPLETE_EVENT_SIZE) as url:
        yield int(url.rsplit(":", 1)[1])


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes the connection."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def test_it_overrides_what_uvicorns_protocol_still_has():
    for name in ("connection_made", "data_received", "on_response_complete", "connection_lost", "send_400_response"):
        assert callable(getattr(H11Protocol, name, None)), f"uvicorn's H11Protocol has no {name} any more"


def test_a_connection_that_sends_nothing_is_closed_after_the_timeout(server):
    with connect(server) as sock:
        started = time.monotonic()
        assert read_all(sock) == b""
        assert time.monotonic() - started >= TIMEOUT_S * 0.9


def test_a_head_that_never_ends_is_closed_even_while_bytes_keep_coming(server):
    with connect(server) as sock:
        sock.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\n")
        deadline = time.monotonic() + 10
        closed = False
        while not closed and time.monotonic() < deadline:
            try:
                sock.sendall(b"X-Slow: 1\r\n")
            except OSError:
                closed = True
            time.sleep(0.05)
        assert closed or read_all(sock) == b""


def test_the_timeout_starts_again_after_each_response(server):
    with connect(server) as sock:
        sock.sendall(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n")
        assert b"200 OK" in sock.recv(65536)
        sock.sendall(b"GET /second HTTP/1.1\r\n")  # and then nothing more
        assert read_all(sock) == b""


def test_a_complete_request_is_served_however_slowly_it_is_answered(server):
    with connect(server) as sock:
        sock.sendall(b"POST /body HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
        assert json.loads(read_all(sock).split(b"\r\n\r\n", 1)[1])["body"] == "hello"


def refused(port: int, *pieces: bytes) -> tuple[int, dict]:
    """The one answer to a request sent in ``pieces``, on a connection the server closes."""
    with connect(port) as sock:
        for piece in pieces:
            try:
                sock.sendall(piece)
            except OSError:  # refused mid-way: the answer is already there to read
                break
        head, _, body = read_all(sock).partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), head
    return int(head.split(b" ")[1]), json.loads(body)


def test_a_request_the_parser_refuses_gets_the_contracts_json_400(server):
    status, body = refused(server, b"GET /\x00 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert (status, body) == (400, {"detail": "Invalid HTTP request received.", "error_code": "BAD_REQUEST"})


@pytest.mark.parametrize("complete", [True, False], ids=["whole-head", "head-never-ends"])
@pytest.mark.parametrize("reads", [1, 7, 200], ids=["one-write", "seven-writes", "200-writes"])
def test_head_limits_answer_the_same_however_the_bytes_are_split(server, complete, reads):
    """The guard measures a head that arrived whole, the adapter one still arriving."""
    end = b" HTTP/1.1\r\nHost: a\r\n\r\n" if complete else b""
    long_target = b"GET /" + b"t" * (MAX_TARGET_BYTES + 2048) + end
    big_head = b"GET /x HTTP/1.1\r\nHost: a\r\nX-Big: " + b"h" * (MAX_HEAD_BYTES + 2048) + (b"\r\n\r\n" if complete else b"")

    def pieces(data: bytes) -> list[bytes]:
        size = -(-len(data) // reads)
        return [data[i : i + size] for i in range(0, len(data), size)]

    status, body = refused(server, *pieces(long_target))
    assert status == 414 and body["error_code"] == "REQUEST_URI_TOO_LONG"
    status, body = refused(server, *pieces(big_head))
    assert status == 431 and body["error_code"] == "REQUEST_HEADER_FIELDS_TOO_LARGE"


@pytest.mark.parametrize("request_bytes, detail", [
    (b"GET /sessions/a#b HTTP/1.1\r\nHost: a\r\n\r\n", "The request target must not contain '#'"),
    (b"GET /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", "Invalid HTTP request received."),
    (b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
     "Invalid HTTP request received."),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "Invalid HTTP request received."),
])  # fmt: skip
def test_requests_refused_before_anything_runs(server, request_bytes, detail):
    status, body = refused(server, request_bytes)
    assert (status, body["detail"]) == (400, detail)


def test_the_path_is_routed_as_sent_in_origin_form(server):
    with connect(server) as sock:
        sock.sendall(b"GET http://a/sessions/a%2Fb HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        seen = json.loads(read_all(sock).split(b"\r\n\r\n", 1)[1])
    assert (seen["path"], seen["raw_path"]) == ("/sessions/a%2Fb", "/sessions/a%2Fb")


def test_a_trailing_slash_is_not_found_rather_than_redirected(server):
    status, body = refused(server, b"DELETE /sessions/x/ HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert (status, body["error_code"]) == (404, "NOT_FOUND")


def test_a_body_is_read_before_the_request_runs_and_a_bad_one_refuses_it(server):
    status, _ = refused(server, b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    assert status == 400


def test_a_refusal_is_a_whole_response_with_connection_close():
    response = h11.Connection(h11.CLIENT)
    response.send(h11.Request(method="GET", target="/", headers=[("Host", "a")]))
    response.send(h11.EndOfMessage())
    response.receive_data(refusal(431, "Request header fields too large"))
    event = response.next_event()
    assert event.status_code == 431 and (b"connection", b"close") in event.headers
    assert json.loads(response.next_event().data) == {
        "detail": "Request header fields too large", "error_code": "REQUEST_HEADER_FIELDS_TOO_LARGE",
    }  # fmt: skip
