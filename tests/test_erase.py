"""The erase, alone and in batches, on SQLite and PostgreSQL: what goes, what stays, and
answers exactly as separate transactions in that order would give."""

from __future__ import annotations

import threading
from contextlib import contextmanager

import pytest
from sqlalchemy import event, inspect, select, text

import storage.erase
from storage import AuditEntry, erase_session
from storage.audit import audit_table, create_audit_table
from storage.erase import EraseRequest, erase_batch
from tests.support import CONVERSATION_KINDS, AgnoData, conversation_gone, legacy_data_without_foreign_key, unique_ids

pytestmark = pytest.mark.usefixtures("backend")


@pytest.fixture
def database(make_database):
    return make_database()


def erase(database, session_id, **kwargs):
    return erase_session(database, database.settings.default_session_table, session_id, **kwargs)


def erase_together(database, session_ids, tables=None, **kwargs):
    """One transaction erasing ``session_ids`` in that order, as the writer runs a batch;
    ``tables`` names a sessions table for some of them."""
    default = database.settings.default_session_table
    requests = [EraseRequest((tables or {}).get(sid, default), sid) for sid in session_ids]
    return database.write(lambda conn: erase_batch(conn, database, requests, **kwargs))


def test_erase_reports_what_it_erased(database, data):
    session_id = data.add_session(runs=3)
    erased = erase(database, session_id, erase_traces=True)
    assert erased.counts == {
        "runs": 3, "transcripts": 1, "compactions": 1, "tool_result_payloads": 1, "tool_results": 1,
        "spans": 1, "traces": 1, "sessions": 1,
    }  # fmt: skip
    assert set(data.counts(session_id).values()) == {0}


def test_erase_without_trace_scope_leaves_traces(database, data):
    session_id = data.add_session()
    erased = erase(database, session_id)
    assert "traces" not in erased.counts and "spans" not in erased.counts
    left = data.counts(session_id)
    assert [left[k] for k in CONVERSATION_KINDS] == [0] * len(CONVERSATION_KINDS)
    assert (left["traces"], left["spans"]) == (1, 1)


def add_orphan_transcript(data, session_id):
    with data.database.engine.begin() as conn:
        conn.execute(data.side["transcripts"].insert(), {
            "framework": "f", "project_key": "p", "session_id": "ext", "subpath": "", "position": 0,
            "entry": "e", "agno_session_id": session_id, "created_at": 1})  # fmt: skip


def test_not_found_changes_nothing_even_when_orphans_share_the_id(database, data):
    add_orphan_transcript(data, "orphan")
    assert erase(database, "orphan") is None
    assert data.counts("orphan")["transcripts"] == 1


def test_missing_tables_are_skipped_and_never_created(database):
    agno = AgnoData(database, database.settings.default_session_table)
    agno.create_all(with_side_tables=False)
    session_id = agno.add_session(everything=False)
    assert erase(database, session_id, erase_traces=True).counts == {"runs": 2, "sessions": 1}
    names = set(inspect(database.engine).get_table_names(schema=agno.sessions.schema))
    assert names == {"agno_sessions", "agno_runs"}


def test_no_sessions_table_means_no_such_session(database):
    assert erase(database, "anything") is None


def test_tables_created_after_start_are_found(database):
    agno = AgnoData(database, database.settings.default_session_table)
    agno.create_all(with_side_tables=False)
    assert erase(database, agno.add_session(everything=False)).counts == {"runs": 2, "sessions": 1}
    # Agno creates its side tables lazily, after this process has looked once.
    agno.create_all()
    later = agno.add_session()
    assert erase(database, later).counts == {
        "runs": 2, "transcripts": 1, "compactions": 1, "tool_result_payloads": 1, "tool_results": 1, "sessions": 1,
    }  # fmt: skip
    assert [agno.counts(later)[k] for k in CONVERSATION_KINDS] == [0] * len(CONVERSATION_KINDS)


