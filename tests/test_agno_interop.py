"""Sessions written by the real ``agno`` package, erased through our HTTP API, then read
back by Agno's own code: nothing of the conversation is left, everything else is intact."""

from __future__ import annotations

import json
import unicodedata
import uuid
import warnings
from dataclasses import replace
from datetime import datetime, timezone
from urllib.parse import quote

import pytest
from sqlalchemy import func, literal, select, text

from agentos_sessions.settings import DatabaseSettings
from storage import Database
from storage.schema import AgentfsPath, agentfs_path
from tests.support import AUTH, rows_mentioning

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from agno.db.postgres import PostgresDb
    from agno.db.sqlite import SqliteDb
    from agno.fs import FileSystem
    from agno.fs.db import DbFileSystem
    from agno.models.message import Message
    from agno.offload import ResultStore
    from agno.run.agent import RunOutput
    from agno.session import AgentSession
    from agno.tracing.schemas import Span, Trace

pytestmark = pytest.mark.usefixtures("backend")


def write_conversation(db, session_id: str, *, runs: int = 3) -> None:
    """Everything Agno keeps for one conversation, written through Agno's own API."""
    now = int(datetime.now(timezone.utc).timestamp())
    db.upsert_session(AgentSession(
        session_id=session_id, agent_id="support-agent", user_id="user-1",
        session_data={"session_state": {"order": f"order of {session_id}"}}, created_at=now,
    ))  # fmt: skip
    for index in range(runs):
        db.upsert_run(
            RunOutput(run_id=f"{session_id}-run-{index}", session_id=session_id, agent_id="support-agent",
                      content=f"answer {index}", messages=[Message(role="user", content=f"question {index}")]),
            session_id=session_id, user_id="user-1", run_index=index,
        )  # fmt: skip
    db.append_transcript_entries("claude-code", "project", f"ext-{session_id}",
                                 [{"uuid": str(uuid.uuid4()), "text": "verbatim turn"}], agno_session_id=session_id)
    db.upsert_compaction({"compaction_id": f"{session_id}-fold", "session_id": session_id,
                          "archived_messages": json.dumps([{"role": "user", "content": "folded"}]),
                          "summary": "folded", "created_at": now})  # fmt: skip
    namespace = f"tool-results-{uuid.uuid4().hex[:6]}"
    payload_path = f"{session_id}/search.txt"
    DbFileSystem(db=db).write(namespace, payload_path, "the full tool output")
    db.upsert_tool_result({
        "result_id": f"{session_id}-result", "namespace": namespace, "path": payload_path,
        "session_id": session_id, "run_id": f"{session_id}-run-0", "tool_call_id": "call-1",
        "tool_name": "search", "args_hash": "h", "content_type": "text/plain", "size_bytes": 20,
        "line_count": 1, "preview": "the full", "created_at": now,
    })  # fmt: skip
    moment = datetime.now(timezone.utc)
    db.upsert_trace(Trace(
        trace_id=f"{session_id}-trace", name="agent.run", status="OK", start_time=moment, end_time=moment,
        duration_ms=1, total_spans=1, error_count=0, run_id=f"{session_id}-run-0", session_id=session_id,
        user_id="user-1", agent_id="support-agent", team_id=None, workflow_id=None, created_at=moment,
    ))  # fmt: skip
    db.create_span(Span(
        span_id=f"{session_id}-span", trace_id=f"{session_id}-trace", parent_span_id=None, name="llm",
        span_kind="INTERNAL", status_code="OK", status_message=None, start_time=moment, end_time=moment,
        duration_ms=1, attributes={"input": "question 0"}, created_at=moment,
    ))  # fmt: skip


def offload_results(db, session_id: str, run_ids: list[str]) -> list[str]:
    """A tool result per run, through Agno's own ``ResultStore``: its payload written by
    AgentFS, which stores the path normalised. Returns the result ids."""
    store = ResultStore(db=db, threshold_chars=1)
    return [
        store.offload(session_id=session_id, run_id=run_id, tool_call_id="call-1", tool_name="search",
                      tool_args={"q": run_id}, output=f"the full tool output of {run_id}\n" * 3).result_id
        for run_id in run_ids
    ]  # fmt: skip


def payloads_in(db, namespaces: set[str]) -> int:
    """Rows of AgentFS's table in these namespaces, whatever their path."""
    fs = DbFileSystem(db=db)
    with db.db_engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(fs.table).where(fs.table.c.namespace.in_(namespaces))).scalar()


