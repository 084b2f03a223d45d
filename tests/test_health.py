"""GET /health: 200 when every database answers, 503 naming the one that does not, and
an answer in bounded time even when a database hangs."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest

from agentos_sessions.health import OK, TIMED_OUT, HealthCheck
from agentos_sessions.settings import DatabaseSettings
from tests.support import KEY, assert_spec_error


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


@pytest.mark.usefixtures("backend")
def test_healthy_without_credentials_and_without_secrets(make_client):
    client = make_client()
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "databases": {"default": "ok"}}
    database = next(iter(client.storage.databases.values()))
    assert database.settings.url not in response.text and KEY not in response.text


@pytest.mark.usefixtures("backend")
def test_unavailable_database_is_503_naming_it(make_client, make_database_settings, make_settings):
    down = DatabaseSettings(
        id="archive",
        url=f"postgresql+psycopg://app:hunter2@127.0.0.1:{closed_port()}/nothing",
        create_tables=False,
    )
    client = make_client(make_settings(databases=(make_database_settings(), down)))

    response = client.get("/health")

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

    body = assert_spec_error(client.get("/health"), 503, "SERVICE_UNAVAILABLE")

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
