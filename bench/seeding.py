"""Fast bulk data in Agno 3.x's layout, straight through the drivers.

The service's own ``storage.seed`` goes through SQLAlchemy in 500-row batches, which
is right for demos but takes minutes at a million sessions. Here the tables are still
created by the service's code (so the layout and indexes are exactly what it serves),
then rows are streamed with ``executemany`` in big transactions (SQLite) or ``COPY``
(PostgreSQL), with secondary indexes rebuilt afterwards for the initial bulk load.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import time
import uuid
from dataclasses import dataclass
from typing import Iterable, Iterator

from storage import DatabaseSettings, SessionTable
from storage.database import Database

SESSION_TABLE = SessionTable.named("agno_sessions")
SESSION_COLUMNS = (
    "session_id", "session_type", "agent_id", "team_id", "workflow_id", "user_id", "session_data",
    "agent_data", "team_data", "workflow_data", "metadata", "summary", "created_at", "updated_at",
)
RUN_COLUMNS = (
    "run_id", "session_id", "run_type", "agent_id", "team_id", "workflow_id", "user_id", "parent_run_id",
    "status", "run_index", "run_data", "created_at", "updated_at",
)
RUN_BYTES = 2048


def _text(size: int, turn: int, rng: random.Random) -> str:
    words = ("order", "refund", "shipping", "invoice", "account", "delivery", "address", "thanks",
             "the", "agent", "checked", "your", "request", "and", "found", "that", "it", "was", "sent")
    out: list[str] = [f"Turn {turn}:"]
    length = len(out[0])
    while length < size:
        word = rng.choice(words)
        out.append(word)
        length += len(word) + 1
    return " ".join(out)[:size]


def _run_template(run_bytes: int, rng: random.Random) -> str:
    """One run's JSON as Agno stores it, with placeholders for the ids."""
    half = run_bytes // 2
    document = {
        "run_id": "@RUN@",
        "session_id": "@SESSION@",
        "agent_id": "support-agent",
        "user_id": "user-42",
        "status": "COMPLETED",
        "model": "gpt-4o-mini",
        "model_provider": "OpenAI",
        "input": {"input_content": _text(120, 0, rng)},
        "content": _text(200, 1, rng),
        "content_type": "str",
        "messages": [
            {"role": "system", "content": "You are a helpful support agent.", "created_at": 1764340000},
            {"role": "user", "content": _text(half - 400, 2, rng), "created_at": 1764340001},
            {"role": "assistant", "content": _text(half - 400, 3, rng), "created_at": 1764340003,
             "metrics": {"input_tokens": 412, "output_tokens": 188, "total_tokens": 600, "duration": 1.82}},
        ],
        "metrics": {"input_tokens": 412, "output_tokens": 188, "total_tokens": 600, "time_to_first_token": 0.41},
        "events": [{"event": "RunStarted", "created_at": 1764340001}, {"event": "RunCompleted", "created_at": 1764340003}],
    }
    return json.dumps(document)


@dataclass
class Shape:
    runs_per_session: int = 3
    run_bytes: int = RUN_BYTES

    def __post_init__(self) -> None:
        rng = random.Random(7)
        self.run_json = _run_template(self.run_bytes, rng)
        self.session_data = json.dumps({"session_name": "Order help", "session_state": {"cart": ["sku-1", "sku-2"]}})
        self.agent_data = json.dumps({"name": "Support Agent", "model": {"provider": "OpenAI", "id": "gpt-4o-mini"}})
        self.metadata = json.dumps({"source": "agentos-sessions bench"})
        self.summary = json.dumps({"summary": "The user asked about a late order; the agent found it and explained."})

    def session_row(self, session_id: str, now: int) -> tuple:
        return (session_id, "agent", "support-agent", None, None, "user-42", self.session_data, self.agent_data,
                None, None, self.metadata, self.summary, now, now)

    def run_rows(self, session_id: str, now: int) -> Iterator[tuple]:
        for index in range(self.runs_per_session):
            run_id = str(uuid.uuid4())
            data = self.run_json.replace("@RUN@", run_id, 1).replace("@SESSION@", session_id, 1)
            yield (run_id, session_id, "agent", "support-agent", None, "user-42", None, None, "COMPLETED", index,
                   data, now, now)


def new_ids(count: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(count)]


def database_settings(url: str) -> DatabaseSettings:
    schema = "ai" if url.startswith("postgresql") else None
    return DatabaseSettings(id="bench", url=url, schema=schema)


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def sqlite_path(url: str) -> str:
    return url.removeprefix("sqlite:///")


def reset(url: str) -> None:
    """An empty database with the service's tables (and nothing else)."""
    if url.startswith("sqlite"):
        path = sqlite_path(url)
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)
    else:
        import psycopg

        with psycopg.connect(_pg_dsn(url), autocommit=True) as conn:
            conn.execute("DROP SCHEMA IF EXISTS ai CASCADE")
    database = Database(database_settings(url))
    try:
        database.create_missing_tables()
    finally:
        database.dispose()


