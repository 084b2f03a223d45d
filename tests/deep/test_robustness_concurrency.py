"""Racing deletes against a live multi-worker server while an agent keeps writing.

Each seeded session is requested several times by 32 concurrent clients: exactly one
204 per session, every other answer 404, no 5xx, no timeouts; everything under the
erased sessions gone, and every other session byte for byte as it was.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from storage import Database
from tests.support import (
    CONVERSATION_KINDS,
    AgentWriter,
    AgnoData,
    LiveServer,
    database_toml,
    delete_concurrently,
    postgres_url,
    snapshot,
    unique_ids,
)

pytestmark = pytest.mark.live

TARGETS = 2000
BYSTANDERS = 200
REPEATS = 3
CLIENTS = 32


def prepare(settings) -> tuple[Database, AgnoData, list[str], list[str]]:
    database = Database(settings)
    data = AgnoData(database, settings.default_session_table)
    data.create_all()
    targets = data.add_sessions(unique_ids("target", TARGETS), runs=2)
    bystanders = data.add_sessions(unique_ids("bystander", BYSTANDERS), runs=3)
    return database, data, targets, bystanders


def race(base_urls: list[str], data: AgnoData, targets: list[str], bystanders: list[str]) -> None:
    requests = [session_id for session_id in targets for _ in range(REPEATS)]
    random.Random(7).shuffle(requests)
    untouched, agent_owned = bystanders[: BYSTANDERS // 2], bystanders[BYSTANDERS // 2 :]
    before = snapshot(data, untouched)
    writer = AgentWriter(data, unique_ids("agent-live", 1)[0], agent_owned)
    writer.start()
    try:
        result = delete_concurrently(base_urls, requests, concurrency=CLIENTS)
    finally:
        writer.stop()

    print(f"{result.requests} requests from {CLIENTS} clients in {result.seconds:.1f}s: {dict(result.tally())}; "
          f"agent wrote {len(writer.inserted)} sessions and {writer.updates} updates meanwhile")  # fmt: skip
    assert result.requests == TARGETS * REPEATS
    per_session = {sid: Counter(answers) for sid, answers in result.statuses.items()}
    wrong = {sid: dict(c) for sid, c in per_session.items() if c != Counter({204: 1, 404: REPEATS - 1})}
    assert wrong == {}, f"{len(wrong)} sessions answered wrongly, e.g. {list(wrong.items())[:5]}"
    assert writer.errors == [] and writer.inserted and writer.updates

    for session_id, left in data.counts_many(targets).items():
        assert [left[k] for k in CONVERSATION_KINDS] == [0] * len(CONVERSATION_KINDS), (session_id, left)
    assert snapshot(data, untouched) == before
    kept = data.counts_many(agent_owned + writer.inserted)
    assert {session_id: left["sessions"] for session_id, left in kept.items()} == dict.fromkeys(kept, 1)


@pytest.mark.usefixtures("backend")
def test_racing_deletes_on_two_workers(make_database_settings, tmp_path):
    settings = make_database_settings()
    database, data, targets, bystanders = prepare(settings)
    try:
        with LiveServer(tmp_path, database_toml(settings), workers=2) as server:
            race([server.url], data, targets, bystanders)
        assert "database is locked" not in server.log.read_text()
    finally:
        database.dispose()


@pytest.mark.postgres
def test_racing_deletes_across_two_server_instances(tmp_path):
    """Two separate servers sharing one PostgreSQL database, as replicas behind a balancer."""
    import uuid

    from sqlalchemy import create_engine
    from sqlalchemy.schema import DropSchema

    from agentos_sessions.settings import DatabaseSettings

    url = postgres_url()
    settings = DatabaseSettings(id="default", url=url, schema=f"t_{uuid.uuid4().hex[:12]}")
    database, data, targets, bystanders = prepare(settings)
    try:
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        with LiveServer(tmp_path / "a", database_toml(settings), workers=2) as first, \
             LiveServer(tmp_path / "b", database_toml(settings), workers=2) as second:  # fmt: skip
            race([first.url, second.url], data, targets, bystanders)
    finally:
        database.dispose()
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(DropSchema(settings.schema, cascade=True, if_exists=True))
        engine.dispose()
