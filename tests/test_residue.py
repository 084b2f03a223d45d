"""Residue and orphans, on SQLite and PostgreSQL: the scan finds every row that holds an id
and nothing else; orphans are found by kind, swept one id per transaction, audited, and a
session that came back keeps its rows."""

from __future__ import annotations

import pytest
from sqlalchemy import insert, select

from storage import AuditEntry, erase_session
from storage.audit import audit_table
from storage.residue import Orphans, find_orphans, scan, sweep_orphans
from tests.support import AgnoData, legacy_data_without_foreign_key, now, orphan_session, unique_ids

pytestmark = pytest.mark.usefixtures("backend")

# What AgnoData writes under a session, by (table, column): where the id must be found.
HOLDERS = {
    ("agno_sessions", "session_id"): 1, ("agno_sessions", "session_data"): 1,
    ("agno_runs", "run_id"): 2, ("agno_runs", "session_id"): 2,
    ("agno_transcripts", "session_id"): 1, ("agno_transcripts", "agno_session_id"): 1,
    ("agno_compactions", "compaction_id"): 1, ("agno_compactions", "session_id"): 1,
    ("agno_tool_results", "result_id"): 1, ("agno_tool_results", "path"): 1,
    ("agno_tool_results", "session_id"): 1, ("agno_tool_results", "run_id"): 1,
    ("agno_fs", "path"): 1,
    ("agno_traces", "trace_id"): 1, ("agno_traces", "session_id"): 1,
    ("agno_spans", "span_id"): 1, ("agno_spans", "trace_id"): 1,
}  # fmt: skip
SIDE_KINDS = {"transcripts": 1, "compactions": 1, "tool_result_payloads": 1, "tool_results": 1}
TRACE_KINDS = {"spans": 1, "traces": 1}


@pytest.fixture
def database(make_database):
    return make_database()


def found(database, session_id) -> dict[tuple[str, str], int]:
    return {(r.table.rpartition(".")[2], r.column): r.rows for r in scan(database, [session_id])}


# Quotes, a backslash and non-ASCII are written escaped into JSON; an upper-case id must
# not match its lower-case twin, as SQLite's LIKE would.
@pytest.mark.parametrize("spelled", ["plain", 'Sesi\u00f3n "Q" \\ \U0001f600'])
def test_scan_finds_every_row_that_holds_the_id_and_nothing_else(database, data, spelled):
    session_id, other = unique_ids(spelled, 1)[0], unique_ids("other", 1)[0]
    data.add_sessions(list(dict.fromkeys([session_id, session_id.lower(), other])))
    assert found(database, session_id) == HOLDERS
    assert found(database, session_id.lower()) == HOLDERS

    erase_session(database, database.settings.default_session_table, session_id, erase_traces=True)

    assert scan(database, [session_id]) == []
    assert found(database, other) == HOLDERS


def test_orphans_are_found_by_kind_and_swept_with_their_audit_row(database, data):
    orphaned, kept = unique_ids("orphaned", 1)[0], data.add_session()
    orphan_session(data, orphaned)
    kept_before = data.counts(kept)

    assert find_orphans(database) == [Orphans(database.id, orphaned, SIDE_KINDS)]
    assert find_orphans(database, erase_traces=True) == [Orphans(database.id, orphaned, SIDE_KINDS | TRACE_KINDS)]

    swept = sweep_orphans(database, [orphaned, kept], erase_traces=True, audit_table="erasures",
                          audit=AuditEntry("sweep-1", "cli"))  # fmt: skip

    assert {session_id: rows.counts for session_id, rows in swept.items()} == {orphaned: SIDE_KINDS | TRACE_KINDS}
    assert set(data.counts(orphaned).values()) == {0}
    assert data.counts(kept) == kept_before
    assert find_orphans(database, erase_traces=True) == []
    rows = audit_table(database.ref("erasures"))
    with database.engine.connect() as conn:
        recorded = conn.execute(select(rows.c.request_id, rows.c.caller, rows.c.session_id, rows.c.rows_erased)).all()
    assert [tuple(r) for r in recorded] == [("sweep-1", "cli", orphaned, SIDE_KINDS | TRACE_KINDS)]
    # The audit row keeps the id by design: the scan skips the audit table it is told of.
    assert [(r.table.rpartition(".")[2], r.column) for r in scan(database, [orphaned])] == [("erasures", "session_id")]
    assert scan(database, [orphaned], audit_table="erasures") == []


def test_orphan_runs_of_a_runs_table_without_a_foreign_key(make_database):
    agno = legacy_data_without_foreign_key(make_database)
    orphan_session(agno, "left-behind")
    assert find_orphans(agno.database) == [Orphans(agno.database.id, "left-behind", {"runs": 2})]
    assert sweep_orphans(agno.database, ["left-behind"])["left-behind"].counts == {"runs": 2}
    assert agno.counts("left-behind")["runs"] == 0


def test_runs_two_sessions_tables_share_are_kept_while_either_has_their_session(make_database):
    agno = legacy_data_without_foreign_key(make_database, "team_sessions")
    team = AgnoData(agno.database, agno.database.settings.session_tables[1])
    live = team.add_session("a-team-session", everything=False)
    orphan_session(agno, "left-behind")

    assert find_orphans(agno.database) == [Orphans(agno.database.id, "left-behind", {"runs": 2})]
    assert sweep_orphans(agno.database, ["left-behind", live]).keys() == {"left-behind"}
    assert team.counts(live)["runs"] == 2


def test_a_session_that_came_back_keeps_its_rows(database, data):
    session_id, = unique_ids("back", 1)
    orphan_session(data, session_id)
    assert [o.session_id for o in find_orphans(database)] == [session_id]
    with database.engine.begin() as conn:
        conn.execute(insert(data.sessions), {"session_id": session_id, "session_type": "agent", "created_at": now()})
    before = data.counts(session_id)

    assert sweep_orphans(database, [session_id], audit_table="erasures", audit=AuditEntry("sweep-2", None)) == {}

    assert data.counts(session_id) == before
