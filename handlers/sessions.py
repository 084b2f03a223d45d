"""Handlers for the Sessions tag: map storage outcomes to the contract's responses, and
report each one's outcome to the operators' record of the request."""

from __future__ import annotations

import uuid
from contextvars import ContextVar
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from connexion import request
from starlette.responses import Response

from handlers.errors import ApiError
from storage import AuditEntry, ErasedRows, Storage, TargetError

DELETE_OPERATION = "delete_session"


@dataclass
class RequestRecord:
    """One request as operators see it: the app's outer middleware opens it and writes the
    audit line and metrics from it; routing names the operation; the handler adds the
    database and table it resolved, and what storage erased."""

    request_id: str
    caller: str | None
    operation: str = "unmatched"
    session_id: str | None = None
    db_id: str | None = None
    table: str | None = None
    # Set once storage has answered: the rows erased, or None for "no such session".
    erased: ErasedRows | None = None
    storage_answered: bool = False

    def audit_entry(self) -> AuditEntry:
        return AuditEntry(request_id=self.request_id, caller=self.caller)


current_record: ContextVar[RequestRecord | None] = ContextVar("agentos_sessions_request", default=None)


def request_record() -> RequestRecord:
    """The record opened for this request, or a detached one outside the app."""
    return current_record.get() or RequestRecord(request_id=uuid.uuid4().hex, caller=None)


_SINGLE_VALUED = ("db_id", "table")


def decoded(text: str) -> str:
    """Percent-decoded as UTF-8. The path is routed as sent (``agentos_sessions/http.py``),
    so an encoded '/' or newline stays inside the id; bytes that are not UTF-8 are
    refused, since a delete must name its session exactly."""
    try:
        return unquote_to_bytes(text).decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(422, "Path and query parameters must be valid UTF-8") from None


# A coroutine, so an erase waits on the event loop instead of holding a threadpool
# thread: storage answers it from its writer thread.
async def delete_session(session_id: str, db_id: str | None = None, table: str | None = None) -> Response:
    # Starlette decodes the query with U+FFFD replacements: refuse what is not UTF-8.
    decoded(request.scope.get("query_string", b"").decode("latin-1").replace("+", " "))
    for name in _SINGLE_VALUED:
        if len(request.query_params.getlist(name)) > 1:
            # Which value would win is a parser detail; a delete must not guess.
            raise ApiError(422, f"The {name} query parameter may be given only once")
    return await erase_and_answer(request.state.storage, decoded(session_id), db_id, table)


async def erase_and_answer(
    storage: Storage, session_id: str, db_id: str | None = None, table: str | None = None
) -> Response:
    """The operation once the request is known to be valid; the fast lane calls it too."""
    record = request_record()
    record.operation, record.session_id = DELETE_OPERATION, session_id
    try:
        target = storage.locate(db_id, table)
        record.db_id, record.table = target.database.id, target.session_table.name
        erased = await storage.erase(target, session_id, audit=record.audit_entry())
    except TargetError as exc:
        raise ApiError(exc.status, str(exc)) from None
    record.erased, record.storage_answered = erased, True
    if erased is None:
        raise ApiError(404, "Session not found")
    # A bare 204: Connexion's NoContent would add a content type to an empty answer.
    return Response(status_code=204)
