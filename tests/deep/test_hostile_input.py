"""Hostile requests against a live server, written byte for byte on a raw socket.

An HTTP client would normalise most of these away (invalid UTF-8, NUL, duplicate
headers, oversized heads, dot segments), so each request is sent as raw HTTP/1.1. For
every case: the expected status, a body in the spec's shape (``assert_spec_error``) or
a correct 204, nothing erased but the session a correct 204 targeted (every seeded
session and its runs still there; for anything but a 204, every table's row count
unchanged), and a health probe (an authenticated delete of a missing session) answered
in shape afterwards, so the server is known to keep serving.

Requests refused before any operation runs (parser errors, heads over the limits, a
fragment, smuggling-shaped framing) are answered by ``agentos_sessions/http.py`` in the
same JSON shape. One case has no answer by construction (the client leaves mid-head);
its note says so. Where a case's answer changed when the HTTP layer moved from
httptools to h11, its note says what it was.
"""

from __future__ import annotations

import fcntl
import os
import resource
import select
import selectors
import socket
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import httpx
import pytest
from sqlalchemy import MetaData, Table, func, inspect
from sqlalchemy import select as sql_select

from agentos_sessions.http import MAX_HEAD_BYTES, MAX_TARGET_BYTES
from storage import Database
from tests.support import AUTH, KEY, AgnoData, LiveServer, assert_spec_error, database_toml, require_root

pytestmark = pytest.mark.live

RUNS = 2
# Bounded waits: a hang fails its case instead of stalling the run.
ANSWER_TIMEOUT = 10.0
KEY_B = KEY.encode()
AUTH_LINE = b"Authorization: Bearer " + KEY_B
# On PostgreSQL a primary-key value must fit a btree entry (about 2.7 kB).
LONG_ID = "L" * 2000

# Sessions that exactly one case erases, each with a correct 204.
TARGETS = {
    "lower-scheme": "hostile-lower-scheme",
    "upper-scheme": "hostile-upper-scheme",
    "trailing-ows": "hostile-trailing-ows",
    "leading-ows": "hostile-leading-ows",
    "header-name-case": "hostile-header-name-case",
    "empty-params": "hostile-empty-params",
    "explicit-target": "hostile-explicit-target",
    "absolute-form": "hostile-absolute-form",
    "sql-id": "' OR '1'='1",
    "dot-dot": "..",
    "space": " ",
    "newline": "line\nbreak",
    "unicode": "ünïcödé-会话",
    "percent-literal": "100%",
    "long-id": LONG_ID,
    "pipelined": "hostile-pipelined",
    "pipelined-garbage": "hostile-pipelined-garbage",
    "ignored-body": "hostile-ignored-body",
    "encoded-slash": "a/b",
}
# Sessions no case may touch, several of them near misses of a target or a payload.
BYSTANDERS = [
    *(f"bystander-{i}" for i in range(5)),
    "a",  # a prefix of "a/b", which one case erases
    "frag",  # what "frag#x" named before a fragment was refused
    "hostile-bad-chunk",
    "hostile-xchunked",
    "' OR '1'='2",
    "...",
    "%20",
    "  ",
    "line",
    "x",
    LONG_ID + "M",
    "\ufffd\ufffd",  # what %FF%FE decodes to, lossily: must survive that request
]


def q(text: str) -> bytes:
    return urllib.parse.quote(text, safe="").encode()


def http(
    target: bytes,
    *headers: bytes,
    method: bytes = b"DELETE",
    auth: bool = True,
    body: bytes = b"",
    close: bool = True,
) -> bytes:
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1"]
    if auth:
        lines.append(AUTH_LINE)
    lines.extend(headers)
    if close:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def sid(name: str) -> bytes:
    return b"/sessions/" + q(TARGETS[name])


MISSING = b"/sessions/no-such-session"


@dataclass(frozen=True)
class Case:
    name: str
    request: bytes | Callable[[socket.socket], None]
    # One (status, error_code) per response on the connection; () when none can come.
    expect: tuple[tuple[int, str | None], ...]
    erases: tuple[str, ...] = ()
    head_request: bool = False
    note: str = ""