def residue(db, session_id: str, settings: DatabaseSettings) -> dict[str, int]:
    schemas = (settings.schema, "fs") if settings.schema else (None,)
    return rows_mentioning(db.db_engine, session_id, schemas=schemas)


def assert_agno_sees_it(db, session_id: str, runs: int) -> None:
    session = db.get_session(session_id, session_type="agent")
    assert session is not None and len(session.runs or []) == runs


@pytest.mark.parametrize("erase_traces", [False, True], ids=["default-scope", "erase-traces"])
def test_agno_session_is_gone_for_agno_and_others_are_intact(agno_db, make_client, erase_traces):
    db, settings = agno_db("default")
    doomed, kept = "doomed-" + uuid.uuid4().hex, "kept-" + uuid.uuid4().hex
    write_conversation(db, doomed)
    write_conversation(db, kept)
    assert_agno_sees_it(db, doomed, runs=3)
    kept_before = residue(db, kept, settings)
    client = make_client(databases=(settings,), erase_traces=erase_traces)

    assert client.delete(f"/sessions/{doomed}", headers=AUTH).status_code == 204

    assert db.get_session(doomed, session_type="agent") is None
    assert db.get_runs(session_id=doomed) in ([], None)
    assert db.get_compactions_for_session(doomed) == []
    assert db.get_tool_results_for_session(doomed) == []
    left = residue(db, doomed, settings)
    if erase_traces:
        assert left == {}
    else:
        # Traces are Agno's observability data; its own delete keeps them too.
        prefix = f"{settings.schema}." if settings.schema else ""
        assert set(left) == {f"{prefix}agno_traces", f"{prefix}agno_spans"}
    assert_agno_sees_it(db, kept, runs=3)
    assert residue(db, kept, settings) == kept_before
    assert client.delete(f"/sessions/{doomed}", headers=AUTH).status_code == 404


def test_legacy_runs_column_of_agno_2x_is_erased_with_the_session(agno_db, make_client, backend):
    db, settings = agno_db("default")
    session_id = "legacy-" + uuid.uuid4().hex
    write_conversation(db, session_id, runs=1)
    legacy_runs = [RunOutput(run_id=f"{session_id}-old-{i}", session_id=session_id, agent_id="support-agent",
                             content=f"2.x answer {i}").to_dict() for i in range(2)]  # fmt: skip
    table = f'"{settings.schema}".agno_sessions' if settings.schema else "agno_sessions"
    column_type = "JSONB" if backend == "postgres" else "JSON"
    with db.db_engine.begin() as conn:
        conn.execute(text(f"ALTER TABLE {table} ADD COLUMN runs {column_type}"))
        conn.execute(text(f"UPDATE {table} SET runs = :runs WHERE session_id = :sid"),
                     {"runs": json.dumps(legacy_runs), "sid": session_id})  # fmt: skip
    # A fresh Agno handle, so it reflects the column added behind its back; Agno 3.x then
    # merges the legacy blob with the runs table: both layouts at once.
    if backend == "postgres":
        db = PostgresDb(db_engine=db.db_engine, db_schema=settings.schema, id=settings.id)
    else:
        db = SqliteDb(db_engine=db.db_engine, id=settings.id)
    assert_agno_sees_it(db, session_id, runs=3)
    client = make_client(databases=(settings,), erase_traces=True)

    assert client.delete(f"/sessions/{session_id}", headers=AUTH).status_code == 204

    assert db.get_session(session_id, session_type="agent") is None
    assert residue(db, session_id, settings) == {}


def test_renamed_session_table_and_two_databases(agno_db, make_client):
    primary, primary_settings = agno_db("primary")
    teams, teams_settings = agno_db("teams", session_table="team_sessions")
    assert teams.runs_table_name == "team_sessions_runs"
    assert teams_settings.session_tables[0].runs_table == "team_sessions_runs"
    shared_id = "shared-" + uuid.uuid4().hex
    write_conversation(primary, shared_id)
    write_conversation(teams, shared_id)
    client = make_client(databases=(primary_settings, teams_settings), erase_traces=True)

    assert client.delete(f"/sessions/{shared_id}", headers=AUTH).status_code == 400
    response = client.delete(f"/sessions/{shared_id}?db_id=teams&table=team_sessions", headers=AUTH)
    assert response.status_code == 204

    assert teams.get_session(shared_id, session_type="agent") is None
    # On PostgreSQL both Agno databases share the fs.agno_fs payload table, where the
    # primary database's payload for this id rightly stays.
    assert residue(teams, shared_id, teams_settings) == ({"fs.agno_fs": 1} if teams_settings.schema else {})
    assert_agno_sees_it(primary, shared_id, runs=3)


