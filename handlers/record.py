"""What operators see of a request, filled in from inside it.

The app's outer middleware opens one record per request and writes the audit line and
the metrics from it; routing names the operation; the delete handler adds what only it
knows: the database and table it resolved, and what storage erased.
"""

from __future__ import annotations

import uuid
from contextvars import ContextVar
from dataclasses import dataclass

from storage import AuditEntry, ErasedRows

DELETE_OPERATION = "delete_session"


@dataclass
class RequestRecord:
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
