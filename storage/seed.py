"""Demo sessions in Agno 3.x's layout, written through the same engines as the erase."""

from __future__ import annotations

import time
import uuid

from sqlalchemy import insert

from storage.config import SessionTable
from storage.database import Database
from storage.schema import layout

_BATCH = 500


def _message_text(size: int, turn: int) -> str:
    sentence = f"Turn {turn}: the user asked about their order and the agent answered with care. "
    return (sentence * (size // len(sentence) + 1))[:size]


def _session_row(session_id: str, now: int) -> dict:
    return {
        "session_id": session_id, "session_type": "agent", "agent_id": "demo-agent", "user_id": "demo-user",
        "session_data": {"session_name": f"Demo {session_id[:8]}", "session_state": {"cart": []}},
        "agent_data": {"name": "Demo Agent", "model": {"provider": "demo", "id": "demo-model"}},
        "metadata": {"source": "agentos-sessions seed"},
        "summary": {"summary": "The user asked about an order; the agent helped."},
        "created_at": now, "updated_at": now,
    }  # fmt: skip


def _run_row(session_id: str, index: int, now: int, run_bytes: int) -> dict:
    run_id = str(uuid.uuid4())
    messages = [
        {"role": "user", "content": _message_text(run_bytes // 2, index)},
        {"role": "assistant", "content": _message_text(run_bytes - run_bytes // 2, index)},
    ]
    return {
        "run_id": run_id, "session_id": session_id, "run_type": "agent", "agent_id": "demo-agent",
        "user_id": "demo-user", "status": "COMPLETED", "run_index": index,
        "run_data": {"run_id": run_id, "session_id": session_id, "status": "COMPLETED", "messages": messages},
        "created_at": now, "updated_at": now,
    }  # fmt: skip


def seed_sessions(
    database: Database, session_table: SessionTable, *, count: int, runs_per_session: int = 3, run_bytes: int = 2048
) -> list[str]:
    """Insert ``count`` sessions with their runs, in batches, and return their ids."""
    database.create_missing_tables()
    sessions, runs = layout(database.settings, session_table)
    ids = [str(uuid.uuid4()) for _ in range(count)]
    now = int(time.time())
    per_batch = max(1, _BATCH // max(1, runs_per_session))
    for start in range(0, len(ids), per_batch):
        batch = ids[start : start + per_batch]

        def write(conn, batch=batch):
            conn.execute(insert(sessions), [_session_row(sid, now) for sid in batch])
            run_rows = [_run_row(sid, i, now, run_bytes) for sid in batch for i in range(runs_per_session)]
            if run_rows:
                conn.execute(insert(runs), run_rows)

        database.write(write)
    return ids