def case(name, target, status, code=None, *, request_auth=True, extra=(), method=b"DELETE", body=b"", raw=False, **kw):
    if callable(target) or raw:
        request = target
    else:
        # A case that sets Authorization itself sends only its own.
        own_auth = any(h.lower().startswith(b"authorization:") for h in extra)
        request = http(target, *extra, method=method, auth=request_auth and not own_auth, body=body)
    expect = () if status is None else ((status, code),)
    return Case(name, request, expect, **kw)


NF, BAD, UNAUTH, INVALID = "NOT_FOUND", "BAD_REQUEST", "UNAUTHENTICATED", "VALIDATION_ERROR"


def trickled_head(sock: socket.socket) -> None:
    """A header that keeps growing, sent in pieces: refused while still arriving."""
    sock.sendall(b"DELETE /sessions/x HTTP/1.1\r\nHost: 127.0.0.1\r\n" + AUTH_LINE + b"\r\nX-Trickle: ")
    sock.sendall(b"a" * (MAX_HEAD_BYTES - 4096))
    sock.sendall(b"a" * 8192)  # past the limit, head still unfinished


def abandoned_head(sock: socket.socket) -> None:
    sock.sendall(b"DELETE /sessions/x HTTP/1.1\r\nHost: 127.0.0.1\r\n" + AUTH_LINE[:20])
    sock.shutdown(socket.SHUT_WR)


