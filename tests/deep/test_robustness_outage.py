"""Outages: the database stops, its lock is held by someone else, its disk fills up.

Each request gets a spec-shaped 500 within a bounded time, nothing is half-erased,
/health says what is wrong, and the server recovers by itself when the database does.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from sqlalchemy import text

from agentos_sessions.settings import DatabaseSettings
from storage import Database
from tests.support import (
    AUTH,
    CONVERSATION_KINDS,
    AgnoData,
    LiveServer,
    TcpProxy,
    assert_spec_error,
    database_toml,
    fill,
    postgres_url,
    sqlite_write_lock_held,
    tiny_filesystem,
    unique_ids,
)

pytestmark = pytest.mark.live

# A hung request would trip the client's timeout long before this matters; it only
# has to be far above the busy/connect timeouts configured below.
REQUEST_TIMEOUT = 15
FULL = {"sessions": 1, "runs": 2, "transcripts": 1, "compactions": 1, "tool_results": 1, "tool_result_payloads": 1}


def config(settings: DatabaseSettings, busy_timeout_ms: int = 1000) -> str:
    return f"busy_timeout_ms = {busy_timeout_ms}\nhealth_timeout_ms = 3000\n\n" + database_toml(settings)


def held(data: AgnoData, session_id: str) -> dict:
    left = data.counts(session_id)
    return {kind: left[kind] for kind in CONVERSATION_KINDS}


def assert_failing_cleanly(server: LiveServer, data: AgnoData, session_ids: list[str]) -> None:
    for session_id in session_ids:
        started = time.monotonic()
        response = httpx.delete(f"{server.url}/sessions/{session_id}", headers=AUTH, timeout=REQUEST_TIMEOUT)
        took = time.monotonic() - started
        body = assert_spec_error(response, 500, "INTERNAL_SERVER_ERROR")
        assert body["detail"] == "Failed to delete session" and "Traceback" not in response.text
        print(f"  {session_id}: 500 in {took:.2f}s")
    assert_health_names_it(server)


def assert_health_names_it(server: LiveServer) -> str:
    health = httpx.get(f"{server.url}/health", headers=AUTH, timeout=REQUEST_TIMEOUT)
    assert health.status_code == 503 and "'default'" in health.text, health.text
    return health.text


def assert_recovered(server: LiveServer, data: AgnoData, session_ids: list[str]) -> None:
    for session_id in session_ids:
        assert held(data, session_id) == FULL, f"{session_id} changed during the outage"
    # No restart: the same server process answers again as soon as the database does.
    statuses = [httpx.delete(f"{server.url}/sessions/{sid}", headers=AUTH, timeout=REQUEST_TIMEOUT).status_code
                for sid in session_ids]  # fmt: skip
    assert statuses == [204] * len(session_ids)
    assert all(held(data, sid) == dict.fromkeys(CONVERSATION_KINDS, 0) for sid in session_ids)
    assert httpx.get(f"{server.url}/health", timeout=REQUEST_TIMEOUT).status_code == 200


@pytest.mark.postgres
def test_postgresql_going_away_and_coming_back(tmp_path):
    url = postgres_url()
    parts = urlsplit(url)
    proxy = TcpProxy(parts.hostname, parts.port or 5432).start()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    direct = DatabaseSettings(id="default", url=url, schema=schema)
    via_proxy = replace(direct, url=urlunsplit(parts._replace(netloc=f"{parts.username}:{parts.password}@127.0.0.1:{proxy.port}")))
    database = Database(direct)
    data = AgnoData(database, direct.default_session_table)
    data.create_all()
    ids = data.add_sessions(unique_ids("outage", 6))
    try:
        with LiveServer(tmp_path, config(via_proxy)) as server:
            assert httpx.delete(f"{server.url}/sessions/{ids[0]}", headers=AUTH).status_code == 204
            proxy.cut()
            assert_failing_cleanly(server, data, ids[1:4])
            proxy.restore()
            assert_recovered(server, data, ids[1:4])
    finally:
        proxy.stop()
        with database.engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        database.dispose()


def test_sqlite_lock_held_past_the_busy_timeout(tmp_path):
    settings = DatabaseSettings(id="default", url=f"sqlite:///{tmp_path / 'agno.db'}")
    database = Database(settings)
    data = AgnoData(database, settings.default_session_table)
    data.create_all()
    ids = data.add_sessions(unique_ids("locked", 4))
    try:
        with LiveServer(tmp_path, config(settings, busy_timeout_ms=500)) as server:
            with sqlite_write_lock_held(tmp_path / "agno.db"):
                assert_failing_cleanly(server, data, ids[:3])
            assert_recovered(server, data, ids[:3])
    finally:
        database.dispose()


def test_sqlite_disk_full(tmp_path):
    with tiny_filesystem(tmp_path / "disk") as disk:
        settings = DatabaseSettings(id="default", url=f"sqlite:///{disk / 'agno.db'}")
        database = Database(settings)
        data = AgnoData(database, settings.default_session_table)
        data.create_all()
        ids = data.add_sessions(unique_ids("full", 4))
        with database.engine.connect() as conn:
            # An empty WAL, so the next erase has to grow it on the full disk.
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        try:
            with LiveServer(tmp_path, config(settings)) as server:
                filler = fill(disk)
                for session_id in ids[:3]:
                    response = httpx.delete(f"{server.url}/sessions/{session_id}", headers=AUTH, timeout=REQUEST_TIMEOUT)
                    assert_spec_error(response, 500, "INTERNAL_SERVER_ERROR")
                assert "disk full" in assert_health_names_it(server)
                filler.unlink()
                assert_recovered(server, data, ids[:3])
            with database.engine.connect() as conn:
                assert conn.execute(text("PRAGMA integrity_check")).scalar() == "ok"
        finally:
            database.dispose()
