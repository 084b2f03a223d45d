"""Handlers for the Sessions tag: map storage outcomes to the contract's responses."""

from __future__ import annotations

from connexion import request
from starlette.responses import Response

from agentos_sessions.errors import ApiError
from agentos_sessions.observability import current_request_record
from storage import Storage, TargetError

_SINGLE_VALUED = ("db_id", "table")


def delete_session(session_id: str, db_id: str | None = None, table: str | None = None) -> Response:
    for name in _SINGLE_VALUED:
        if len(request.query_params.getlist(name)) > 1:
            # Which value would win is a parser detail; a delete must not guess.
            raise ApiError(422, f"The {name} query parameter may be given only once")
    storage: Storage = request.state.storage
    attempt = current_request_record()
    try:
        target = storage.locate(db_id, table)
        attempt.located(target.database.id, target.session_table.name)
        erased = storage.erase(target, session_id, audit=attempt.audit_entry())
    except TargetError as exc:
        raise ApiError(exc.status, str(exc)) from None
    attempt.settled(erased)
    if erased is None:
        raise ApiError(404, "Session not found")
    # A bare 204: Connexion's NoContent would add a content type to an empty answer.
    return Response(status_code=204)
