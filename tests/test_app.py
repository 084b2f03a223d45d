"""The HTTP contract through the app's test client: every status the spec lists, every
db_id/table rule, and one error-shape assertion applied to every origin of error."""

from __future__ import annotations

import pytest

from agentos_sessions.settings import SessionTable
from tests.support import AUTH, CONVERSATION_KINDS, KEY, AgnoData, assert_spec_error, refuse_compaction_deletes

pytestmark = pytest.mark.usefixtures("backend")


@pytest.fixture
def client(make_client):
    return make_client()


def seeded(client, **kwargs) -> tuple[AgnoData, str]:
    database = next(iter(client.storage.databases.values()))
    data = AgnoData(database, database.settings.default_session_table)
    data.create_all()
    return data, data.add_session(**kwargs)


def test_erases_session_and_everything_under_it(client):
    data, session_id = seeded(client)
    other = data.add_session()
    before_other = data.counts(other)

    response = client.delete(f"/sessions/{session_id}", headers=AUTH)

    assert response.status_code == 204
    assert response.content == b""
    assert "content-type" not in response.headers
    left = data.counts(session_id)
    assert {kind: left[kind] for kind in CONVERSATION_KINDS} == dict.fromkeys(CONVERSATION_KINDS, 0)
    # Agno's own delete keeps traces; so does ours unless erase_traces is on.
    assert (left["traces"], left["spans"]) == (1, 1)
    assert data.counts(other) == before_other


def test_erase_traces_setting_also_removes_traces_and_spans(make_client):
    client = make_client(erase_traces=True)
    data, session_id = seeded(client)
    other = data.add_session()

    assert client.delete(f"/sessions/{session_id}", headers=AUTH).status_code == 204

    assert set(data.counts(session_id).values()) == {0}
    assert data.counts(other)["traces"] == 1 and data.counts(other)["spans"] == 1


def test_second_delete_is_404(client):
    _, session_id = seeded(client)
    assert client.delete(f"/sessions/{session_id}", headers=AUTH).status_code == 204
    assert_spec_error(client.delete(f"/sessions/{session_id}", headers=AUTH), 404, "NOT_FOUND")


def test_unknown_session_is_404_and_changes_nothing(client):
    data, session_id = seeded(client)
    before = data.counts(session_id)
    assert_spec_error(client.delete("/sessions/no-such-session", headers=AUTH), 404, "NOT_FOUND")
    assert data.counts(session_id) == before


def test_fresh_database_has_agno_tables_and_404s(client):
    assert_spec_error(client.delete("/sessions/anything", headers=AUTH), 404, "NOT_FOUND")


@pytest.mark.parametrize(
    "headers, detail_fragment",
    [
        ({}, "No authorization token provided"),
        ({"Authorization": "Bearer wrong-key"}, "not valid"),
        ({"Authorization": "Bearer"}, "Invalid authorization header"),
        ({"Authorization": "Bearer "}, "Invalid authorization header"),
        ({"Authorization": f"Bearer {KEY} extra"}, "Invalid authorization header"),
        ({"Authorization": f"Basic {KEY}"}, "No authorization token provided"),
        ({"Authorization": KEY}, "Invalid authorization header"),
        ([("Authorization", f"Bearer {KEY}"), ("Authorization", f"Bearer {KEY}")], "Only one"),
    ],
    ids=["missing", "wrong", "empty", "empty-space", "spaces", "basic", "bare", "twice"],
)
def test_401_for_every_bad_credential(client, headers, detail_fragment):
    data, session_id = seeded(client)
    response = client.delete(f"/sessions/{session_id}", headers=headers)
    body = assert_spec_error(response, 401, "UNAUTHENTICATED")
    assert detail_fragment in body["detail"]
    assert response.headers["www-authenticate"] == "Bearer"
    assert data.counts(session_id)["sessions"] == 1


def test_scheme_is_case_insensitive(client):
    _, session_id = seeded(client)
    assert client.delete(f"/sessions/{session_id}", headers={"Authorization": f"bearer {KEY}"}).status_code == 204


@pytest.mark.parametrize(
    "query",
    ["?db_id=nope", "?db_id=default&table=nope", "?table=agno_sessions", "?unknown=1", "?db_id=a&db_id=b"],
)
def test_authentication_comes_before_everything_else(client, query):
    """An unauthenticated caller learns nothing about databases, tables or sessions."""
    response = client.delete(f"/sessions/whatever{query}")
    assert_spec_error(response, 401, "UNAUTHENTICATED")


def test_table_without_db_id_is_400(client):
    data, session_id = seeded(client)
    body = assert_spec_error(
        client.delete(f"/sessions/{session_id}?table=agno_sessions", headers=AUTH), 400, "BAD_REQUEST"
    )
    assert body["detail"] == "The db_id query parameter is required when passing a table"
    assert data.counts(session_id)["sessions"] == 1


def test_unknown_db_id_is_404(client):
    data, session_id = seeded(client)
    body = assert_spec_error(client.delete(f"/sessions/{session_id}?db_id=other", headers=AUTH), 404, "NOT_FOUND")
    assert body["detail"] == "No database found with id 'other'"
    assert data.counts(session_id)["sessions"] == 1


