"""The fast lane answers exactly as Connexion would, and only takes what it can prove plain.

Each case is sent to two apps over the same database, one with the lane and one
without, and the answers (status, headers but the request id, body) and what they did
to the data are compared. The lane's own calls are counted, so a case meant for the
lane fails if the lane stops taking it, and a case meant for Connexion fails if the
lane takes it.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field, replace
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentos_sessions import app as app_module
from agentos_sessions.contract import Contract
from agentos_sessions.fast_lane import Route, keeps_keys_plain
from handlers.sessions import erase_and_answer
from tests.support import AUTH, CONVERSATION_KINDS, KEY, AgnoData, refuse_compaction_deletes, unique_ids


def route_from(document):
    return Route.from_contract(document, "delete_session", erase_and_answer)


@dataclass(frozen=True)
class Case:
    name: str
    lane: bool  # whether the lane must answer it
    session_id: str = "{id}"  # the id in the path, from the seeded one
    query: str = ""
    headers: dict = field(default_factory=lambda: dict(AUTH))
    method: str = "DELETE"
    body: bytes | None = None
    seeded: bool = True
    suffix: str = ""


CASES = [
    Case("existing session", lane=True),
    Case("missing session", lane=True, seeded=False),
    Case("db_id named", lane=True, query="db_id=default"),
    Case("unknown db_id", lane=True, query="db_id=elsewhere"),
    Case("table without db_id", lane=True, query="table=agno_sessions"),
    Case("db_id and table", lane=True, query="db_id=default&table=agno_sessions"),
    Case("table before db_id", lane=True, query="table=agno_sessions&db_id=default"),
    Case("unknown table", lane=True, query="db_id=default&table=nope"),
    Case("empty body declared", lane=True, headers={**AUTH, "Content-Length": "0"}),
    Case("uuid-shaped id", lane=True, session_id="0b7e1f2a-4c3d-4e5f-8a9b-{id}"),
    Case("lowercase scheme", lane=False, headers={"Authorization": f"bearer {KEY}"}),
    Case("wrong key", lane=False, headers={"Authorization": "Bearer not-the-key"}),
    Case("no authorization", lane=False, headers={}),
    Case("key with trailing space", lane=False, headers={"Authorization": f"Bearer {KEY} "}),
    Case("percent-encoded id", lane=False, session_id="with space {id}"),
    Case("id with an encoded slash", lane=False, session_id="a/b-{id}"),
    Case("id with a newline", lane=False, session_id="line\nbreak-{id}"),
    Case("non-ascii id", lane=False, session_id="sesión-{id}"),
    Case("id in NFD", lane=False, session_id="cafe\u0301-{id}"),
    Case("four-byte character", lane=False, session_id="\U0001f600-{id}"),
    Case("percent sign in id", lane=False, session_id="100%-{id}"),
    Case("id starting with a dot", lane=False, session_id=".{id}"),
    Case("empty db_id", lane=False, query="db_id="),
    Case("repeated db_id", lane=False, query="db_id=default&db_id=default"),
    Case("unknown parameter", lane=False, query="dbid=default"),
    Case("encoded query value", lane=False, query="db_id=def%61ult"),
    Case("json body", lane=False, headers={**AUTH, "Content-Type": "application/json"}, body=b"{}"),
    Case("trailing slash", lane=False, suffix="/"),
    Case("wrong method", lane=False, method="POST"),
]


@pytest.fixture
def clients(make_client, make_settings, lane_calls):
    settings = make_settings()
    with_lane, without_lane = make_client(settings), make_client(replace(settings, fast_lane=False))
    database = next(iter(with_lane.storage.databases.values()))
    data = AgnoData(database, database.settings.default_session_table)
    data.create_all()
    return with_lane, without_lane, data


@pytest.fixture
def lane_calls(monkeypatch):
    """The lane's calls: the answer function the app gives it, counted (the handler
    calls the original)."""
    calls = []

    @functools.wraps(erase_and_answer)
    async def counted(*args, **kwargs):
        calls.append(args[1])
        return await erase_and_answer(*args, **kwargs)

    monkeypatch.setattr(app_module, "erase_and_answer", counted)
    return calls


def answer(client, data: AgnoData, case: Case, base: str, lane_calls: list) -> dict:
    session_id = case.session_id.replace("{id}", base)
    if case.seeded:
        data.add_session(session_id)
    before = len(lane_calls)
    response = client.request(
        case.method,
        f"/sessions/{quote(session_id, safe='')}{case.suffix}" + (f"?{case.query}" if case.query else ""),
        headers=case.headers,
        content=case.body,
    )
    headers = {k: v for k, v in response.headers.items() if k != "x-request-id"}
    assert "x-request-id" in response.headers
    return {
        "status": response.status_code,
        "headers": headers,
        "body": response.content.replace(base.encode(), b"<id>"),
        "left": data.counts(session_id),
        "by_lane": len(lane_calls) > before,
    }


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_lane_answers_exactly_as_connexion(clients, lane_calls, case):
    with_lane, without_lane, data = clients
    lane_id, plain_id = unique_ids("lane", 2)

    through_lane = answer(with_lane, data, case, lane_id, lane_calls)
    through_connexion = answer(without_lane, data, case, plain_id, lane_calls)

    assert through_lane["by_lane"] is case.lane
    assert through_connexion["by_lane"] is False
    assert {k: v for k, v in through_lane.items() if k != "by_lane"} == {
        k: v for k, v in through_connexion.items() if k != "by_lane"
    }


# Any text Agno can store as an id (PostgreSQL text holds no NUL), as UTF-8 and percent-encoded.
_STORABLE_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=8)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_STORABLE_TEXT)
def test_any_id_agno_can_store_is_erased_alike_with_and_without_the_lane(clients, lane_calls, text):
    with_lane, without_lane, data = clients
    case = Case("generated", lane=False, session_id=text + "-{id}")
    lane_id, plain_id = unique_ids("any", 2)
    through_lane = answer(with_lane, data, case, lane_id, lane_calls)
    through_connexion = answer(without_lane, data, case, plain_id, lane_calls)
    assert through_lane["status"] == 204
    assert [through_lane["left"][kind] for kind in CONVERSATION_KINDS] == [0] * len(CONVERSATION_KINDS)
    assert {k: v for k, v in through_lane.items() if k != "by_lane"} == {
        k: v for k, v in through_connexion.items() if k != "by_lane"
    }


def test_failed_erase_answers_as_connexion_and_keeps_everything(clients, lane_calls):
    with_lane, without_lane, data = clients
    answers = []
    refuse_compaction_deletes(data.database, "refused")
    for client, session_id in zip((with_lane, without_lane), unique_ids("fails", 2)):
        data.add_session(session_id)
        before = data.counts(session_id)
        response = client.delete(f"/sessions/{session_id}", headers=AUTH)
        assert data.counts(session_id) == before
        answers.append((response.status_code, response.headers["content-type"], response.content))
    assert len(lane_calls) == 1
    assert answers[0] == answers[1]
    assert answers[0][0] == 500


def test_lane_takes_its_route_from_the_contract():
    route = route_from(Contract.load().document)
    assert route is not None
    assert (route.prefix, route.query_names) == (b"/sessions/", frozenset({b"db_id", b"table"}))


def _operation(document: dict) -> dict:
    return document["paths"]["/sessions/{session_id}"]["delete"]


def _constrain_path_parameter(document):
    _operation(document)["parameters"][0]["schema"]["pattern"] = "^[a-f0-9-]+$"


def _require_db_id(document):
    _operation(document)["parameters"][1]["required"] = True


def _constrain_query_parameter(document):
    _operation(document)["parameters"][2]["schema"]["anyOf"][0]["maxLength"] = 8


def _add_header_parameter(document):
    _operation(document)["parameters"].append({"name": "X-Tenant", "in": "header", "schema": {"type": "string"}})


def _add_unknown_query_parameter(document):
    _operation(document)["parameters"].append({"name": "cascade", "in": "query", "schema": {"type": "string"}})


def _add_request_body(document):
    _operation(document)["requestBody"] = {"content": {"application/json": {"schema": {"type": "object"}}}}


def _switch_to_api_key(document):
    document["components"]["securitySchemes"]["HTTPBearer"] = {"type": "apiKey", "in": "header", "name": "X-Key"}


def _drop_security(document):
    _operation(document)["security"] = []


def _add_second_path_parameter(document):
    paths = document["paths"]
    paths["/sessions/{session_id}/{part}"] = paths.pop("/sessions/{session_id}")


@pytest.mark.parametrize(
    "change",
    [
        _constrain_path_parameter, _require_db_id, _constrain_query_parameter, _add_header_parameter,
        _add_unknown_query_parameter, _add_request_body, _switch_to_api_key, _drop_security,
        _add_second_path_parameter,
    ],
)  # fmt: skip
def test_no_lane_when_the_contract_asks_for_more_than_it_checks(change):
    document = copy.deepcopy(Contract.load().document)
    change(document)
    assert route_from(document) is None


@pytest.mark.parametrize("key, plain", [(KEY, True), ("with space", False), ("clé", False), ("tab\tkey", False)])
def test_lane_only_for_keys_both_paths_compare_alike(key, plain):
    assert keeps_keys_plain(key) is plain


def test_setting_turns_the_lane_off(make_client, lane_calls):
    client = make_client(fast_lane=False)
    database = client.storage.databases["default"]
    data = AgnoData(database, database.settings.default_session_table)
    data.create_all()
    session_id = data.add_session()
    assert client.delete(f"/sessions/{session_id}", headers=AUTH).status_code == 204
    assert lane_calls == []