def test_a_table_dropped_after_being_seen_does_not_break_erasing(database, data):
    erase(database, data.add_session())
    with database.engine.begin() as conn:
        conn.execute(text(f"DROP TABLE {data.side['compactions'].fullname}"))
    session_id = data.add_session()
    erased = erase(database, session_id)
    assert "compactions" not in erased.counts
    assert data.counts(session_id)["sessions"] == 0


def test_runs_table_without_foreign_key_is_still_erased(make_database):
    agno = legacy_data_without_foreign_key(make_database)
    database, custom = agno.database, agno.database.settings.default_session_table
    session_id = agno.add_session(everything=False)
    assert inspect(database.engine).get_foreign_keys(custom.runs_table, schema=agno.sessions.schema) == []
    assert erase_session(database, custom, session_id).counts == {"runs": 2, "sessions": 1}
    assert agno.counts(session_id)["runs"] == 0


def test_ids_with_nul_are_handled_per_backend(database, data, backend):
    if backend == "postgres":
        # PostgreSQL text cannot hold NUL, so no such session can exist.
        assert erase(database, "a\x00b") is None
    else:
        data.add_sessions(["a\x00b", "a"], everything=False)
        assert erase(database, "a\x00b") is not None
        assert data.counts("a")["sessions"] == 1, "a prefix of the id is another session"


