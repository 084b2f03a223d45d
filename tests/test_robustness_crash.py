"""SIGKILL in the middle of a deletion load, several times, at random moments.

Afterwards every session is either fully present (with all its runs and dependent rows)
or fully gone, every acknowledged erase is gone, SQLite's integrity check passes, and the
server starts and erases again without any manual repair.
"""

from __future__ import annotations

import random
import threading
import time

import httpx
import pytest
from sqlalchemy import text

from storage import Database
from tests.live_server import LiveServer, database_toml
from tests.load import delete_concurrently
from tests.support import AUTH, CONVERSATION_KINDS, AgnoData, unique_ids

pytestmark = [pytest.mark.deep, pytest.mark.live, pytest.mark.usefixtures("backend")]

SESSIONS = 1500
RUNS = 3
KILLS = 4
FULL = {"sessions": 1, "runs": RUNS, "transcripts": 1, "compactions": 1, "tool_results": 1, "tool_result_payloads": 1}


def test_sigkill_mid_load_leaves_every_session_whole_or_gone(make_database_settings, tmp_path, backend):
    settings = make_database_settings()
    database = Database(settings)
    data = AgnoData(database, settings.default_session_table)
    data.create_all()
    ids = data.add_sessions(unique_ids("crash", SESSIONS), runs=RUNS)
    acknowledged: set[str] = set()
    rng = random.Random(20261128)
    server = LiveServer(tmp_path, database_toml(settings), workers=2)
    kill_moments = []
    try:
        for _ in range(KILLS):
            server.start()
            pending = [i for i in ids if i not in acknowledged]
            results = {}
            load = threading.Thread(
                target=lambda: results.update(run=delete_concurrently([server.url], pending, concurrency=16, timeout=10))
            )
            load.start()
            moment = rng.uniform(0.3, 1.5)
            kill_moments.append(round(moment, 2))
            time.sleep(moment)
            server.kill()
            load.join(timeout=120)
            assert not load.is_alive()
            answers = results["run"].statuses
            acknowledged |= {sid for sid, got in answers.items() if 204 in got}
            assert not [a for got in answers.values() for a in got if isinstance(a, int) and a >= 500]

        server.start()
        survivor = next(i for i in ids if i not in acknowledged and data.counts(i)["sessions"] == 1)
        assert httpx.delete(f"{server.url}/sessions/{survivor}", headers=AUTH).status_code == 204
        acknowledged.add(survivor)
    finally:
        server.stop()

    print(f"{KILLS} SIGKILLs at {kill_moments}s into the load; {len(acknowledged)} erases acknowledged")
    assert 0 < len(acknowledged) < SESSIONS, "the kills must land mid-load"
    gone, whole = 0, 0
    for session_id, left in data.counts_many(ids).items():
        held = {kind: left[kind] for kind in CONVERSATION_KINDS}
        if held == dict.fromkeys(CONVERSATION_KINDS, 0):
            gone += 1
        else:
            assert held == FULL, f"{session_id} is half-erased: {held}"
            assert session_id not in acknowledged, f"{session_id} was acknowledged but is still there"
            whole += 1
    assert gone >= len(acknowledged)
    print(f"after the crashes: {gone} sessions fully gone, {whole} fully present, none in between")
    if backend == "sqlite":
        with database.engine.connect() as conn:
            assert conn.execute(text("PRAGMA integrity_check")).scalar() == "ok"
    database.dispose()
