"""Handlers for the Sessions tag: map storage outcomes to the contract's responses."""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

from connexion import request
from starlette.responses import Response

from agentos_sessions.errors import ApiError
from agentos_sessions.observability import current_request_record
from storage import Storage, TargetError

_SINGLE_VALUED = ("db_id", "table")


def _is_utf8(encoded: bytes) -> bool:
    try:
        unquote_to_bytes(encoded.replace(b"+", b" ")).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# A coroutine, so an erase waits on the event loop instead of holding a threadpool
# thread: with group commit the storage layer answers it from its writer thread.
async def delete_session(session_id: str, db_id: str | None = None, table: str | None = None) -> Response:
    # The server decodes invalid UTF-8 with U+FFFD replacements, so /sessions/%FF%FE
    # would erase a session literally named "\ufffd\ufffd": a delete must name its
    # session exactly, so bytes that are not text are refused.
    if not _is_utf8(request.scope.get("raw_path", b"")) or not _is_utf8(request.scope.get("query_string", b"")):
        raise ApiError(422, "Path and query parameters must be valid UTF-8")
    for name in _SINGLE_VALUED:
        if len(request.query_params.getlist(name)) > 1:
            # Which value would win is a parser detail; a delete must not guess.
            raise ApiError(422, f"The {name} query parameter may be given only once")
    return await erase_and_answer(request.state.storage, session_id, db_id, table)


async def erase_and_answer(
    storage: Storage, session_id: str, db_id: str | None = None, table: str | None = None
) -> Response:
    """The operation once the request is known to be valid; the fast lane calls it too."""
    attempt = current_request_record()
    try:
        target = storage.locate(db_id, table)
        attempt.located(target.database.id, target.session_table.name)
        erased = await storage.erase_async(target, session_id, audit=attempt.audit_entry())
    except TargetError as exc:
        raise ApiError(exc.status, str(exc)) from None
    attempt.settled(erased)
    if erased is None:
        raise ApiError(404, "Session not found")
    # A bare 204: Connexion's NoContent would add a content type to an empty answer.
    return Response(status_code=204)
