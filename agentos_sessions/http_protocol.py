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
and bearer key many times over.

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

_DETAILS = {
    400: "Invalid HTTP request received.",
    414: "Request target too long",
    431: "Request header fields too large",
}


class _HeadTooLarge(Exception):
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

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        # A head still arriving is checked as it grows, so it never costs more than the
        # limit plus one read.
        if self._in_head and not self.transport.is_closing():
            status = self._oversized(len(getattr(self, "url", None) or b""), self._head_bytes)
            if status is not None:
                self.logger.warning(_DETAILS[status])
                self._send_refusal(status)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        # A head that arrived in one read is complete before data_received can look at
        # it; measure it as written (request line, "name: value" lines) before the app
        # is started for it.
        head = len(self.url) + 32 + sum(len(name) + len(value) + 4 for name, value in self.headers)
        status = self._oversized(len(self.url), head)
        if status is not None:
            self._refused_status = status
            # httptools turns this into a parser error, which stops the parse and takes
            # uvicorn's bad-request path (send_400_response) without starting the app.
            raise _HeadTooLarge(status)
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

    def _send_refusal(self, status: int) -> None:
        self.transport.write(refusal(status, self.server_state.default_headers))
        self.transport.close()