def _pg_dsn(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def insert(url: str, ids: list[str], shape: Shape, *, bulk: bool = False) -> float:
    """Insert sessions with their runs; returns seconds taken.

    ``bulk`` drops the secondary indexes first and rebuilds them at the end (sorting
    once beats millions of random B-tree inserts); use it only on a fresh table.
    """
    started = time.perf_counter()
    if url.startswith("sqlite"):
        _insert_sqlite(sqlite_path(url), ids, shape, bulk)
    else:
        _insert_postgres(_pg_dsn(url), ids, shape, bulk)
    return time.perf_counter() - started


def _insert_sqlite(path: str, ids: list[str], shape: Shape, bulk: bool) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        # Seeding is not what is measured; the erase runs with synchronous=FULL.
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-262144")
        indexes = []
        if bulk:
            indexes = conn.execute(
                "SELECT name, sql FROM sqlite_master WHERE type='index' AND sql IS NOT NULL"
            ).fetchall()
            for name, _sql in indexes:
                conn.execute(f'DROP INDEX "{name}"')
        now = int(time.time())
        sessions_sql = f"INSERT INTO agno_sessions ({', '.join(SESSION_COLUMNS)}) VALUES ({', '.join('?' * len(SESSION_COLUMNS))})"
        runs_sql = f"INSERT INTO agno_runs ({', '.join(RUN_COLUMNS)}) VALUES ({', '.join('?' * len(RUN_COLUMNS))})"
        per_txn = max(1, 100_000 // max(1, shape.runs_per_session))
        for batch in _chunks(ids, per_txn):
            conn.execute("BEGIN")
            conn.executemany(sessions_sql, (shape.session_row(sid, now) for sid in batch))
            conn.executemany(runs_sql, (row for sid in batch for row in shape.run_rows(sid, now)))
            conn.execute("COMMIT")
        for _name, sql in indexes:
            conn.execute(sql)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def _insert_postgres(dsn: str, ids: list[str], shape: Shape, bulk: bool) -> None:
    import psycopg

    with psycopg.connect(dsn) as conn:
        conn.execute("SET synchronous_commit = off")
        indexes = []
        if bulk:
            indexes = conn.execute(
                "SELECT i.indexname, i.indexdef FROM pg_indexes i JOIN pg_class c ON c.relname = i.indexname "
                "JOIN pg_index x ON x.indexrelid = c.oid WHERE i.schemaname = 'ai' AND NOT x.indisprimary"
            ).fetchall()
            for name, _sql in indexes:
                conn.execute(f'DROP INDEX ai."{name}"')
        now = int(time.time())
        per_txn = max(1, 50_000 // max(1, shape.runs_per_session))
        for batch in _chunks(ids, per_txn):
            with conn.cursor() as cur:
                with cur.copy(f"COPY ai.agno_sessions ({', '.join(SESSION_COLUMNS)}) FROM STDIN") as copy:
                    for sid in batch:
                        copy.write_row(shape.session_row(sid, now))
                with cur.copy(f"COPY ai.agno_runs ({', '.join(RUN_COLUMNS)}) FROM STDIN") as copy:
                    for sid in batch:
                        for row in shape.run_rows(sid, now):
                            copy.write_row(row)
            conn.commit()
        for _name, sql in indexes:
            conn.execute(sql)
        conn.commit()  # statistics: see vacuum(), which the bench runs after every insert


def vacuum(url: str) -> None:
    """PostgreSQL: vacuum and analyze the bench tables now (SQLite: nothing to do)."""
    if url.startswith("sqlite"):
        return
    import psycopg

    with psycopg.connect(_pg_dsn(url), autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) ai.agno_sessions, ai.agno_runs")


def remove(url: str, ids: Iterable[str]) -> None:
    """Delete sessions and their runs in bulk (cleanup between measurements)."""
    ids = list(ids)
    if not ids:
        return
    if url.startswith("sqlite"):
        conn = sqlite3.connect(sqlite_path(url), isolation_level=None)
        try:
            conn.execute("PRAGMA synchronous=OFF")
            conn.execute("BEGIN")
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS gone (id TEXT PRIMARY KEY)")
            conn.execute("DELETE FROM gone")
            conn.executemany("INSERT INTO gone VALUES (?)", ((i,) for i in ids))
            conn.execute("DELETE FROM agno_runs WHERE session_id IN (SELECT id FROM gone)")
            conn.execute("DELETE FROM agno_sessions WHERE session_id IN (SELECT id FROM gone)")
            conn.execute("COMMIT")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
    else:
        import psycopg

        with psycopg.connect(_pg_dsn(url)) as conn:
            conn.execute("SET synchronous_commit = off")
            conn.execute("DELETE FROM ai.agno_runs WHERE session_id = ANY(%s)", (ids,))
            conn.execute("DELETE FROM ai.agno_sessions WHERE session_id = ANY(%s)", (ids,))
            conn.commit()
