"""GET /health: 200 when every database could take an erase, 503 when one could not
(unreachable, hung, read-only, its disk full, locked), an answer in bounded time even
when a database hangs, and the names and reasons only for the key's holder."""

from __future__ import annotations

import asyncio
import socket
import threading
from contextlib import contextmanager

import pytest
from sqlalchemy import event

from agentos_sessions.health import OK, TIMED_OUT, HealthCheck
from agentos_sessions.operators import UNHEALTHY
from agentos_sessions.settings import DatabaseSettings
from tests.support import (
    AUTH,
    KEY,
    AgnoData,
    assert_spec_error,
    fill,
    read_only_view,
    tiny_filesystem,
)


@pytest.fixture
def silent_server():
    """A TCP port that accepts connections and never says a word: a hung database."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    yield listener.getsockname()[1]
    listener.close()


def closed_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


NOT_THE_KEY = [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer"}, {"Authorization": "Basic abc"}]


@pytest.mark.usefixtures("backend")
def test_healthy_names_the_databases_to_the_key_holder_only(make_client):
    client = make_client()
    for headers in NOT_THE_KEY:
        response = client.get("/health", headers=headers)
        assert response.status_code == 200 and response.json() == {"status": "ok"}, (headers, response.text)
    response = client.get("/health", headers=AUTH)
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "databases": {"default": "ok"}}
    database = next(iter(client.storage.databases.values()))
    assert database.settings.url not in response.text and KEY not in response.text


@pytest.mark.usefixtures("backend")
def test_health_details_public_names_them_to_anyone(make_client):
    response = make_client(health_details_public=True).get("/health")
    assert response.json() == {"status": "ok", "databases": {"default": "ok"}}


@pytest.mark.usefixtures("backend")
def test_unavailable_database_is_503_naming_it_to_the_key_holder_only(make_client, make_database_settings,
                                                                       make_settings):  # fmt: skip
    down = DatabaseSettings(
        id="archive",
        url=f"postgresql+psycopg://app:hunter2@127.0.0.1:{closed_port()}/nothing",
        create_tables=False,
    )
    client = make_client(make_settings(databases=(make_database_settings(), down)))

    for headers in NOT_THE_KEY:
        response = client.get("/health", headers=headers)
        assert assert_spec_error(response, 503, "SERVICE_UNAVAILABLE")["detail"] == UNHEALTHY
        assert "archive" not in response.text and "default" not in response.text
    response = client.get("/health", headers=AUTH)

    body = assert_spec_error(response, 503, "SERVICE_UNAVAILABLE")
    assert "'archive'" in body["detail"] and "'default'" not in body["detail"]
    assert "hunter2" not in response.text


@pytest.mark.usefixtures("backend")
def test_hung_database_answers_503_within_the_bound(make_client, make_database_settings, make_settings, silent_server):
    hung = DatabaseSettings(
        id="stuck", url=f"postgresql+psycopg://app:app@127.0.0.1:{silent_server}/db", create_tables=False
    )
    settings = make_settings(databases=(make_database_settings(), hung), health_timeout_ms=100)
    client = make_client(settings)

    body = assert_spec_error(client.get("/health", headers=AUTH), 503, "SERVICE_UNAVAILABLE")

    assert body["detail"] == "Database 'stuck' did not answer within 100 ms"


class BlockingDatabase:
    """Stands in for a database whose ping blocks until released."""

    def __init__(self, db_id: str):
        self.id = db_id
        self.release = threading.Event()
        self.pings = 0

    def ping(self) -> None:
        self.pings += 1
        self.release.wait(timeout=30)


def test_a_hung_database_costs_one_waiting_probe_not_one_per_request():
    database = BlockingDatabase("slow")
    health = HealthCheck([database], timeout_seconds=0.05)
    try:
        assert asyncio.run(health.check()) == {"slow": TIMED_OUT}
        assert asyncio.run(health.check()) == {"slow": TIMED_OUT}
        assert database.pings == 1
    finally:
        database.release.set()
    # Once it answers, the next probe starts afresh and sees it healthy.
    for thread in threading.enumerate():
        if thread.name == "health-slow":
            thread.join(timeout=10)
    health.timeout = 10
    assert asyncio.run(health.check()) == {"slow": OK}
    assert database.pings == 2


# --- a database that answers but cannot take a write: /health says so before an erase does


def assert_cannot_take_a_write(client, data: AgnoData, session_id: str, reason: str) -> None:
    """/health names the reason; an erase, tried now, is refused and changes nothing."""
    before = data.counts(session_id)
    body = assert_spec_error(client.get("/health", headers=AUTH), 503, "SERVICE_UNAVAILABLE")
    assert body["detail"] == f"Database 'default' cannot take a write ({reason})"
    assert_spec_error(client.delete(f"/sessions/{session_id}", headers=AUTH), 500, "INTERNAL_SERVER_ERROR")
    assert data.counts(session_id) == before


def sqlite_at(path) -> DatabaseSettings:
    return DatabaseSettings(id="default", url=f"sqlite:///{path}")


def seeded(client) -> tuple[AgnoData, str]:
    database = client.storage.databases["default"]
    data = AgnoData(database, database.settings.default_session_table)
    data.create_all()
    return data, data.add_session()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_full_disk_is_503_and_health_again_once_there_is_room(make_client, make_settings, tmp_path):
    with tiny_filesystem(tmp_path / "disk") as disk:
        client = make_client(make_settings(databases=(sqlite_at(disk / "agno.db"),)))
        data, session_id = seeded(client)
        # The WAL cut to nothing, as the idle writer leaves it, so an erase has to grow it.
        assert client.storage.databases["default"].truncate_wal()
        assert client.get("/health").status_code == 200
        filler = fill(disk)

        assert_cannot_take_a_write(client, data, session_id, "disk full")

        filler.unlink()
        assert client.get("/health").status_code == 200
        assert client.delete(f"/sessions/{session_id}", headers=AUTH).status_code == 204


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_read_only_mount_is_503(make_client, make_settings, tmp_path):
    writable = tmp_path / "writable"
    writable.mkdir()
    agent_client = make_client(make_settings(databases=(sqlite_at(writable / "agno.db"),)))
    data, session_id = seeded(agent_client)
    with read_only_view(writable, tmp_path / "read-only") as view:
        # The agent's side keeps the database open, so its WAL is there to be read.
        client = make_client(make_settings(databases=(sqlite_at(view / "agno.db"),)))
        assert client.get("/health").status_code == 503
        assert_cannot_take_a_write(client, data, session_id, "read-only")


@contextmanager
def read_only_sessions(database):
    """Every new connection reads only, as on a standby or under a role's
    ``default_transaction_read_only`` (set per session: the server is shared)."""

    def read_only(dbapi_connection, _record):
        dbapi_connection.execute("SET default_transaction_read_only = on")
        dbapi_connection.commit()

    event.listen(database.engine, "connect", read_only)
    database.engine.dispose()
    try:
        yield
    finally:
        event.remove(database.engine, "connect", read_only)
        database.engine.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgres"])
def test_a_read_only_postgresql_is_503(make_client):
    client = make_client()
    data, session_id = seeded(client)
    with read_only_sessions(client.storage.databases["default"]):
        assert_cannot_take_a_write(client, data, session_id, "read-only")
    assert client.get("/health").status_code == 200


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgres"])
def test_a_table_lock_held_past_the_busy_timeout_is_503(make_client):
    client = make_client(busy_timeout_ms=300, health_timeout_ms=30_000)
    data, session_id = seeded(client)
    database = client.storage.databases["default"]
    with database.engine.connect() as holder, holder.begin():
        # A migration's lock, say: every erase would wait on it.
        holder.exec_driver_sql(f'LOCK TABLE "{database.settings.schema}".agno_compactions IN EXCLUSIVE MODE')
        assert_cannot_take_a_write(client, data, session_id, "locked")
    assert client.get("/health").status_code == 200