def test_agno_writes_into_tables_this_service_created(agno_db, make_client):
    """The default first start creates Agno's layout; Agno must be able to use it as is."""
    _, settings = agno_db("default")
    client = make_client(databases=(replace(settings, create_tables=True),))
    # The agent's own Agno handle, with its own engine, as in production.
    if settings.schema:
        db = PostgresDb(db_url=settings.url, db_schema=settings.schema, id="default")
    else:
        db = SqliteDb(db_url=settings.url, id="default")
    try:
        session_id = "fresh-" + uuid.uuid4().hex
        write_conversation(db, session_id)
        assert_agno_sees_it(db, session_id, runs=3)

        assert client.delete(f"/sessions/{session_id}", headers=AUTH).status_code == 204

        assert db.get_session(session_id, session_type="agent") is None
        assert db.get_runs(session_id=session_id) in ([], None)
    finally:
        db.db_engine.dispose()


NFC, NFD = "caf\u00e9", "cafe\u0301"  # one word, two ways Unicode spells it


def test_ids_in_either_unicode_form_are_erased_with_every_payload_and_only_their_own(agno_db, make_client):
    """Agno keeps ids as given; AgentFS stores a payload's path in NFC. Two sessions whose
    ids differ only in form are two sessions, and each erase takes exactly its own."""
    db, settings = agno_db("default")
    unique = uuid.uuid4().hex[:8]
    sessions = {form: f"{spelled}-{unique}" for form, spelled in (("nfc", NFC), ("nfd", NFD))}
    run_ids = [f"run0:{NFD}.{unique}", f"run1:{NFC}.{unique}"]  # unique: PostgreSQL shares fs.agno_fs
    payloads = len(run_ids) + 1  # and write_conversation's own
    results, namespaces = {}, {}
    for form, session_id in sessions.items():
        write_conversation(db, session_id, runs=1)
        results[form] = offload_results(db, session_id, run_ids)
        namespaces[form] = {row["namespace"] for row in db.get_tool_results_for_session(session_id)}
        assert payloads_in(db, namespaces[form]) == payloads
    client = make_client(databases=(settings,), erase_traces=True)
    store = ResultStore(db=db)

    for erased, kept in (("nfd", "nfc"), ("nfc", None)):
        response = client.delete(f"/sessions/{quote(sessions[erased], safe='')}", headers=AUTH)
        assert response.status_code == 204
        assert db.get_session(sessions[erased], session_type="agent") is None
        assert payloads_in(db, namespaces[erased]) == 0
        assert residue(db, sessions[erased], settings) == {}
        if kept:
            assert_agno_sees_it(db, sessions[kept], runs=1)
            assert all(run_id in store.read(result_id).text for result_id, run_id in zip(results[kept], run_ids))
            assert payloads_in(db, namespaces[kept]) == payloads
    # The run ids are in payload paths too, there in NFC: no form of them is left anywhere.
    for run_id in run_ids:
        for spelled in {unicodedata.normalize(form, run_id) for form in ("NFC", "NFD")}:
            assert residue(db, spelled, settings) == {}


@pytest.mark.parametrize("path", [f"results/run0:{NFD}/r.txt", f"/{NFD}//a///b.txt", "plain/path.txt", f"{NFC}/x"])
def test_the_service_computes_a_payload_path_as_agentfs_stores_it(agno_db, path):
    db, settings = agno_db("default")
    namespace = f"ns-{uuid.uuid4().hex[:8]}"
    FileSystem(backend=DbFileSystem(db=db), namespace=namespace).write(path, "content")
    table = DbFileSystem(db=db).table
    with db.db_engine.connect() as conn:
        stored = conn.execute(select(table.c.path).where(table.c.namespace == namespace)).scalar_one()
    database = Database(settings)
    try:
        with database.engine.connect() as conn:
            in_sql = conn.execute(select(AgentfsPath(literal(path)))).scalar_one()
    finally:
        database.dispose()
    assert agentfs_path(path) == in_sql == stored
