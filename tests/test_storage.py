"""The erase transaction, table discovery and target selection, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import Column, MetaData, Table, inspect, text
from sqlalchemy.schema import CreateSchema

from agentos_sessions.settings import SessionTable, Settings
from storage import DatabaseRequired, Storage, UnknownDatabase, UnknownTable, erase_session
from tests.support import CONVERSATION_KINDS, AgnoData

pytestmark = pytest.mark.usefixtures("backend")


@pytest.fixture
def database(make_database):
    return make_database()


def test_erase_reports_what_it_erased(database, data):
    session_id = data.add_session(runs=3)
    erased = erase_session(database, database.settings.default_session_table, session_id, erase_traces=True)
    assert erased.counts == {
        "runs": 3, "transcripts": 1, "compactions": 1, "tool_result_payloads": 1, "tool_results": 1,
        "spans": 1, "traces": 1, "sessions": 1,
    }  # fmt: skip
    assert set(data.counts(session_id).values()) == {0}


def test_erase_without_trace_scope_leaves_traces(database, data):
    session_id = data.add_session()
    erased = erase_session(database, database.settings.default_session_table, session_id)
    assert "traces" not in erased.counts and "spans" not in erased.counts
    left = data.counts(session_id)
    assert [left[k] for k in CONVERSATION_KINDS] == [0] * len(CONVERSATION_KINDS)
    assert (left["traces"], left["spans"]) == (1, 1)


def test_not_found_rolls_back_even_when_orphans_share_the_id(database, data):
    orphan_id = "orphan"
    with database.engine.begin() as conn:
        conn.execute(data.side["transcripts"].insert(), {
            "framework": "f", "project_key": "p", "session_id": "ext", "subpath": "", "position": 0,
            "entry": "e", "agno_session_id": orphan_id, "created_at": 1})  # fmt: skip
    assert erase_session(database, database.settings.default_session_table, orphan_id) is None
    assert data.counts(orphan_id)["transcripts"] == 1


# Group commit erases through its own batch path, which discovers tables its own way.
either_path = pytest.mark.parametrize("group_commit", [False, True], ids=["alone", "grouped"])


@either_path
def test_missing_tables_are_skipped_and_never_created(make_database, group_commit):
    database = make_database(group_commit=group_commit)
    agno = AgnoData(database, database.settings.default_session_table)
    agno.create_all(with_side_tables=False)
    session_id = agno.add_session(everything=False)
    erased = erase_session(database, database.settings.default_session_table, session_id, erase_traces=True)
    assert erased.counts == {"runs": 2, "sessions": 1}
    names = set(inspect(database.engine).get_table_names(schema=agno.sessions.schema))
    assert names == {"agno_sessions", "agno_runs"}


@either_path
def test_tables_created_after_start_are_found(make_database, group_commit):
    database = make_database(group_commit=group_commit)
    agno = AgnoData(database, database.settings.default_session_table)
    agno.create_all(with_side_tables=False)
    first = agno.add_session(everything=False)
    assert erase_session(database, database.settings.default_session_table, first).counts == {"runs": 2, "sessions": 1}
    # Agno creates its side tables lazily, after this process has looked once.
    agno.create_all()
    second = agno.add_session()
    erase_session(database, database.settings.default_session_table, second)
    assert [agno.counts(second)[k] for k in CONVERSATION_KINDS] == [0] * len(CONVERSATION_KINDS)


@either_path
def test_a_table_dropped_after_being_seen_does_not_break_erasing(make_database, group_commit):
    database = make_database(group_commit=group_commit)
    data = AgnoData(database, database.settings.default_session_table)
    data.create_all()
    erase_session(database, database.settings.default_session_table, data.add_session())
    with database.engine.begin() as conn:
        conn.execute(text(f"DROP TABLE {data.side['compactions'].fullname}"))
    session_id = data.add_session()
    erased = erase_session(database, database.settings.default_session_table, session_id)
    assert "compactions" not in erased.counts
    assert data.counts(session_id)["sessions"] == 0


@pytest.mark.parametrize("backend", ["sqlite"])
def test_erased_text_is_overwritten_in_the_database_file_whatever_sqlites_build_default(make_database):
    """SQLite leaves deleted rows' bytes in free pages unless ``secure_delete`` is on,
    and whether it is on by default depends on how SQLite was built (Debian's is, many
    others are not). An erase must not leave the conversation readable in the file."""
    from sqlalchemy import event

    database = make_database()
    # Runs before our own settings, as a build whose default is off would.
    event.listen(database.engine, "connect", lambda dbapi, _: dbapi.execute("PRAGMA secure_delete=OFF"), insert=True)
    data = AgnoData(database, database.settings.default_session_table)
    data.create_all()
    session_id = data.add_session(runs=2)
    data.add_session(runs=2)
    marker = data.write_private_text(session_id)
    path = Path(database.engine.url.database)
    checkpoint(database)
    assert marker in path.read_bytes(), "the scan must see the text while it is stored"

    assert erase_session(database, database.settings.default_session_table, session_id) is not None
    checkpoint(database)

    assert marker not in path.read_bytes()


def checkpoint(database) -> None:
    with database.engine.connect() as conn:
        busy, _, _ = conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").one()
        assert busy == 0


def test_runs_table_without_foreign_key_is_still_erased(make_database):
    custom = SessionTable.named("legacy_sessions", runs_table="legacy_runs_without_fk")
    database = make_database(session_tables=(custom,))
    agno = AgnoData(database, custom)
    metadata = agno.sessions.metadata
    runs_without_fk = Table(
        "legacy_runs_without_fk", MetaData(schema=metadata.schema),
        *(Column(c.name, c.type, primary_key=c.primary_key) for c in agno.runs.columns),
    )  # fmt: skip
    with database.engine.begin() as conn:
        if metadata.schema:
            conn.execute(CreateSchema(metadata.schema, if_not_exists=True))
        metadata.create_all(conn, tables=[agno.sessions])
        runs_without_fk.create(conn)
    session_id = agno.add_session(everything=False)
    assert inspect(database.engine).get_foreign_keys("legacy_runs_without_fk", schema=metadata.schema) == []
    erased = erase_session(database, custom, session_id)
    assert erased.counts == {"runs": 2, "sessions": 1}
    assert agno.counts(session_id)["runs"] == 0


def test_ids_with_nul_are_handled_per_backend(database, data, backend):
    if backend == "postgres":
        # PostgreSQL text cannot hold NUL, so no such session can exist.
        assert erase_session(database, database.settings.default_session_table, "a\x00b") is None
    else:
        session_id = data.add_session("a\x00b", everything=False)
        assert erase_session(database, database.settings.default_session_table, session_id) is not None


def test_concurrent_erases_of_one_session_succeed_exactly_once(database, data):
    session_id = data.add_session(runs=5)
    results = []
    barrier = threading.Barrier(6)

    def erase():
        barrier.wait()
        results.append(erase_session(database, database.settings.default_session_table, session_id))

    threads = [threading.Thread(target=erase) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(r is not None for r in results) == 1
    assert data.counts(session_id)["runs"] == 0


class TestLocate:
    @pytest.fixture
    def storage(self, make_database_settings):
        settings = Settings(databases=(
            make_database_settings("one", session_tables=("agno_sessions", "team_sessions")),
            make_database_settings("two"),
        ), security_key="k")  # fmt: skip
        storage = Storage(settings)
        yield storage
        storage.close()

    def test_rules(self, storage):
        with pytest.raises(DatabaseRequired, match="required when passing a table"):
            storage.locate(None, "agno_sessions")
        with pytest.raises(DatabaseRequired, match="multiple databases"):
            storage.locate(None, None)
        with pytest.raises(UnknownDatabase, match="No database found with id 'three'"):
            storage.locate("three", None)
        with pytest.raises(UnknownTable, match="No database with id 'two' has table 'team_sessions'"):
            storage.locate("two", "team_sessions")
        target = storage.locate("one", "team_sessions")
        assert (target.database.id, target.session_table.name, target.session_table.runs_table) == (
            "one", "team_sessions", "team_sessions_runs")  # fmt: skip
        assert storage.locate("one", "").session_table.name == "agno_sessions"

    def test_single_database_needs_no_id(self, make_database_settings):
        storage = Storage(Settings(databases=(make_database_settings("solo"),), security_key="k"))
        try:
            assert storage.locate(None, None).database.id == "solo"
            assert storage.locate("", None).database.id == "solo"
        finally:
            storage.close()
