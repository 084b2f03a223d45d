"""Choosing the database and table as AgentOS's ``get_db`` does, and erasing there."""

from __future__ import annotations

import asyncio

import pytest

from storage import DatabaseRequired, Storage, UnknownDatabase, UnknownTable
from tests.support import AgnoData


@pytest.fixture
def storage(make_database_settings):
    opened = Storage((
        make_database_settings("one", session_tables=("agno_sessions", "team_sessions")),
        make_database_settings("two"),
    ))  # fmt: skip
    yield opened
    opened.close()


def test_rules(storage):
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


def test_single_database_needs_no_id(make_database_settings):
    storage = Storage((make_database_settings("solo"),))
    try:
        assert storage.locate(None, None).database.id == "solo"
        assert storage.locate("", None).database.id == "solo"
    finally:
        storage.close()


def test_a_named_table_that_does_not_exist_is_unknown_and_an_unnamed_one_means_not_found(storage):
    async def erase(db_id, table):
        return await storage.erase(storage.locate(db_id, table), "some-session")

    # Configured, never created: "team_sessions" in database "one".
    with pytest.raises(UnknownTable, match="No database with id 'one' has table 'team_sessions'"):
        asyncio.run(erase("one", "team_sessions"))
    assert asyncio.run(erase("two", None)) is None


def test_erase_goes_to_the_located_table(storage):
    storage.start()
    team = storage.locate("one", "team_sessions")
    data = AgnoData(team.database, team.session_table)
    data.create_all(with_side_tables=False)
    session_id = data.add_session(runs=3, everything=False)

    erased = asyncio.run(storage.erase(team, session_id))

    assert erased.counts == {"runs": 3, "sessions": 1}
    assert data.counts(session_id)["sessions"] == 0