CASES = [
    # --- SQL where values meet the database (they never reach SQL text)
    case("sql-in-table", sid("sql-id") + b"?db_id=default&table=" + q("agno_sessions; DROP TABLE agno_runs; --"), 404, NF),
    case("sql-quote-in-table", MISSING + b"?db_id=default&table=" + q('agno_sessions" --'), 404, NF),
    case("runs-table-as-table", MISSING + b"?db_id=default&table=agno_runs", 404, NF),
    case("table-case-differs", MISSING + b"?db_id=default&table=AGNO_SESSIONS", 404, NF),
    case("table-without-db-id", MISSING + b"?table=agno_sessions", 400, BAD),
    case("sql-in-db-id", MISSING + b"?db_id=" + q("' OR 1=1--"), 404, NF),
    case("sql-suffix-db-id", MISSING + b"?db_id=" + q("default'--"), 404, NF),
    case("sql-in-session-id-near-miss", b"/sessions/" + q("' OR '1'='1' --"), 404, NF),
    case("sql-delete-in-session-id", b"/sessions/" + q("x'; DELETE FROM agno_sessions; --") + b"?db_id=default&table=agno_sessions", 404, NF),
    case("sql-session-id-exact", sid("sql-id"), 204, erases=("sql-id",), note="quotes are data: exactly that session goes"),
    # --- session ids: long, empty-looking, dots, slashes, control bytes, encodings
    case("long-id-exists", b"/sessions/" + q(LONG_ID), 204, erases=("long-id",)),
    case("id-15kib-missing", b"/sessions/" + b"b" * (15 * 1024), 404, NF),
    case("id-64kib", b"/sessions/" + b"b" * (64 * 1024), 414, "REQUEST_URI_TOO_LONG",
         note=f"request target over {MAX_TARGET_BYTES} bytes (httptools alone fails at 64 KiB with a text 400)"),
    case("query-64kib", MISSING + b"?db_id=" + b"d" * (64 * 1024), 414, "REQUEST_URI_TOO_LONG"),
    case("id-space-exists", b"/sessions/%20", 204, erases=("space",)),
    case("id-two-spaces-encoded-literal-missing", b"/sessions/%2520%2520", 404, NF),
    case("id-tab", b"/sessions/%09", 404, NF),
    case("id-nul", b"/sessions/%00", 404, NF, note="PostgreSQL text cannot hold NUL: answered not found without a query"),
    case("id-nul-inside", b"/sessions/x%00y", 404, NF),
    case("id-empty", b"/sessions/", 404, NF, note="no route: the spec has no /sessions/ operation"),
    case("id-control-bytes", b"/sessions/%01%02%1B%7F", 404, NF),
    case("id-crlf-injection", b"/sessions/%0D%0AX-Injected:%201", 404, NF),
    case("id-newline-exists", b"/sessions/" + q("line\nbreak"), 204, erases=("newline",),
         note="Starlette's mount pattern stopped at a newline (404 for an existing id); fixed in app.py"),
    case("id-dot-dot-encoded-exists", b"/sessions/%2E%2E", 204, erases=("dot-dot",), note="dot segments are ids, never resolved"),
    case("id-dot", b"/sessions/.", 404, NF),
    case("id-dot-dot-traversal", b"/sessions/../openapi.json", 404, NF),
    case("id-encoded-slash-exists", b"/sessions/a%2Fb", 204, erases=("encoded-slash",),
         note="was 404 (decoded before routing); the path is routed as sent, so %2F is part of the id"),
    case("id-encoded-traversal", b"/sessions/..%2F..%2Fetc%2Fpasswd", 404, NF),
    case("id-invalid-utf8-encoded", b"/sessions/%FF%FE", 422, INVALID,
         note='was 204 erasing the session named "\\ufffd\\ufffd" (lossy decoding); refused in the handler'),
    case("id-overlong-utf8", b"/sessions/%C0%AF", 422, INVALID),
    case("id-lone-surrogate-utf8", b"/sessions/%ED%A0%80", 422, INVALID),
    case("id-unicode-exists", b"/sessions/" + q("ünïcödé-会话"), 204, erases=("unicode",)),
    case("id-percent-literal-exists", b"/sessions/100%25", 204, erases=("percent-literal",)),
    case("id-bare-percent", b"/sessions/%", 404, NF),
    case("id-bad-escape", b"/sessions/%zz", 404, NF),
    case("id-raw-invalid-utf8", b"/sessions/\xff\xfe", 400, BAD),
    case("id-raw-nul", b"/sessions/a\x00b", 400, BAD),
    case("id-raw-tab", b"/sessions/a\tb", 400, BAD),
    case("id-trailing-slash", b"/sessions/x/", 404, NF, note="was 307 to /sessions/x, built from Host"),
    case("host-twice", MISSING, 400, BAD, extra=(b"Host: evil.example",),
         note="RFC 9112 3.2: 400 for more than one Host (uvicorn let it through)"),
    case("host-missing", b"DELETE /sessions/no-such-session HTTP/1.1\r\n" + AUTH_LINE + b"\r\n\r\n",
         400, BAD, raw=True, note="RFC 9112 3.2: 400 for HTTP/1.1 without Host"),
    case("http-1.0-without-host", b"DELETE /sessions/no-such-session HTTP/1.0\r\n" + AUTH_LINE + b"\r\n\r\n",
         404, NF, raw=True),
    case("path-upper-case", b"/SESSIONS/x", 404, NF),
    case("path-double-slash", b"//sessions/x", 404, NF),
    case("id-fragment", b"/sessions/no-such-session#frag", 400, BAD),
    case("id-fragment-of-existing", b"/sessions/frag#x", 400, BAD,
         note="was 204, erasing the session 'frag': a target with '#' is refused and erases nothing"),
    case("query-fragment", MISSING + b"?db_id=default#x", 400, BAD),
    case("absolute-form-exists", b"http://127.0.0.1" + sid("absolute-form"), 204, erases=("absolute-form",)),
    case("asterisk-form", b"*", 404, NF),
    # --- query parameters: repeated, unknown, empty, odd encodings
    case("db-id-twice", MISSING + b"?db_id=default&db_id=default", 422, INVALID),
    case("db-id-twice-differing", MISSING + b"?db_id=default&db_id=other", 422, INVALID),
    case("db-id-empty-then-set", MISSING + b"?db_id=&db_id=default", 422, INVALID),
    case("table-twice", MISSING + b"?db_id=default&table=agno_sessions&table=agno_sessions", 422, INVALID),
    case("unknown-param", MISSING + b"?foo=1", 422, INVALID),
    case("typo-param", MISSING + b"?dbid=default", 422, INVALID),
    case("param-name-case", MISSING + b"?DB_ID=default", 422, INVALID),
    case("param-brackets", MISSING + b"?db_id[]=default", 422, INVALID),
    case("param-name-invalid-utf8", MISSING + b"?%FF=1", 422, INVALID),
    case("session-id-as-query", MISSING + b"?session_id=x", 422, INVALID),
    case("empty-params-exists", sid("empty-params") + b"?db_id=&table=", 204, erases=("empty-params",),
         note="empty db_id/table count as absent, as in AgentOS"),
    case("explicit-target-exists", sid("explicit-target") + b"?db_id=default&table=agno_sessions", 204, erases=("explicit-target",)),
    case("param-without-value", MISSING + b"?db_id", 404, NF),
    case("semicolon-separator", MISSING + b"?db_id=default;table=agno_runs", 404, NF, note="';' is not a separator"),
    case("db-id-nul", MISSING + b"?db_id=%00", 404, NF),
    case("table-nul", MISSING + b"?db_id=default&table=%00", 404, NF),
    case("db-id-invalid-utf8", MISSING + b"?db_id=%FF%FE", 422, INVALID),
    case("db-id-crlf", MISSING + b"?db_id=%0D%0AX-Injected:%201", 404, NF),
    case("empty-query", MISSING + b"?", 404, NF),
    # --- Authorization, every malformed shape (and the accepted ones)
    case("auth-missing", MISSING, 401, UNAUTH, request_auth=False),
    case("auth-basic", MISSING, 401, UNAUTH, extra=(b"Authorization: Basic YTpi",)),
    case("auth-digest", MISSING, 401, UNAUTH, extra=(b'Authorization: Digest username="a"',)),
    case("auth-token-scheme", MISSING, 401, UNAUTH, extra=(b"Authorization: Token " + KEY_B,)),
    case("auth-bearer-alone", MISSING, 401, UNAUTH, extra=(b"Authorization: Bearer",)),
    case("auth-bearer-empty", MISSING, 401, UNAUTH, extra=(b"Authorization: Bearer ",)),
    case("auth-header-empty", MISSING, 401, UNAUTH, extra=(b"Authorization:",)),
    case("auth-token-with-space", MISSING, 401, UNAUTH, extra=(b"Authorization: Bearer " + KEY_B + b" extra",)),
    case("auth-two-spaces", MISSING, 401, UNAUTH, extra=(b"Authorization: Bearer  " + KEY_B,),
         note="stricter than RFC 9110's 1*SP: exactly one space, by design (security.py)"),
    case("auth-tab-separator", MISSING, 401, UNAUTH, extra=(b"Authorization: Bearer\t" + KEY_B,)),
    case("auth-bare-token", MISSING, 401, UNAUTH, extra=(b"Authorization: " + KEY_B,)),
    case("auth-two-headers", MISSING, 401, UNAUTH, extra=(AUTH_LINE, AUTH_LINE)),
    case("auth-two-headers-one-bad", MISSING, 401, UNAUTH, extra=(AUTH_LINE, b"Authorization: Bearer wrong")),
    case("auth-comma-list", MISSING, 401, UNAUTH, extra=(AUTH_LINE + b", Bearer " + KEY_B,)),
    case("auth-wrong-key", MISSING, 401, UNAUTH, extra=(b"Authorization: Bearer wrong-key",)),
    case("auth-key-prefix", MISSING, 401, UNAUTH, extra=(AUTH_LINE[:-1],)),
    case("auth-key-suffix", MISSING, 401, UNAUTH, extra=(AUTH_LINE + b"x",)),
    case("auth-token-32kib", MISSING, 401, UNAUTH, extra=(b"Authorization: Bearer " + b"t" * (32 * 1024),)),
    case("auth-token-100kib", MISSING, 431, "REQUEST_HEADER_FIELDS_TOO_LARGE",
         extra=(b"Authorization: Bearer " + b"t" * (100 * 1024),)),
    case("auth-token-invalid-utf8", MISSING, 401, UNAUTH, extra=(b"Authorization: Bearer \xff\xfe",)),
    case("auth-token-raw-nul", MISSING, 400, BAD, extra=(b"Authorization: Bearer a\x00b",)),
    case("auth-proxy-authorization", MISSING, 401, UNAUTH, request_auth=False,
         extra=(b"Proxy-Authorization: Bearer " + KEY_B,)),
    case("auth-key-in-query", MISSING + b"?access_token=" + KEY_B, 401, UNAUTH, request_auth=False,
         note="authentication is decided first: 401, not 422"),
    case("unauthenticated-existing-session", sid("lower-scheme"), 401, UNAUTH, request_auth=False),
    case("unauthenticated-sql-table", sid("sql-id") + b"?table=%27", 401, UNAUTH, request_auth=False),
    case("auth-lower-scheme-exists", sid("lower-scheme"), 204, erases=("lower-scheme",),
         extra=(b"Authorization: bearer " + KEY_B,), note="auth schemes are case-insensitive (RFC 9110)"),
    case("auth-upper-scheme-exists", sid("upper-scheme"), 204, erases=("upper-scheme",),
         extra=(b"Authorization: BEARER " + KEY_B,)),
    case("auth-trailing-ows-exists", sid("trailing-ows"), 204, erases=("trailing-ows",),
         extra=(AUTH_LINE + b" \t ",), note="was 401: httptools keeps trailing OWS; security.py strips it"),
    case("auth-leading-ows-exists", sid("leading-ows"), 204, erases=("leading-ows",),
         extra=(b"Authorization: \t  Bearer " + KEY_B,)),
    case("auth-header-name-case-exists", sid("header-name-case"), 204, erases=("header-name-case",),
         extra=(b"aUTHORIZATION: Bearer " + KEY_B,)),
    # --- heads: oversized, many headers, malformed
    case("header-48kib", MISSING, 404, NF, extra=(b"X-Big: " + b"a" * (48 * 1024),)),
    case("header-100kib", MISSING, 431, "REQUEST_HEADER_FIELDS_TOO_LARGE",
         extra=(b"X-Big: " + b"a" * (100 * 1024),), note="was accepted at any size (16 MiB tried)"),
    case("headers-10000", MISSING, 431, "REQUEST_HEADER_FIELDS_TOO_LARGE",
         extra=tuple(b"X-H%d: v" % i for i in range(10000))),
    case("headers-500", MISSING, 404, NF, extra=tuple(b"X-H%d: v" % i for i in range(500))),
    case("header-trickled-past-limit", trickled_head, 431, "REQUEST_HEADER_FIELDS_TOO_LARGE",
         note="refused while still arriving: memory stays bounded"),
    case("header-nul", MISSING, 400, BAD, extra=(b"X-A: a\x00b",)),
    case("header-name-space", MISSING, 400, BAD, extra=(b"X A: b",)),
    case("header-obs-fold", MISSING, 404, NF, extra=(b"X-A: b\r\n c",),
         note="was 400: h11 replaces an obsolete line fold with a space, as RFC 9112 5.2 allows"),
    case("header-invalid-utf8-value", MISSING, 404, NF, extra=(b"X-A: \xff\xfe",)),
    case("request-id-hostile", MISSING, 404, NF, extra=(b"X-Request-ID: <script>" + b"r" * 1000,)),
    case("content-length-and-chunked", MISSING, 400, BAD,
         extra=(b"Content-Length: 3", b"Transfer-Encoding: chunked"), body=b"0\r\n\r\n"),
    case("content-length-negative", MISSING, 400, BAD, extra=(b"Content-Length: -1",)),
    case("content-length-twice", MISSING, 400, BAD,
         extra=(b"Content-Length: 1", b"Content-Length: 2"), body=b"ab"),
    case("chunked-body-invalid", b"/sessions/hostile-bad-chunk",
         400, BAD, extra=(b"Transfer-Encoding: chunked",), body=b"zz\r\nabc\r\n",
         note="was 204 then 400, the delete run before its body was refused: the body is read first now"),
    case("transfer-coding-unknown", b"/sessions/hostile-xchunked", 400, BAD,
         extra=(b"Transfer-Encoding: xchunked",), body=b"0\r\n\r\n",
         note="was 204, then 400 for the leftover body: refused before anything runs"),
    case("transfer-coding-chunked-then-gzip", b"/sessions/hostile-xchunked", 400, BAD,
         extra=(b"Transfer-Encoding: chunked, gzip",), body=b"0\r\n\r\n"),
    case("transfer-encoding-twice", b"/sessions/hostile-xchunked", 400, BAD,
         extra=(b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"), body=b"0\r\n\r\n"),
    case("body-ignored-exists", sid("ignored-body"), 204, erases=("ignored-body",),
         extra=(b"Content-Type: application/json", b"Content-Length: 14"), body=b'{"all": true}\n'),
    case("tls-client-hello", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 32, 400, BAD, raw=True),
    case("http2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, BAD, raw=True),
    case("abandoned-head", abandoned_head, None,
         note="client half-closes mid-head: no response can be given; server must keep serving"),
    # --- methods
    case("method-get", MISSING, 405, "METHOD_NOT_ALLOWED", method=b"GET"),
    case("method-post", MISSING, 405, "METHOD_NOT_ALLOWED", method=b"POST"),
    case("method-put", MISSING, 405, "METHOD_NOT_ALLOWED", method=b"PUT"),
    case("method-options", MISSING, 405, "METHOD_NOT_ALLOWED", method=b"OPTIONS"),
    case("method-head", MISSING, 405, None, method=b"HEAD", head_request=True, note="HEAD: no body by definition"),
    case("method-unknown", MISSING, 405, "METHOD_NOT_ALLOWED", method=b"FOO",
         note="was 400 (httptools knows a fixed list of methods); h11 takes any token"),
    case("method-lower-case", MISSING, 405, "METHOD_NOT_ALLOWED", method=b"delete",
         note="was 400; methods are case-sensitive (RFC 9110 9.1): no such method here"),
    # --- several requests on one connection
    Case("pipelined-delete-twice",
         http(sid("pipelined"), close=False) + http(sid("pipelined")),
         ((204, None), (404, NF)), erases=("pipelined",), note="responses in request order"),
    Case("pipelined-delete-then-garbage",
         http(sid("pipelined-garbage"), close=False) + b"\x00GARBAGE\r\n\r\n",
         ((204, None), (400, BAD)), erases=("pipelined-garbage",),
         note="was one 400 written ahead of the 204, though the delete ran; now in order"),
]


def exchange(port: int, request) -> bytes:
    """Send the request; read until the server closes, or fail after ANSWER_TIMEOUT."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT) as sock:
        if callable(request):
            request(sock)
        else:
            sock.sendall(request)
        deadline = time.monotonic() + ANSWER_TIMEOUT
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([sock], [], [], remaining)[0]:
                raise AssertionError(f"no end of answer within {ANSWER_TIMEOUT}s; got {received[:300]!r}")
            chunk = sock.recv(65536)
            if not chunk:
                return received
            received += chunk


def parse_responses(raw: bytes, head_request: bool = False) -> list[httpx.Response]:
    responses = []
    while raw:
        head, separator, rest = raw.partition(b"\r\n\r\n")
        assert separator, f"incomplete response: {raw[:300]!r}"
        status_line, *lines = head.split(b"\r\n")
        headers = [tuple(part.strip() for part in line.split(b":", 1)) for line in lines]
        status = int(status_line.split(b" ")[1])
        length = 0 if head_request or status == 204 else int(dict(headers).get(b"content-length", b"0"))
        assert len(rest) >= length, f"truncated body: {raw[:300]!r}"
        responses.append(httpx.Response(status, headers=headers, content=rest[:length]))
        raw = rest[length:]
    return responses


def check_response(response: httpx.Response, status: int, code: str | None, head_request: bool) -> None:
    assert "x-injected" not in response.headers
    if status == 204:
        assert response.status_code == 204, response.text
        assert response.content == b"" and "content-type" not in response.headers
        return
    if head_request:
        assert response.status_code == status
        assert response.headers["content-type"] == "application/json" and response.content == b""
    else:
        assert_spec_error(response, status, code)
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"
    if status == 405:
        assert response.headers["allow"] == "DELETE"


class World:
    """The seeded database as the test sees it, and what must still be in it."""

    def __init__(self, database: Database):
        self.database = database
        self.data = AgnoData(database, database.settings.default_session_table)
        self.alive: set[str] = set()

    def seed(self) -> None:
        self.data.create_all()
        for session_id in [*TARGETS.values(), *BYSTANDERS]:
            self.data.add_session(session_id, runs=RUNS)
            self.alive.add(session_id)

    def snapshot(self) -> tuple[dict[str, int], dict[str, int]]:
        """(runs per existing session, row count per table)."""
        engine = self.database.engine
        schema = self.data.sessions.schema
        with engine.connect() as conn:
            sessions = {r[0] for r in conn.execute(sql_select(self.data.sessions.c.session_id))}
            runs = dict(
                conn.execute(
                    sql_select(self.data.runs.c.session_id, func.count()).group_by(self.data.runs.c.session_id)
                ).all()
            )
            tables = {}
            for name in inspect(conn).get_table_names(schema=schema):
                table = Table(name, MetaData(), schema=schema)
                tables[name] = conn.execute(sql_select(func.count()).select_from(table)).scalar_one()
        return {s: runs.get(s, 0) for s in sessions}, tables

    def assert_only_erased(self, before_tables: dict[str, int], erased: set[str]) -> None:
        sessions, tables = self.snapshot()
        self.alive -= erased
        assert sessions == {s: RUNS for s in self.alive}, {
            "missing": sorted(self.alive - set(sessions))[:5], "unexpected": sorted(set(sessions) - self.alive)[:5]
        }
        assert set(tables) == set(before_tables), "tables appeared or vanished"
        if not erased:
            assert tables == before_tables, "rows changed although nothing was erased"


def probe_health(url: str) -> None:
    """An authenticated delete of a missing session goes through every layer, storage too."""
    response = httpx.delete(f"{url}/sessions/{uuid.uuid4()}", headers=AUTH, timeout=ANSWER_TIMEOUT)
    assert_spec_error(response, 404, NF)


def run_case(server: LiveServer, world: World, hostile: Case) -> None:
    _, before_tables = world.snapshot()
    raw = exchange(server.port, hostile.request)
    responses = parse_responses(raw, hostile.head_request)
    assert [r.status_code for r in responses] == [s for s, _ in hostile.expect], raw[:400]
    for response, (status, code) in zip(responses, hostile.expect):
        check_response(response, status, code, hostile.head_request)
    world.assert_only_erased(before_tables, {TARGETS[t] for t in hostile.erases})
    probe_health(server.url)


def test_table_is_large_and_consistent():
    assert len(CASES) >= 60
    assert len({c.name for c in CASES}) == len(CASES)
    erased = [t for c in CASES for t in c.erases]
    # Every target is erased by exactly one case, so each 204 is proven to have hit.
    assert sorted(erased) == sorted(TARGETS)
    assert all(c.expect[0][0] == 204 for c in CASES if c.erases)


def test_hostile_requests(backend, make_database_settings, tmp_path):
    settings = make_database_settings()
    database = Database(settings)
    world = World(database)
    failures = []
    try:
        world.seed()
        with LiveServer(tmp_path, database_toml(settings)) as server:
            for hostile in CASES:
                try:
                    run_case(server, world, hostile)
                except AssertionError as exc:
                    failures.append(f"{hostile.name}: {exc}")
                    # A failed case may have left the server down; later cases are judged
                    # on a server that can still answer, or all fail with the reason.
                    try:
                        probe_health(server.url)
                    except Exception as probe_exc:  # noqa: BLE001
                        failures.append(f"server stopped serving after {hostile.name}: {probe_exc!r}")
                        break
            assert server.process.poll() is None, "the server exited"
    finally:
        database.dispose()
    assert not failures, f"{len(failures)} of {len(CASES)} hostile cases failed on {backend}:\n" + "\n".join(failures)


def raise_own_open_file_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        # Root (CI) may raise the hard limit too.
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, max(hard, needed)))


IDLE_CONNECTIONS = 1000
SLOW_HEADS = 100
REQUEST_TIMEOUT_S = 5.0


def test_idle_and_slow_connections_are_closed_and_deletes_keep_working(backend, make_database_settings, tmp_path):
    """1,000 connections that send nothing and 100 that trickle a head, against a server
    started with a soft limit of 1,024 descriptors: legitimate deletes are answered
    meanwhile, and every idle or slow connection is closed once the request timeout
    has passed."""
    raise_own_open_file_limit(IDLE_CONNECTIONS + SLOW_HEADS + 256)
    settings = make_database_settings()
    database = Database(settings)
    data = AgnoData(database, settings.default_session_table)
    held: list[socket.socket] = []
    try:
        data.create_all()
        targets = data.add_sessions([f"hostile-busy-{i}" for i in range(20)], runs=1)
        env = {"AGENTOS_SESSIONS_REQUEST_TIMEOUT_MS": str(int(REQUEST_TIMEOUT_S * 1000))}
        with LiveServer(tmp_path, database_toml(settings), extra_env=env, open_files=1024) as server:
            for _ in range(IDLE_CONNECTIONS):
                held.append(socket.create_connection(("127.0.0.1", server.port), timeout=ANSWER_TIMEOUT))
            slow = []
            for _ in range(SLOW_HEADS):
                sock = socket.create_connection(("127.0.0.1", server.port), timeout=ANSWER_TIMEOUT)
                sock.sendall(b"DELETE /sessions/x HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                slow.append(sock)
            held.extend(slow)
            with httpx.Client(base_url=server.url, headers=AUTH, timeout=ANSWER_TIMEOUT) as client:
                for session_id in targets:
                    assert client.delete(f"/sessions/{session_id}").status_code == 204
                    for sock in slow:  # slowloris: one more header line now and then
                        try:
                            sock.sendall(b"X-Slow: 1\r\n")
                        except OSError:
                            pass
            watching = selectors.DefaultSelector()  # select() stops at descriptor 1,024
            for sock in held:
                watching.register(sock, selectors.EVENT_READ)
            assert not watching.select(0), "the deletes must be answered while every idle connection is open"
            deadline = time.monotonic() + REQUEST_TIMEOUT_S + ANSWER_TIMEOUT
            still_open = set(held)
            while still_open and time.monotonic() < deadline:
                for key, _ in watching.select(0.5):
                    try:
                        key.fileobj.recv(1)  # nothing was asked: only the close can come
                    except ConnectionResetError:
                        pass
                    watching.unregister(key.fileobj)
                    still_open.discard(key.fileobj)
            watching.close()
            assert not still_open, f"{len(still_open)} of {len(held)} idle or slow connections still open"
            probe_health(server.url)
        assert all(data.counts(session_id)["sessions"] == 0 for session_id in targets)
    finally:
        for sock in held:
            sock.close()
        database.dispose()


def lock_path(settings) -> Path:
    return Path(f"{settings.url.removeprefix('sqlite:///')}-writer-lock")


@pytest.mark.parametrize("backend", ["sqlite"])  # the writers' lock file is SQLite's
def test_a_planted_writers_lock_file_is_neither_followed_nor_obeyed(make_database_settings, tmp_path):
    """Another local user, in a shared directory, plants the lock file first: as a
    symlink to a file of theirs, or as a file of their own that they hold."""
    require_root("plant a lock file owned by another user")
    settings = make_database_settings()
    victim = tmp_path / "victim"
    victim.write_bytes(b"theirs")
    database = Database(settings)
    data = AgnoData(database, settings.default_session_table)
    try:
        data.create_all()
        ids = data.add_sessions(["planted-1", "planted-2"], runs=1)
        database.dispose()  # its own lock file must not exist yet when the server starts
        lock_path(settings).unlink(missing_ok=True)
        os.symlink(victim, lock_path(settings))
        with LiveServer(tmp_path, database_toml(settings)) as server:
            assert httpx.delete(f"{server.url}/sessions/{ids[0]}", headers=AUTH, timeout=ANSWER_TIMEOUT).status_code == 204
        assert victim.read_bytes() == b"theirs" and lock_path(settings).is_symlink()

        lock_path(settings).unlink()
        lock_path(settings).touch()
        os.chown(lock_path(settings), 65534, 65534)
        theirs = os.open(lock_path(settings), os.O_RDWR)
        fcntl.flock(theirs, fcntl.LOCK_EX)
        try:
            with LiveServer(tmp_path, database_toml(settings)) as server:
                response = httpx.delete(f"{server.url}/sessions/{ids[1]}", headers=AUTH, timeout=ANSWER_TIMEOUT)
                assert response.status_code == 204
        finally:
            os.close(theirs)
    finally:
        database.dispose()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_held_writers_lock_costs_one_busy_timeout_then_500_and_health_says_so(make_database_settings, tmp_path):
    settings = make_database_settings()
    database = Database(settings)
    data = AgnoData(database, settings.default_session_table)
    try:
        data.create_all()
        session_id = data.add_session(runs=2)
        before = data.counts(session_id)
        config = "busy_timeout_ms = 1000\nhealth_timeout_ms = 3000\n" + database_toml(settings)
        with LiveServer(tmp_path, config) as server:
            # A process of the same user (a hung worker of another server) holds the lock.
            held = os.open(lock_path(settings), os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(held, fcntl.LOCK_EX)
            try:
                response = httpx.delete(f"{server.url}/sessions/{session_id}", headers=AUTH, timeout=ANSWER_TIMEOUT)
                assert_spec_error(response, 500, "INTERNAL_SERVER_ERROR")
                assert data.counts(session_id) == before
                health = httpx.get(f"{server.url}/health", timeout=ANSWER_TIMEOUT)
                assert health.status_code == 503, health.text
            finally:
                os.close(held)
            assert httpx.delete(f"{server.url}/sessions/{session_id}", headers=AUTH, timeout=ANSWER_TIMEOUT).status_code == 204
            assert httpx.get(f"{server.url}/health", timeout=ANSWER_TIMEOUT).status_code == 200
    finally:
        database.dispose()
