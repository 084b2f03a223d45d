"""SIGKILL in the middle of a deletion load, several times, at random points of its progress.

Afterwards every session is either fully present (with all its runs and dependent rows)
or fully gone, every acknowledged erase is gone, SQLite's integrity check passes, and the
server starts and erases again without any manual repair.
"""

from __future__ import annotations

import random
import threading

import httpx
import pytest
from sqlalchemy import text

from storage import Database
from tests.support import (
    AUTH,
    CONVERSATION_KINDS,
    AgnoData,
    LiveServer,
    LoadResult,
    database_toml,
    delete_concurrently,
    unique_ids,
    wait_until,
)

pytestmark = [pytest.mark.live, pytest.mark.usefixtures("backend")]

SESSIONS = 1500
RUNS = 3
KILLS = 4
# Each kill lands after this many answers into its round, drawn at random: counted, not
# timed, so it lands mid-load on a fast machine and on a slow one alike.
KILL_AFTER_ANSWERS = (40, 240)
# Never sent, so a session is always left for the restarted server to erase.
HELD_BACK = 20
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
    kill_points = []
    try:
        for _ in range(KILLS):
            server.start()
            pending = [i for i in ids[:-HELD_BACK] if i not in acknowledged]
            progress = LoadResult()
            load = threading.Thread(
                target=delete_concurrently, args=([server.url], pending),
                kwargs={"concurrency": 16, "timeout": 10, "result": progress},
            )  # fmt: skip
            load.start()
            kill_after = rng.randint(*KILL_AFTER_ANSWERS)
            kill_points.append(kill_after)
            wait_until(lambda: progress.requests >= kill_after or not load.is_alive(), timeout=120, what="the load to progress")
            assert load.is_alive(), "the load ended before the kill"
            server.kill()
            load.join(timeout=120)
            assert not load.is_alive()
            answers = progress.statuses
            acknowledged |= {sid for sid, got in answers.items() if 204 in got}
            assert not [a for got in answers.values() for a in got if isinstance(a, int) and a >= 500]

        server.start()
        survivor = ids[-1]
        assert httpx.delete(f"{server.url}/sessions/{survivor}", headers=AUTH).status_code == 204
        acknowledged.add(survivor)
    finally:
        server.stop()

    print(f"{KILLS} SIGKILLs after {kill_points} answers; {len(acknowledged)} erases acknowledged")
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