def test_unknown_table_is_404_and_never_reaches_sql(client):
    data, session_id = seeded(client)
    hostile = "agno_sessions; DROP TABLE agno_runs; --"
    response = client.delete(f"/sessions/{session_id}", params={"db_id": "default", "table": hostile}, headers=AUTH)
    body = assert_spec_error(response, 404, "NOT_FOUND")
    assert body["detail"] == f"No database with id 'default' has table '{hostile}'"
    assert data.counts(session_id)["runs"] == 2


def test_configured_table_that_does_not_exist_is_404(make_client, make_database_settings):
    settings = make_database_settings(session_tables=("agno_sessions", "later_sessions"), create_tables=False)
    client = make_client(databases=(settings,))
    response = client.delete("/sessions/x?db_id=default&table=later_sessions", headers=AUTH)
    body = assert_spec_error(response, 404, "NOT_FOUND")
    assert body["detail"] == "No database with id 'default' has table 'later_sessions'"
    # Without an explicit table, a missing sessions table simply holds no such session.
    body = assert_spec_error(client.delete("/sessions/x", headers=AUTH), 404, "NOT_FOUND")
    assert body["detail"] == "Session not found"
    database = client.storage.databases["default"]
    with database.engine.connect() as conn:
        assert database.existing(conn, [database.ref("agno_sessions"), database.ref("later_sessions")]) == set()


def test_db_id_and_table_select_the_session_table(make_client, make_database_settings):
    renamed = SessionTable.named("team_sessions")
    client = make_client(databases=(make_database_settings(session_tables=("agno_sessions", renamed)),))
    database = client.storage.databases["default"]
    default_data = AgnoData(database, database.settings.session_tables[0])
    renamed_data = AgnoData(database, renamed)
    default_data.create_all()
    renamed_data.create_all()
    shared_id = "same-id-in-both-tables"
    default_data.add_session(shared_id, everything=False)
    renamed_data.add_session(shared_id, everything=False)

    response = client.delete(f"/sessions/{shared_id}?db_id=default&table=team_sessions", headers=AUTH)

    assert response.status_code == 204
    assert renamed_data.counts(shared_id)["sessions"] == 0
    assert renamed_data.counts(shared_id)["runs"] == 0
    assert default_data.counts(shared_id)["sessions"] == 1
    assert default_data.counts(shared_id)["runs"] == 2


def test_several_databases_need_db_id(make_client, make_database_settings):
    first, second = make_database_settings("first"), make_database_settings("second")
    client = make_client(databases=(first, second))
    second_data = AgnoData(client.storage.databases["second"], second.default_session_table)
    second_data.create_all()
    session_id = second_data.add_session()

    body = assert_spec_error(client.delete(f"/sessions/{session_id}", headers=AUTH), 400, "BAD_REQUEST")
    assert body["detail"] == "The db_id query parameter is required when using multiple databases"
    assert_spec_error(client.delete(f"/sessions/{session_id}?db_id=first", headers=AUTH), 404, "NOT_FOUND")
    assert second_data.counts(session_id)["sessions"] == 1
    assert client.delete(f"/sessions/{session_id}?db_id=second", headers=AUTH).status_code == 204
    assert second_data.counts(session_id)["sessions"] == 0


def test_empty_db_id_and_table_count_as_absent(client):
    data, session_id = seeded(client)
    assert client.delete(f"/sessions/{session_id}?db_id=&table=", headers=AUTH).status_code == 204
    assert data.counts(session_id)["sessions"] == 0


@pytest.mark.parametrize("query", ["?unknown=1", "?db_id=default&db_id=default", "?table=a&table=b"])
def test_invalid_requests_are_422_and_change_nothing(client, query):
    data, session_id = seeded(client)
    assert_spec_error(client.delete(f"/sessions/{session_id}{query}", headers=AUTH), 422, "VALIDATION_ERROR")
    assert data.counts(session_id)["sessions"] == 1


def test_storage_failure_is_500_and_nothing_is_half_done(client):
    data, session_id = seeded(client)
    before = data.counts(session_id)
    refuse_compaction_deletes(next(iter(client.storage.databases.values())), "internal detail: disk on fire")

    response = client.delete(f"/sessions/{session_id}", headers=AUTH)

    body = assert_spec_error(response, 500, "INTERNAL_SERVER_ERROR")
    assert body["detail"] == "Failed to delete session"
    assert "disk on fire" not in response.text
    assert data.counts(session_id) == before


def test_wrong_method_is_405_with_allow(client):
    response = client.get("/sessions/abc", headers=AUTH)
    assert_spec_error(response, 405, "METHOD_NOT_ALLOWED")
    assert response.headers["allow"] == "DELETE"


def test_unknown_path_is_spec_shaped_404(client):
    assert_spec_error(client.get("/nope"), 404, "NOT_FOUND")
    assert_spec_error(client.delete("/sessions", headers=AUTH), 404, "NOT_FOUND")


def test_published_contract_is_the_original_document(client):
    from agentos_sessions.contract import Contract

    contract = Contract.load()
    as_yaml = client.get("/openapi.yaml")
    assert as_yaml.status_code == 200
    assert as_yaml.content == contract.raw
    as_json = client.get("/openapi.json")
    assert as_json.status_code == 200
    assert as_json.json() == contract.document
    assert as_json.json()["openapi"] == "3.1.0"
