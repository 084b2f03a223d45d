"""Helpers shared by the tests: the error-shape assertion and Agno-shaped test data."""

from __future__ import annotations

import fcntl
import os
import time
import uuid
from collections import Counter
from contextlib import contextmanager

import jsonschema
from sqlalchemy import (
    JSON, BigInteger, Column, MetaData, PrimaryKeyConstraint, String, Table, Text, cast, func, insert, inspect, or_, select,
    text,
)

from agentos_sessions.contract import Contract
from agentos_sessions.settings import SessionTable
from storage import Database
from storage.schema import layout

KEY = "test-key-4f1c2a"
AUTH = {"Authorization": f"Bearer {KEY}"}

_CONTRACT = Contract.load()
_RESPONSES = _CONTRACT.document["paths"]["/sessions/{session_id}"]["delete"]["responses"]


def assert_spec_error(response, status: int, error_code: str) -> dict:
    """Every error, whatever raised it, is the spec's {detail, error_code} as application/json."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"detail", "error_code"}, body
    assert isinstance(body["detail"], str) and body["detail"].strip(), body
    assert body["error_code"] == error_code, body
    declared = _RESPONSES.get(str(status))
    if declared is not None:
        # Validate against the published 3.1 schema itself, not a converted copy.
        schema = dict(declared["content"]["application/json"]["schema"])
        schema["components"] = _CONTRACT.document["components"]
        jsonschema.Draft202012Validator(schema).validate(body)
    return body


# What holds the conversation and must always go; traces and spans go only when
# erase_traces is on.
CONVERSATION_KINDS = ("sessions", "runs", "transcripts", "compactions", "tool_results", "tool_result_payloads")


def refuse_compaction_deletes(database: Database, message: str, *, only_session: str | None = None) -> None:
    """A real database error in the middle of an erase: a trigger that fails the
    compactions delete (for one session, or for all), after runs and transcripts went."""
    with database.engine.begin() as conn:
        if database.dialect == "sqlite":
            when = f"WHEN old.session_id = '{only_session}' " if only_session else ""
            conn.execute(text(
                f"CREATE TRIGGER refuse BEFORE DELETE ON agno_compactions {when}"
                f"BEGIN SELECT RAISE(ABORT, '{message}'); END"
            ))  # fmt: skip
            return
        schema = database.settings.schema
        condition = f"old.session_id = '{only_session}'" if only_session else "true"
        conn.execute(text(
            f"CREATE FUNCTION {schema}.refuse() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN IF {condition} THEN RAISE EXCEPTION '{message}'; END IF; RETURN old; END $$"
        ))  # fmt: skip
        conn.execute(text(
            f"CREATE TRIGGER refuse BEFORE DELETE ON {schema}.agno_compactions "
            f"FOR EACH ROW EXECUTE FUNCTION {schema}.refuse()"
        ))  # fmt: skip


def wait_until(condition, timeout: float = 30, what: str = "condition") -> None:
    """Poll until ``condition()`` holds, or fail naming what never happened."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def unique_ids(prefix: str, count: int) -> list[str]:
    """Session ids no other test run uses: on PostgreSQL every schema shares fs.agno_fs."""
    run = uuid.uuid4().hex[:8]
    return [f"{prefix}-{run}-{i}" for i in range(count)]


def now() -> int:
    return int(time.time())


def side_tables(metadata: MetaData) -> dict[str, Table]:
    """The non-runs tables Agno keeps per session, with the columns an erase relies on."""
    return {
        "transcripts": Table(
            "agno_transcripts", metadata,
            Column("framework", String, primary_key=True), Column("project_key", String, primary_key=True),
            Column("session_id", String, primary_key=True), Column("subpath", String, primary_key=True),
            Column("position", BigInteger, primary_key=True), Column("entry", String, nullable=False),
            Column("agno_session_id", String, nullable=False), Column("created_at", BigInteger, nullable=False),
        ),
        "compactions": Table(
            "agno_compactions", metadata,
            Column("compaction_id", String, primary_key=True), Column("session_id", String, nullable=False),
            Column("archived_messages", String), Column("created_at", BigInteger, nullable=False),
        ),
        "tool_results": Table(
            "agno_tool_results", metadata,
            Column("result_id", String, primary_key=True), Column("namespace", String, nullable=False),
            Column("path", String, nullable=False), Column("session_id", String, nullable=False),
            Column("run_id", String, nullable=False), Column("preview", String, nullable=False),
        ),
        "traces": Table(
            "agno_traces", metadata,
            Column("trace_id", String, primary_key=True), Column("session_id", String), Column("name", String),
        ),
        "spans": Table(
            "agno_spans", metadata,
            Column("span_id", String, primary_key=True), Column("trace_id", String, nullable=False),
            Column("attributes", JSON),
        ),
    }  # fmt: skip