def test_concurrent_erases_of_one_session_succeed_exactly_once(database, data):
    session_id = data.add_session(runs=5)
    results = []
    barrier = threading.Barrier(6)

    def one():
        barrier.wait()
        results.append(erase(database, session_id))

    threads = [threading.Thread(target=one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(r is not None for r in results) == 1
    assert data.counts(session_id)["runs"] == 0


@contextmanager
def statements_recorded(database, with_rows: list[str]):
    """Every statement run meanwhile; in ``with_rows``, those that returned a result set."""
    seen: list[str] = []

    def record(_conn, cursor, statement, *_args):
        seen.append(statement)
        if cursor.description is not None:
            with_rows.append(statement)

    event.listen(database.engine, "after_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(database.engine, "after_cursor_execute", record)


def test_a_batch_is_one_set_of_statements_with_exact_answers(database, data):
    ids = data.add_sessions(unique_ids("set", 12), runs=3)
    asked = ids * 2 + ["missing-1", ids[0], "missing-2"]
    erase(database, "warm-up")  # the table look-up, once per schema, is not the batch's
    with_rows: list[str] = []

    with statements_recorded(database, with_rows) as seen:
        results = erase_together(database, asked)

    # One DELETE per table however many erases the batch holds: runs, transcripts,
    # compactions, payloads, tool results, sessions.
    assert sum(s.upper().count("DELETE FROM") for s in seen) == 6, seen
    if database.dialect == "sqlite":
        # sqlite3 hands the GIL over for every row it steps through, so a batch reads
        # one single-row result: the survey, which carries the schema version too.
        assert len(with_rows) == 1 and len(seen) == 8, seen  # BEGIN, the survey, six deletes
        assert not any(s.lstrip().upper().startswith("DELETE") for s in with_rows), with_rows
    else:
        # Each statement is a round trip: the locked read, which also looks up the
        # tables not seen yet, then one statement deleting from every table.
        assert len(seen) == 2, seen
    expected = {"runs": 3, "transcripts": 1, "compactions": 1, "tool_result_payloads": 1, "tool_results": 1, "sessions": 1}
    for session_id in ids:
        outcomes = [results[i] for i, sid in enumerate(asked) if sid == session_id]
        # The first ask erases it; every later one finds it gone, as serially.
        assert outcomes[0] is not None and outcomes[0].counts == expected, outcomes
        assert all(r is None for r in outcomes[1:]), outcomes
        assert conversation_gone(data, session_id)
    assert results[len(ids) * 2] is None and results[-1] is None


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_transaction_takes_sessions_up_to_its_row_budget_and_leaves_the_rest_whole(database, data, monkeypatch):
    """SQLite has one write lock per file: a batch of very long sessions is committed in
    turns, so that nobody waiting for the lock waits past the busy timeout."""
    sample, big, small, other, last = data.add_sessions(unique_ids("budget", 5), runs=3)
    whole = data.counts(small)
    per_session = sum(erase(database, sample).counts.values())
    monkeypatch.setattr(storage.erase, "MAX_ROWS_PER_TRANSACTION", 2 * per_session - 1)

    first = erase_together(database, [big, "never-there", small, big, other])

    # big fits; the missing id is answered; small would go over, so it and all after wait.
    assert len(first) == 2 and first[0].counts["sessions"] == 1 and first[1] is None
    assert conversation_gone(data, big) and data.counts(small) == whole and data.counts(other) == whole
    second = erase_together(database, [small, big, other])
    assert len(second) == 2 and second[0].counts["sessions"] == 1 and second[1] is None
    assert data.counts(other) == whole

    monkeypatch.setattr(storage.erase, "MAX_ROWS_PER_TRANSACTION", 1)
    (alone,) = erase_together(database, [other, last])  # the first goes, whatever its size
    assert alone.counts["sessions"] == 1 and conversation_gone(data, other) and data.counts(last) == whole


def test_not_found_in_a_batch_changes_nothing_orphans_included(database, data):
    orphan, *real = unique_ids("set-orphan", 3)
    add_orphan_transcript(data, orphan)
    data.add_sessions(real, runs=2)

    results = erase_together(database, [real[0], orphan, real[1]])

    assert results[1] is None
    assert data.counts(orphan)["transcripts"] == 1
    assert results[0].counts["sessions"] == results[2].counts["sessions"] == 1
    assert conversation_gone(data, real[0]) and conversation_gone(data, real[1])


def test_erases_of_different_tables_in_one_batch_keep_their_order(make_database):
    database = make_database(session_tables=("agno_sessions", "team_sessions"))
    agent_table, team_table = database.settings.session_tables
    agent, team = AgnoData(database, agent_table), AgnoData(database, team_table)
    agent.create_all(with_side_tables=False)
    team.create_all(with_side_tables=False)
    a1, a2, a3, t1, t2 = unique_ids("mix", 5)
    agent_ids = agent.add_sessions([a1, a2, a3], runs=1)
    team_ids = team.add_sessions([t1, t2], runs=4)
    tables = {sid: team_table for sid in team_ids}
    asked = [a1, a2, t1, a3, t2, t1, a1]

    results = erase_together(database, asked, tables)

    assert [r.counts["runs"] if r is not None else None for r in results] == [1, 1, 4, 1, 4, None, None]
    assert all(conversation_gone(agent, sid) for sid in agent_ids) and all(conversation_gone(team, sid) for sid in team_ids)


def test_each_erasure_in_a_batch_gets_its_audit_row_and_a_not_found_none(database, data):
    with database.transaction() as conn:
        create_audit_table(conn, database.ref("erasures"))
    ids = data.add_sessions(unique_ids("audited", 2), runs=1)
    table = database.settings.default_session_table
    requests = [EraseRequest(table, sid, AuditEntry(f"req-{sid}", "caller")) for sid in [*ids, "never-there"]]

    database.write(lambda conn: erase_batch(conn, database, requests, audit_table="erasures"))

    rows = audit_table(database.ref("erasures"))
    with database.engine.connect() as conn:
        recorded = conn.execute(select(rows.c.request_id, rows.c.session_id, rows.c.rows_erased)).all()
    assert sorted((r.request_id, r.session_id) for r in recorded) == [(f"req-{sid}", sid) for sid in ids]
    assert all(r.rows_erased["runs"] == 1 and r.rows_erased["sessions"] == 1 for r in recorded)
