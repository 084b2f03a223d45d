"""uvicorn's httptools protocol with a bounded request head and spec-shaped refusals.

Some requests are refused by the HTTP layer before the app sees them: a request the
parser cannot read (NUL or raw control bytes, invalid header names, smuggling-shaped
framing, an unknown method, ...). uvicorn answers those with a ``text/plain`` 400,
which breaks the promise that every error is ``{detail, error_code}`` as
``application/json``; here the same refusal carries that body.

httptools also puts no bound on the request head: uvicorn accepts headers of any
size, and httptools joins a header's pieces by repeated concatenation, so one
endless header costs memory and quadratic CPU while the caller trickles it in. The
head is bounded here, as gunicorn, nginx and Node do: a request target over
``MAX_TARGET_BYTES`` is refused with 414, a head over ``MAX_HEAD_BYTES`` with 431, and
the connection is closed. The limits leave room for any real Agno session id (a UUID)
and bearer key many times over. A request with no Host (HTTP/1.1) or several Hosts is
refused with 400, as RFC 9112 requires and uvicorn does not.

Refusals keep response order on a pipelined connection (uvicorn would write its 400
ahead of responses still owed to earlier requests) and close lingeringly, so the
client can read them.

``serve`` selects this class through uvicorn's ``http`` setting (an import string, so
every worker process loads it too).
"""

from __future__ import annotations

import json
from http import HTTPStatus

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from agentos_sessions.errors import error_code_for

MAX_TARGET_BYTES = 16 * 1024
MAX_HEAD_BYTES = 64 * 1024
# How long a refused connection keeps reading (and dropping) what the client still sends.
LINGER_SECONDS = 2.0

_DETAILS = {
    400: "Invalid HTTP request received.",
    414: "Request target too long",
    431: "Request header fields too large",
}


class _Refused(Exception):
    """Raised from a parser callback to refuse the request head being parsed."""

    def __init__(self, status: int):
        super().__init__(_DETAILS[status])
        self.status = status


def refusal(status: int, default_headers=()) -> bytes:
    """The bytes of a refusal given below the app: status line, JSON error, close."""
    body = json.dumps({"detail": _DETAILS[status], "error_code": error_code_for(status)}).encode()
    status_line = STATUS_LINE.get(status) or f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n".encode()
    return b"".join(
        [
            status_line,
            *(name + b": " + value + b"\r\n" for name, value in default_headers),
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
            b"connection: close\r\n",
            b"\r\n",
            body,
        ]
    )


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    # Bytes received since the current request head began, and whether it has ended.
    # A connection starts inside a head.
    _head_bytes = 0
    _in_head = True
    # Set when a callback refuses the head; uvicorn's parser-error path then sends it.
    _refused_status: int | None = None
    # After a refusal, input is read and dropped until the connection closes.
    _draining = False
    # A refusal waiting for the responses to earlier pipelined requests.
    _pending_refusal: int | None = None

    def data_received(self, data: bytes) -> None:
        if self._draining:
            return
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        # A head still arriving is checked as it grows, so it never costs more than the
        # limit plus one read.
        if self._in_head and not self._draining and not self.transport.is_closing():
            status = self._oversized(len(getattr(self, "url", None) or b""), self._head_bytes)
            if status is not None:
                self.logger.warning(_DETAILS[status])
                self._send_refusal(status)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # The next head starts here. What is left of the current read is not counted,
        # so a head may pass the limit by up to one read before it is noticed.
        self._in_head = True
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        # A head that arrived in one read is complete before data_received can look at
        # it; measure it as written (request line, "name: value" lines) before the app
        # is started for it.
        head = len(self.url) + 32 + sum(len(name) + len(value) + 4 for name, value in self.headers)
        status = self._oversized(len(self.url), head)
        hosts = sum(1 for name, _ in self.headers if name == b"host")
        if status is None and (hosts > 1 or (hosts == 0 and self.parser.get_http_version() == "1.1")):
            # RFC 9112, section 3.2: a server MUST answer 400 to an HTTP/1.1 request
            # without Host, and to any request with more than one.
            status = 400
        if status is not None:
            self._refused_status = status
            # httptools turns this into a parser error, which stops the parse and takes
            # uvicorn's bad-request path (send_400_response) without starting the app.
            raise _Refused(status)
        super().on_headers_complete()

    @staticmethod
    def _oversized(target_bytes: int, head_bytes: int) -> int | None:
        if target_bytes > MAX_TARGET_BYTES:
            return 414
        if head_bytes > MAX_HEAD_BYTES:
            return 431
        return None

    def send_400_response(self, msg: str) -> None:
        status, self._refused_status = self._refused_status or 400, None
        self._send_refusal(status)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._pending_refusal is not None and not self._answering() and not self.transport.is_closing():
            status, self._pending_refusal = self._pending_refusal, None
            self._write_refusal(status)

    def _send_refusal(self, status: int) -> None:
        self._draining = True
        if self.transport.is_closing():
            return
        if self._answering():
            # Responses keep request order: earlier pipelined requests are answered
            # first (uvicorn would write the 400 ahead of them, and the client would
            # take it for the answer to a delete that in fact ran).
            self._pending_refusal = status
            return
        self._write_refusal(status)

    def _answering(self) -> bool:
        """Whether a request read before the refused one still awaits its response."""
        return bool(self.pipeline) or (self.cycle is not None and not self.cycle.response_complete)

    def _write_refusal(self, status: int) -> None:
        self.transport.write(refusal(status, self.server_state.default_headers))
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        # A lingering close, as nginx does: closing with unread input makes the kernel
        # reset the connection, which can destroy the refusal before the client reads it.
        # So only the sending side is shut; the client's EOF, or the linger, closes it.
        self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)