def payload_table(metadata: MetaData) -> Table:
    """Agno's file-system table (agno/fs/db.py), where offloaded tool results live."""
    return Table(
        "agno_fs",
        metadata,
        Column("namespace", String, nullable=False),
        Column("path", String, nullable=False),
        Column("content", Text, nullable=False),
        Column("size_bytes", BigInteger, nullable=False, default=0),
        Column("version", BigInteger, nullable=False, default=1),
        Column("created_at", BigInteger, nullable=False, default=0),
        Column("updated_at", BigInteger),
        Column("user_id", String, nullable=False, server_default=""),
        PrimaryKeyConstraint("namespace", "user_id", "path", name="pk_agno_fs"),
    )


class AgnoData:
    """Writes Agno-shaped rows for a sessions table and every table that hangs off it."""

    def __init__(self, database: Database, session_table: SessionTable):
        self.database = database
        self.sessions, self.runs = layout(database.settings, session_table)
        self.side = side_tables(self.sessions.metadata)
        payload_schema = database.payload_ref("agno_fs").schema
        self.payloads = payload_table(MetaData(schema=payload_schema))

    def create_all(self, *, with_side_tables: bool = True) -> None:
        self.database.create_missing_tables()
        if with_side_tables:
            with self.database.engine.begin() as conn:
                if self.payloads.schema:
                    conn.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{self.payloads.schema}"')
                self.sessions.metadata.create_all(conn, tables=list(self.side.values()))
                self.payloads.metadata.create_all(conn)

    def add_session(self, session_id: str | None = None, *, runs: int = 2, everything: bool = True) -> str:
        return self.add_sessions([session_id or str(uuid.uuid4())], runs=runs, everything=everything)[0]

    def write_private_text(self, session_id: str) -> bytes:
        """Put a text found nowhere else into the session's runs, as a conversation would
        be; returned as bytes, to scan the database's files for."""
        marker = f"private-{uuid.uuid4().hex}"
        with self.database.engine.begin() as conn:
            conn.execute(
                self.runs.update().where(self.runs.c.session_id == session_id),
                {"run_data": {"messages": [{"role": "user", "content": marker * 200}]}},
            )
        return marker.encode()

    def add_sessions(self, session_ids: list[str], *, runs: int = 2, everything: bool = True) -> list[str]:
        """Write sessions (and, with ``everything``, a row in each side table) in one transaction."""
        present = set(inspect(self.database.engine).get_table_names(schema=self.sessions.schema))
        rows: dict[Table, list[dict]] = {}
        for session_id in session_ids:
            for table, row in self._rows(session_id, runs, everything, present):
                rows.setdefault(table, []).append(row)
        with self.database.engine.begin() as conn:
            for table, batch in rows.items():
                conn.execute(insert(table), batch)
        return session_ids

    def _rows(self, session_id: str, runs: int, everything: bool, present: set[str]):
        yield self.sessions, {"session_id": session_id, "session_type": "agent", "created_at": now(),
                              "session_data": {"state": f"secret of {session_id}"}}  # fmt: skip
        for i in range(runs):
            yield self.runs, {"run_id": f"{session_id}-run-{i}", "session_id": session_id, "run_type": "agent",
                              "run_index": i, "run_data": {"messages": [{"role": "user", "content": "hello"}]},
                              "created_at": now()}  # fmt: skip
        if not everything:
            return
        side = {kind: t for kind, t in self.side.items() if t.name in present}
        namespace = f"ns-{uuid.uuid4().hex[:8]}"
        if "transcripts" in side:
            yield side["transcripts"], {
                "framework": "claude", "project_key": "p", "session_id": f"ext-{session_id}", "subpath": "",
                "position": 0, "entry": "verbatim turn", "agno_session_id": session_id, "created_at": now()}
        if "compactions" in side:
            yield side["compactions"], {
                "compaction_id": f"{session_id}-c", "session_id": session_id,
                "archived_messages": "folded turns", "created_at": now()}
        if "tool_results" in side:
            yield side["tool_results"], {
                "result_id": f"{session_id}-t", "namespace": namespace, "path": f"{session_id}/out.txt",
                "session_id": session_id, "run_id": f"{session_id}-run-0", "preview": "tool output"}
            yield self.payloads, {"namespace": namespace, "path": f"{session_id}/out.txt", "content": "full tool output"}
        if "traces" in side:
            yield side["traces"], {"trace_id": f"{session_id}-tr", "session_id": session_id}
            yield side["spans"], {"span_id": f"{session_id}-sp", "trace_id": f"{session_id}-tr", "attributes": {"input": "hi"}}

    def counts(self, session_id: str) -> dict[str, int]:
        """Rows still held for a session, by kind (only the kinds whose tables exist)."""
        return self.counts_many([session_id])[session_id]

    def counts_many(self, session_ids) -> dict[str, dict[str, int]]:
        """``counts`` for many sessions in a few grouped queries: checks over thousands of
        sessions took a query per table and session (over a minute on PostgreSQL)."""
        ids = list(dict.fromkeys(session_ids))
        engine = self.database.engine
        present = set(inspect(engine).get_table_names(schema=self.sessions.schema))
        payload_present = inspect(engine).has_table("agno_fs", schema=self.payloads.schema)
        result: dict[str, dict[str, int]] = {session_id: {} for session_id in ids}
        with engine.connect() as conn:

            def tally(kind, column, key=lambda session_id: session_id):
                owner = {key(session_id): session_id for session_id in ids}
                for counts in result.values():
                    counts[kind] = 0
                keys = list(owner)
                for start in range(0, len(keys), 500):
                    query = select(column, func.count()).where(column.in_(keys[start : start + 500])).group_by(column)
                    for value, count in conn.execute(query):
                        result[owner[value]][kind] = count

            tally("sessions", self.sessions.c.session_id)
            tally("runs", self.runs.c.session_id)
            side = self.side
            if side["transcripts"].name in present:
                tally("transcripts", side["transcripts"].c.agno_session_id)
            for kind in ("compactions", "tool_results", "traces"):
                if side[kind].name in present:
                    tally(kind, side[kind].c.session_id)
            if side["spans"].name in present:
                tally("spans", side["spans"].c.trace_id, key=lambda session_id: f"{session_id}-tr")
            if payload_present:
                # A session's payloads live under "<session id>/": count every prefix
                # that ends at a slash, once per path. Only paths under these sessions
                # are read: every test schema on PostgreSQL shares the payload table,
                # and reading all of it made a single count take 200 ms there.
                path = self.payloads.c.path
                paths: set[str] = set()  # a path under two sessions ("a", "a/b") is read twice
                for start in range(0, len(ids), 100):
                    under = or_(*(path.startswith(f"{i}/", autoescape=True) for i in ids[start : start + 100]))
                    paths.update(conn.execute(select(path).where(under)).scalars())
                prefixes: Counter = Counter()
                for found in paths:
                    prefixes.update(found[:position] for position, char in enumerate(found) if char == "/")
                for session_id in ids:
                    result[session_id]["tool_result_payloads"] = prefixes[session_id]
        return result


def rows_mentioning(engine, text: str, *, schemas: tuple[str | None, ...] = (None,)) -> dict[str, int]:
    """Every table in the database, every column, searched for ``text``: what residue is left."""
    inspector = inspect(engine)
    found = {}
    with engine.connect() as conn:
        for schema in schemas:
            for name in inspector.get_table_names(schema=schema):
                table = Table(name, MetaData(), schema=schema, autoload_with=conn)
                conditions = [cast(c, Text).contains(text, autoescape=True) for c in table.columns]
                hits = conn.execute(select(func.count()).select_from(table).where(or_(*conditions))).scalar_one()
                if hits:
                    found[f"{schema + '.' if schema else ''}{name}"] = hits
    return found


def data_gone(data: AgnoData, session_id: str) -> bool:
    """No row of any kind is left under the session."""
    return all(count == 0 for count in data.counts(session_id).values())


@contextmanager
def writers_lock_held(database: Database):
    """Hold the SQLite writers' lock as another worker's writer would, until the block
    ends: this worker's next batch waits at the lock."""
    other_worker = os.open(database.group_commit._lock_path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(other_worker, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(other_worker, fcntl.LOCK_UN)
        os.close(other_worker)
