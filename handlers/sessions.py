"""Handlers for the Sessions tag: map storage outcomes to the contract's responses."""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

from connexion import request
from starlette.responses import Response

from handlers.errors import ApiError
from handlers.record import DELETE_OPERATION, request_record
from storage import Storage, TargetError

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
