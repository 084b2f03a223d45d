"""The audit trail: one JSON line per delete attempt, and (when configured) one row per
erasure in the erase's own transaction."""

from __future__ import annotations

import json
import logging

import pytest
from sqlalchemy import text

from agentos_sessions.observability import AUDIT_LOGGER, REQUEST_ID_HEADER
from agentos_sessions.security import key_fingerprint
from storage.audit import audit_table
from tests.support import AUTH, KEY, AgnoData, assert_spec_error

pytestmark = pytest.mark.usefixtures("backend")

AUDIT_TABLE = "agentos_sessions_audit"
FIELDS = {
    "event", "time", "request_id", "caller", "db_id", "table", "session_id",
    "outcome", "status", "rows_erased", "duration_ms",
}  # fmt: skip


@pytest.fixture
def audit_lines(caplog):
    caplog.set_level(logging.INFO, logger=AUDIT_LOGGER)

    def lines() -> list[dict]:
        return [json.loads(r.getMessage()) for r in caplog.records if r.name == AUDIT_LOGGER]

    return lines


def seeded(client) -> tuple[AgnoData, str]:
    database = next(iter(client.storage.databases.values()))
    data = AgnoData(database, database.settings.default_session_table)
    data.create_all()
    return data, data.add_session(runs=2)


def test_one_line_per_attempt_with_outcome_and_counts(make_client, audit_lines, caplog):
    client = make_client()
    data, session_id = seeded(client)

    erased = client.delete(f"/sessions/{session_id}", headers=AUTH)
    missing = client.delete(f"/sessions/{session_id}", headers={**AUTH, REQUEST_ID_HEADER: "req-2"})
    refused = client.delete(f"/sessions/{session_id}", headers={"Authorization": "Bearer wrong"})
    unknown_db = client.delete(f"/sessions/{session_id}?db_id=elsewhere", headers=AUTH)
    client.get("/health")  # not a delete: no audit line

    first, second, third, fourth = lines = audit_lines()
    assert len(lines) == 4
    assert all(set(line) == FIELDS for line in lines)
    assert all(line["event"] == "session.delete" and line["session_id"] == session_id for line in lines)
    assert [line["request_id"] for line in lines] == [
        r.headers[REQUEST_ID_HEADER] for r in (erased, missing, refused, unknown_db)
    ]
    assert second["request_id"] == "req-2"

    assert (first["outcome"], first["status"], first["db_id"], first["table"]) == ("erased", 204, "default", "agno_sessions")
    assert first["caller"] == key_fingerprint(KEY)
    assert first["rows_erased"]["sessions"] == 1 and first["rows_erased"]["runs"] == 2
    assert first["rows_erased"]["transcripts"] == 1 and first["rows_erased"]["tool_result_payloads"] == 1

    assert (second["outcome"], second["status"], second["rows_erased"]) == ("not_found", 404, {})
    assert (third["outcome"], third["status"], third["caller"]) == ("UNAUTHENTICATED", 401, None)
    # An unknown database is an error of the request, not a session that was looked for.
    assert (fourth["outcome"], fourth["status"], fourth["db_id"]) == ("NOT_FOUND", 404, "elsewhere")
    assert all(line["duration_ms"] >= 0 for line in lines)

    logged = caplog.text
    assert KEY not in logged and "wrong" not in logged
    # Conversation content never reaches the log, only identifiers and counts.
    assert f"secret of {session_id}" not in logged and "hello" not in logged


def test_validation_errors_are_audited_with_their_error_code(make_client, audit_lines):
    client = make_client()
    response = client.delete("/sessions/x?db_id=a&db_id=b", headers=AUTH)
    assert_spec_error(response, 422, "VALIDATION_ERROR")
    (line,) = audit_lines()
    assert line["outcome"] == "VALIDATION_ERROR" and line["caller"] == key_fingerprint(KEY)


def test_long_caller_values_are_clipped_in_the_log(make_client, audit_lines):
    client = make_client()
    client.delete(f"/sessions/{'s' * 5000}?db_id={'d' * 5000}", headers=AUTH)
    (line,) = audit_lines()
    assert len(line["session_id"]) < 600 and line["session_id"].endswith("(truncated)")
    assert len(line["db_id"]) < 600


def audit_rows(database) -> list[dict]:
    table = audit_table(database.ref(AUDIT_TABLE))
    with database.engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(table.select().order_by(table.c.id))]


def test_audit_table_gets_one_row_per_erasure_and_none_for_not_found(make_client, audit_lines):
    client = make_client(audit_table=AUDIT_TABLE)
    data, session_id = seeded(client)
    database = data.database

    erased = client.delete(f"/sessions/{session_id}", headers=AUTH)
    assert erased.status_code == 204
    assert client.delete(f"/sessions/{session_id}", headers=AUTH).status_code == 404
    assert client.delete("/sessions/never-existed", headers=AUTH).status_code == 404

    (row,) = audit_rows(database)
    assert row["request_id"] == erased.headers[REQUEST_ID_HEADER]
    assert (row["db_id"], row["session_table"], row["session_id"]) == ("default", "agno_sessions", session_id)
    assert row["caller"] == key_fingerprint(KEY)
    assert row["rows_erased"] == audit_lines()[0]["rows_erased"]
    assert row["erased_at_ms"] > 0


def test_no_erasure_without_its_audit_row(make_client, audit_lines):
    """If the audit row cannot be written, the erase is undone with it."""
    client = make_client(audit_table=AUDIT_TABLE)
    data, session_id = seeded(client)
    before = data.counts(session_id)
    ref = data.database.ref(AUDIT_TABLE)
    with data.database.engine.begin() as conn:
        conn.execute(text(f'DROP TABLE {ref.schema + "." if ref.schema else ""}{ref.name}'))

    response = client.delete(f"/sessions/{session_id}", headers=AUTH)

    assert_spec_error(response, 500, "INTERNAL_SERVER_ERROR")
    assert data.counts(session_id) == before
    (line,) = audit_lines()
    assert (line["outcome"], line["rows_erased"]) == ("INTERNAL_SERVER_ERROR", {})


def test_without_the_setting_no_audit_table_is_created(make_client):
    client = make_client()
    database = next(iter(client.storage.databases.values()))
    with database.engine.connect() as conn:
        assert not database.existing(conn, [database.ref(AUDIT_TABLE)])
