"""What HTTP the service accepts, before any operation runs.

- ``BoundedH11Protocol``, the one adapter on a dependency's internals (uvicorn's h11
  protocol, chosen through its public ``http`` setting): bounds on the time and size of
  a head still arriving, which uvicorn lacks, and JSON refusals. ``tests/test_http.py``
  fails loudly if a uvicorn release changes what it relies on.
- ``RequestGuard``, ASGI middleware before routing, refuses a parsed head for a ``#``,
  the same size limits (so no answer depends on how the bytes were split), a version
  but HTTP/1.x, ``Content-Length`` with ``Transfer-Encoding``, a trailing slash (which
  Starlette would redirect, built from Host). It reads a declared body before anything
  runs, so a bad body refuses the request rather than follow it, and routes as sent.
"""

from __future__ import annotations

import asyncio
import json
from http import HTTPStatus
from urllib.parse import quote

import h11
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from handlers.errors import ApiError, error_code_for

MAX_TARGET_BYTES = 16 * 1024
MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 64 * 1024
# A head still arriving is refused only once it is certainly over a limit, whatever the
# request line and line ends add to what the guard measures of a parsed head.
_LINE_SLACK = 1024
# For uvicorn (h11_max_incomplete_event_size): a backstop behind the checks here.
H11_MAX_INCOMPLETE_EVENT_SIZE = 2 * MAX_HEAD_BYTES
# How long a refused connection keeps reading (and dropping) what the client still sends.
LINGER_SECONDS = 2.0
PARSE_ERROR = "Invalid HTTP request received."
TARGET_TOO_LONG = "Request target too long"
HEAD_TOO_LARGE = "Request header fields too large"


def refusal(status: int, detail: str) -> bytes:
    """A complete response for a connection about to close, in the contract's shape."""
    body = json.dumps({"detail": detail, "error_code": error_code_for(status)}).encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class BoundedH11Protocol(H11Protocol):
    def __init__(self, *args, request_timeout_s: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.request_timeout_s = request_timeout_s
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False
        # Of the head still arriving: bytes received, and whether its first line ended.
        self._head_bytes = 0
        self._line_ended = False

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._expect_head()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._expect_head()

    def connection_lost(self, exc) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:  # after a refusal, input is dropped until the close
            return
        awaiting_head = self.conn.their_state is h11.IDLE
        if awaiting_head:
            self._line_ended = self._line_ended or b"\n" in data
            self._head_bytes += len(data)
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._head_bytes, self._line_ended = 0, False  # parsed: the guard measures it
        elif awaiting_head and not self._refused and not self.transport.is_closing():
            if not self._line_ended and self._head_bytes > MAX_TARGET_BYTES + _LINE_SLACK:
                self._refuse(414, TARGET_TOO_LONG)
            elif self._head_bytes > MAX_HEAD_BYTES + _LINE_SLACK:
                self._refuse(431, HEAD_TOO_LARGE)

    def _expect_head(self) -> None:
        self._stop_head_timer()
        if not self.transport.is_closing():
            self._head_timer = self.loop.call_later(self.request_timeout_s, self._head_overdue)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_overdue(self) -> None:
        # h11 leaves IDLE only once a whole request head has arrived.
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, PARSE_ERROR)

    def _refuse(self, status: int, detail: str) -> None:
        if status != 400:  # uvicorn logs its own parse errors
            self.logger.warning("%s (%d)", detail, status)
        self._refused = True
        self._stop_head_timer()
        self.transport.write(refusal(status, detail))
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        # A lingering close, as nginx does: closing with unread input resets the connection,
        # which can destroy the refusal unread; so only our side is shut until EOF or linger.
        self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)


def _origin_form(target: bytes) -> bytes:
    """The path of an absolute-form target (``http://host/path``), which RFC 9112 has
    servers accept; any other target as it is."""
    scheme, separator, rest = target.partition(b"://")
    if separator and scheme.lower() in (b"http", b"https"):
        return b"/" + rest.partition(b"/")[2]
    return target


def _refused_head(scope: Scope) -> ApiError | None:
    path, query, headers = scope["raw_path"], scope.get("query_string", b""), scope["headers"]
    if b"#" in path or b"#" in query:
        # A fragment is never sent to a server; one that is cannot name a session.
        return ApiError(400, "The request target must not contain '#'")
    if len(path) + len(query) > MAX_TARGET_BYTES:
        return ApiError(414, TARGET_TOO_LONG)
    if len(path) + len(query) + sum(len(name) + len(value) + 4 for name, value in headers) > MAX_HEAD_BYTES:
        return ApiError(431, HEAD_TOO_LARGE)
    names = {name for name, _ in headers}
    if scope.get("http_version") not in ("1.0", "1.1") or {b"content-length", b"transfer-encoding"} <= names:
        return ApiError(400, PARSE_ERROR, {"Connection": "close"})
    return None


def _declares_body(headers) -> bool:
    return any(name == b"transfer-encoding" or (name == b"content-length" and value != b"0") for name, value in headers)


class RequestGuard:
    def __init__(self, app: ASGIApp, *, request_timeout_s: float) -> None:
        self.app = app
        self.request_timeout_s = request_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not scope.get("raw_path"):  # optional in ASGI; uvicorn always sends it
            scope = dict(scope, raw_path=quote(scope["path"]).encode())
        refused = _refused_head(scope)
        if refused is not None:
            raise refused
        path = _origin_form(scope["raw_path"])
        if path.endswith(b"/") and path != b"/":
            raise ApiError(404, "Not Found")
        if _declares_body(scope["headers"]):
            receive = await self._read_body(receive)
            if receive is None:
                return  # the client left, or its body could not be read: nothing runs
        # Routed as sent, as OpenAPI's path templating means it: an encoded '/' (or a
        # newline) stays inside its path segment, and the handler decodes the value.
        if path is not scope["raw_path"] or path.decode("latin-1") != scope["path"]:
            scope = dict(scope, path=path.decode("latin-1"), raw_path=path)
        await self.app(scope, receive, send)

    async def _read_body(self, receive: Receive) -> Receive | None:
        messages: list[Message] = []
        size = 0
        try:
            async with asyncio.timeout(self.request_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    messages.append(message)
                    size += len(message.get("body", b""))
                    if size > MAX_BODY_BYTES:
                        raise ApiError(413, "Request body too large")
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            raise ApiError(408, "The request body did not arrive in time") from None

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        return replay
