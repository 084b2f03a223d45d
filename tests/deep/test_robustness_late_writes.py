"""An agent that keeps running while its sessions are erased: the real ``agno`` package writes
runs, compactions and offloaded tool results to sessions as they are deleted through the
API. Agno's foreign key refuses the late runs; nothing refuses the rest. The orphan sweep
finds every session that got late rows and erases them: afterwards no row anywhere holds
an erased id.

Bounded by a count (every session erased once, then one more round of writes to each),
so it is short in CI; ``AGENTOS_TEST_RACE_SESSIONS`` makes it longer by hand (run with
``-s`` for the figures).
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import uuid
import warnings
from collections import Counter
from datetime import datetime, timezone

import pytest
from sqlalchemy.exc import IntegrityError

from storage.residue import find_orphans, scan, sweep_orphans
from tests.support import AUTH, wait_until

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from agno.offload import ResultStore
    from agno.run.agent import RunOutput
    from agno.session import AgentSession

pytestmark = pytest.mark.usefixtures("backend")

SESSIONS = int(os.environ.get("AGENTOS_TEST_RACE_SESSIONS", "30"))


class RunningAgent(threading.Thread):
    """Writes to each of its sessions in turn, as an agent mid-conversation does, until
    told the deletes are done; then one more round, so every session gets late rows."""

    def __init__(self, db, session_ids: list[str]):
        super().__init__(daemon=True)
        self.db, self.session_ids = db, session_ids
        self.store = ResultStore(db=db, threshold_chars=1)
        self.deletes_done = threading.Event()
        self.rounds = 0
        self.writes: Counter = Counter()
        self.errors: list[str] = []

    def run(self) -> None:
        last = False
        while not last:
            last = self.deletes_done.is_set()
            for session_id in self.session_ids:
                self.turn(session_id, f"{self.rounds}")
            self.rounds += 1

    def turn(self, session_id: str, turn: str) -> None:
        try:
            self.db.upsert_run(RunOutput(run_id=f"{session_id}-run-{turn}", session_id=session_id, agent_id="agent",
                                         content="answer"), session_id=session_id)  # fmt: skip
            self.writes["runs"] += 1
        except IntegrityError:
            self.writes["runs refused"] += 1  # the session is gone: Agno's foreign key
        try:
            self.db.upsert_compaction({"compaction_id": f"{session_id}-fold-{turn}", "session_id": session_id,
                                       "archived_messages": "[]", "summary": "folded",
                                       "created_at": int(datetime.now(timezone.utc).timestamp())})  # fmt: skip
            self.writes["compactions"] += 1
            self.store.offload(session_id=session_id, run_id=f"{session_id}-run-{turn}", tool_call_id="call",
                               tool_name="search", tool_args={}, output="the full tool output\n" * 3)  # fmt: skip
            self.writes["tool results"] += 1
        except Exception as exc:  # counted, and the test asserts there are none
            self.errors.append(repr(exc))

    def finish(self) -> None:
        self.deletes_done.set()
        self.join(timeout=300)
        assert not self.is_alive()


def test_a_running_agents_late_writes_are_found_and_swept(agno_db, make_client, caplog):
    caplog.set_level(logging.CRITICAL, logger="agno")  # Agno logs every refused run as an error
    db, settings = agno_db("default")
    session_ids = [f"late-{uuid.uuid4().hex[:8]}-{n}" for n in range(SESSIONS)]
    for session_id in session_ids:
        db.upsert_session(AgentSession(session_id=session_id, agent_id="agent", created_at=1))
    client = make_client(databases=(settings,))
    database = client.storage.databases[settings.id]
    agent = RunningAgent(db, session_ids)
    started = time.monotonic()
    agent.start()
    try:
        wait_until(lambda: agent.rounds >= 1, timeout=120, what="the agent's first round")
        statuses = Counter(client.delete(f"/sessions/{session_id}", headers=AUTH).status_code
                           for session_id in random.Random(3).sample(session_ids, len(session_ids)))  # fmt: skip
    finally:
        agent.finish()
    raced = time.monotonic() - started
    assert statuses == {204: SESSIONS} and agent.errors == []

    orphans = find_orphans(database)
    found = sum((Counter(o.rows) for o in orphans), Counter())
    swept = sweep_orphans(database, [o.session_id for o in orphans])

    print(f"\n{raced:.1f} s race, {SESSIONS} sessions, {agent.rounds} rounds of writes: {dict(agent.writes)}; {statuses[204]} deletes; "
          f"orphans under {len(orphans)} ids: {dict(found)}; swept {sum(sum(r.counts.values()) for r in swept.values())}")
    # The last round came after every delete: each session has late rows, none of them runs.
    assert sorted(o.session_id for o in orphans) == sorted(session_ids)
    assert all(o.rows["compactions"] >= 1 and o.rows["tool_results"] == o.rows["tool_result_payloads"] >= 1
               and "runs" not in o.rows for o in orphans)  # fmt: skip
    assert sum((Counter(r.counts) for r in swept.values()), Counter()) == found
    assert find_orphans(database) == []
    assert scan(database, session_ids) == []
