"""Helpers shared by the tests, in one module: the error-shape assertion, Agno-shaped test
data, a live server, load drivers and fault injection for the proof-under-fire suites."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import random
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import jsonschema
import pytest
import uvicorn
from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    cast,
    delete,
    func,
    insert,
    inspect,
    or_,
    select,
    text,
    update,
)

from sqlalchemy.schema import CreateSchema

from agentos_sessions.contract import Contract
from storage import Database, SessionTable
from storage.schema import layout

POSTGRES_URL_ENV = "AGENTOS_TEST_POSTGRES_URL"


def postgres_url() -> str:
    """The test PostgreSQL server: a skip with a reason locally, a failure in CI."""
    url = os.environ.get(POSTGRES_URL_ENV)
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {POSTGRES_URL_ENV} is not set: PostgreSQL tests must run in CI")
        pytest.skip(f"PostgreSQL not available: set {POSTGRES_URL_ENV} to run these tests")
    return url


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


def orphan_session(data: AgnoData, session_id: str) -> None:
    """A session whose row went while its agent kept writing: here, the row deleted alone
    (on a runs table with a foreign key, its runs go with it)."""
    data.add_session(session_id)
    with data.database.engine.begin() as conn:
        conn.execute(delete(data.sessions).where(data.sessions.c.session_id == session_id))


def legacy_data_without_foreign_key(make_database, *also_sharing_the_runs: str) -> AgnoData:
    """A database whose sessions table has a runs table without a foreign key (an older
    layout), so runs can outlive their session; the sessions tables named in
    ``also_sharing_the_runs`` keep their runs in the same table."""
    custom = SessionTable.named("legacy_sessions", runs_table="legacy_runs_without_fk")
    sharing = tuple(SessionTable.named(name, runs_table=custom.runs_table) for name in also_sharing_the_runs)
    database = make_database(session_tables=(custom, *sharing))
    agno = AgnoData(database, custom)
    metadata = agno.sessions.metadata
    runs_without_fk = Table(
        custom.runs_table, MetaData(schema=metadata.schema),
        *(Column(c.name, c.type, primary_key=c.primary_key) for c in agno.runs.columns),
    )  # fmt: skip
    sessions_tables = [agno.sessions, *(AgnoData(database, t).sessions for t in sharing)]
    with database.engine.begin() as conn:
        if metadata.schema:
            conn.execute(CreateSchema(metadata.schema, if_not_exists=True))
        for sessions in sessions_tables:
            sessions.create(conn)
        runs_without_fk.create(conn)
    return agno


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


def conversation_gone(data: AgnoData, session_id: str) -> bool:
    """No row that holds the conversation is left (traces stay without erase_traces)."""
    counts = data.counts(session_id)
    return all(counts[kind] == 0 for kind in CONVERSATION_KINDS if kind in counts)


# --- a live server


# Below Linux's ephemeral range (32768 and up), so no client socket takes a port between
# the probe and the server's bind; each pytest-xdist worker draws from a slice of its own,
# so no two workers' servers are ever given the same one.
_PORTS = range(20000, 32768)


def free_port() -> int:
    index = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    width = len(_PORTS) // workers
    while True:
        port = random.randrange(_PORTS.start + index * width, _PORTS.start + (index + 1) * width)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def database_toml(settings) -> str:
    """One [[databases]] entry for a DatabaseSettings, in the config file's syntax."""
    lines = ["[[databases]]", f'id = "{settings.id}"', f'url = "{settings.url}"']
    names = ", ".join(f'{{ name = "{t.name}", runs_table = "{t.runs_table}" }}' for t in settings.session_tables)
    lines.append(f"session_tables = [{names}]")
    if settings.schema:
        lines.append(f'schema = "{settings.schema}"')
    return "\n".join(lines) + "\n"


class LiveServer:
    def __init__(
        self, workdir: Path, config_text: str, *, workers: int = 1, extra_env: dict | None = None,
        open_files: int | None = None, access_log: bool = False,
    ):  # fmt: skip
        """``open_files``: the server starts with this soft limit on descriptors, as under
        ``ulimit -n``; ``access_log``: uvicorn logs every request, as ``serve`` does by default."""
        self.open_files = open_files
        self.access_log = access_log
        self.workdir = workdir
        self.config = workdir / "agentos-sessions.toml"
        self.config.write_text(config_text)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        self.env = {**os.environ, "OS_SECURITY_KEY": KEY, **(extra_env or {})}
        self.log = workdir / "server.log"
        self.process: subprocess.Popen | None = None

    def _limit_open_files(self) -> None:
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, hard))

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "agentos_sessions.cli", "--config", str(self.config), *args]

    def start(self, timeout: float = 30) -> "LiveServer":
        with self.log.open("ab") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                self.command("serve", "--port", str(self.port), "--workers", str(self.workers),
                             *(() if self.access_log else ("--no-access-log",))),
                cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=None if self.open_files is None else self._limit_open_files,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/openapi.json", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not answer within {timeout}s:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def kill(self) -> None:
        """SIGKILL the server and its workers at once: no shutdown, no cleanup, as a crash."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def seed(self, count: int, runs: int = 2) -> list[str]:
        done = subprocess.run(
            self.command("seed", "--count", str(count), "--runs", str(runs)),
            cwd=self.workdir, env=self.env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        return done.stdout.split()

    def __enter__(self) -> "LiveServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class ThreadedServer:
    """An ASGI app under uvicorn in this process, on a free loopback port."""

    def __init__(self, app, **config):
        """``config``: more of uvicorn's settings (``http``, ...)."""
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", **config))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


# --- fault injection


def require_root(what: str) -> None:
    """Mounting needs root: skipped with a reason locally, a failure in CI (which runs as root)."""
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but not root: cannot {what}")
        pytest.skip(f"needs root to {what}")


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target; ``cut()`` behaves like the database going
    away (every connection reset, new ones refused), ``restore()`` like it coming back."""

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> "TcpProxy":
        self._listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._connections |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        if self._listener is not None:
            # shutdown first: a bare close() does not wake the thread blocked in accept(),
            # which would keep the port accepting.
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            for sock in self._connections:
                try:
                    # RST, as a stopped server's kernel would answer.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    sock.close()
                except OSError:
                    pass
            self._connections.clear()

    def restore(self) -> None:
        self.start()

    def stop(self) -> None:
        self.cut()


def _mount(what: str, *args: str) -> None:
    """``mount`` as root; refused (a container without the capability) it is a skip with
    the reason locally and a failure in CI, as not being root is."""
    require_root(what)
    done = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        reason = f"mount refused, cannot {what}: {done.stderr.strip()}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


@contextmanager
def tiny_filesystem(path: Path, size: str = "4m"):
    """A tmpfs of a few MiB mounted at ``path``, so a test can fill the disk."""
    path.mkdir(parents=True, exist_ok=True)
    _mount("mount a tmpfs to fill the disk", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@contextmanager
def read_only_view(source: Path, at: Path):
    """``source`` mounted again at ``at``, read-only: a read-only mount, as the service
    would see one (root writes through any file mode, so a chmod would prove nothing)."""
    at.mkdir(parents=True, exist_ok=True)
    _mount("mount a read-only view", "--bind", str(source), str(at))
    try:
        _mount("mount a read-only view", "-o", "remount,bind,ro", str(at))
        yield at
    finally:
        subprocess.run(["umount", "-l", str(at)], check=False)


def fill(directory: Path) -> Path:
    """Write until the filesystem is full; returns the filler to delete to make room again."""
    filler = directory / "filler"
    with filler.open("wb") as out:
        chunk = b"\0" * 65536
        try:
            while True:
                out.write(chunk)
                out.flush()
        except OSError:
            pass
    return filler


# Runs in a separate process: takes SQLite's write lock and keeps it until told to stop.
_LOCK_HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""


@contextmanager
def sqlite_write_lock_held(db_file: Path):
    holder = subprocess.Popen(
        [sys.executable, "-c", _LOCK_HOLDER, str(db_file)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield
    finally:
        holder.communicate("release\n", timeout=10)


# --- load


@dataclass
class LoadResult:
    statuses: dict[str, list] = field(default_factory=lambda: defaultdict(list))
    requests: int = 0
    seconds: float = 0.0

    def tally(self) -> Counter:
        return Counter(s for answers in self.statuses.values() for s in answers)


async def _drive(
    base_urls: list[str], session_ids: list[str], concurrency: int, timeout: float, result: LoadResult
) -> LoadResult:
    queue: asyncio.Queue = asyncio.Queue()
    for session_id in session_ids:
        queue.put_nowait(session_id)
    # Idle connections are dropped well before uvicorn's 5 s keep-alive timeout: at the
    # same 5 s both ends race to close, and a request sent on a connection the server is
    # closing fails without ever reaching it (seen once in 6,000 requests).
    # One client, and so one connection, per worker: a pool shared by 32 workers spent
    # more CPU managing itself (several ms per request) than the server spent answering.
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1, keepalive_expiry=2)
    urls = itertools.cycle(base_urls)
    clients = [httpx.AsyncClient(base_url=next(urls), headers=AUTH, timeout=timeout, limits=limits) for _ in range(concurrency)]

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            session_id = queue.get_nowait()
            try:
                response = await client.delete(f"/sessions/{session_id}")
                answer = response.status_code
            except httpx.TimeoutException:
                answer = "timeout"
            except httpx.HTTPError as exc:
                answer = f"error:{type(exc).__name__}"
            result.statuses[session_id].append(answer)
            result.requests += 1

    started = time.monotonic()
    try:
        await asyncio.gather(*(worker(client) for client in clients))
    finally:
        for client in clients:
            await client.aclose()
    result.seconds = time.monotonic() - started
    return result


def delete_concurrently(base_urls: list[str], session_ids: list[str], *, concurrency: int = 32,
                        timeout: float = 30, result: LoadResult | None = None) -> LoadResult:  # fmt: skip
    """Every id deleted once, ``concurrency`` at a time; ``result`` (if given) fills in
    as answers arrive, for a caller watching the progress from another thread."""
    return asyncio.run(_drive(base_urls, session_ids, concurrency, timeout, result or LoadResult()))


class AgentWriter(threading.Thread):
    """Inserts new sessions with runs and updates its own sessions, as a live agent would."""

    def __init__(self, data: AgnoData, prefix: str, updatable: list[str]):
        super().__init__(daemon=True)
        self.data, self.prefix, self.updatable = data, prefix, updatable
        self.stop_event = threading.Event()
        self.inserted: list[str] = []
        self.updates = 0
        self.errors: list[str] = []

    def run(self) -> None:
        sessions, runs = self.data.sessions, self.data.runs
        for n in itertools.count():
            if self.stop_event.is_set():
                return
            try:
                session_id = self.data.add_session(f"{self.prefix}-{n}", runs=2, everything=False)
                self.inserted.append(session_id)
                target = self.updatable[n % len(self.updatable)]
                with self.data.database.engine.begin() as conn:
                    conn.execute(update(sessions).where(sessions.c.session_id == target)
                                 .values(session_data={"turn": n}, updated_at=n))  # fmt: skip
                    conn.execute(update(runs).where(runs.c.session_id == target).values(status=f"turn-{n}"))
                self.updates += 1
            except Exception as exc:  # counted, and the test asserts there are none
                self.errors.append(repr(exc))
            time.sleep(0.002)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=30)


def snapshot(data: AgnoData, session_ids: list[str]) -> dict:
    """Every column of every session and run row of these sessions, for a byte-exact compare."""
    with data.database.engine.connect() as conn:
        sessions = conn.execute(
            select(data.sessions).where(data.sessions.c.session_id.in_(session_ids)).order_by(data.sessions.c.session_id)
        ).all()
        runs = conn.execute(
            select(data.runs).where(data.runs.c.session_id.in_(session_ids)).order_by(data.runs.c.run_id)
        ).all()
    return {"sessions": [tuple(r) for r in sessions], "runs": [tuple(r) for r in runs]}


# ---- OpenAPI 3.1 documents hosted through Contract: the differential proof ----------------


def collect(strategy, count: int) -> list:
    """``count`` examples of a Hypothesis strategy, the same on every run."""
    from hypothesis import HealthCheck, given, settings

    found: list = []

    @settings(max_examples=count, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(strategy)
    def gather(value):
        found.append(value)

    gather()
    return found


def any_json():
    from hypothesis import strategies as st

    scalars = st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8)
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)


def accept_any_token(_token: str, _request=None) -> dict:
    return {"sub": "tester"}


def stub_client(contract: Contract):
    """The document hosted with a stub behind every operation, answering 204 to any request
    that got through security and validation; any bearer token is accepted."""
    from connexion import AsyncApp
    from connexion.resolver import Resolver
    from starlette.responses import Response

    def stub(**_arguments):
        return Response(status_code=204)

    app = AsyncApp(__name__)
    contract.add_api(app, resolver=Resolver(lambda _operation_id: stub), strict_validation=True,
                     bearer_info_func=f"{__name__}.accept_any_token")  # fmt: skip
    return app.test_client(headers={"Authorization": "Bearer any"})


@dataclass
class Differential:
    """For every query parameter, JSON body and form body of a document: values from
    schemathesis's own generation (positive and negative cases) and arbitrary JSON, each
    sent to the stub app with the rest of the request valid. The app must accept exactly
    the values ``Draft202012Validator`` accepts on the original schema, and never 5xx."""

    contract: Contract
    per_operation: int = 10
    tried: int = 0
    schemas: int = 0
    disagreements: list = field(default_factory=list)
    skipped: list = field(default_factory=list)

    def __post_init__(self):
        import schemathesis
        from referencing import Registry
        from referencing.jsonschema import DRAFT202012
        from schemathesis.config import SchemathesisConfig

        self.client = stub_client(self.contract)
        self.registry = Registry().with_resource("urn:doc", DRAFT202012.create_resource(self.contract.document))
        self.generator = schemathesis.openapi.from_dict(self.contract.document, config=SchemathesisConfig())
        self.arbitrary = collect(any_json(), self.per_operation)

    def oracle(self, pointer: str):
        schema = {"$ref": "urn:doc#" + urllib_quote(pointer)}
        checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
        return jsonschema.Draft202012Validator(schema, registry=self.registry, format_checker=checker)

    def cases(self, template: str, method: str) -> list:
        from schemathesis.generation import GenerationMode

        operation = self.generator[template][method.upper()]
        found = []
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                found += [(mode, case) for case in collect(operation.as_strategy(generation_mode=mode), self.per_operation)]
            except Exception as exc:  # noqa: BLE001 - reported: a mode schemathesis cannot generate
                self.skipped.append(f"{method.upper()} {template}: no {mode.value} cases ({type(exc).__name__})")
        return found

    def run(self) -> Differential:
        for template, item in self.contract.document.get("paths", {}).items():
            for method, operation in item.items():
                if method in ("get", "put", "post", "delete", "patch") and isinstance(operation, dict):
                    self.operation(template, method, operation)
        return self

    def operation(self, template: str, method: str, operation: dict) -> None:
        from schemathesis.generation import GenerationMode

        base = f"/paths/{escape_pointer(template)}/{method}"
        cases = self.cases(template, method)
        parameters = {(p["in"], p["name"]): (i, p) for i, p in enumerate(operation.get("parameters", [])) if "schema" in p}
        content = operation.get("requestBody", {}).get("content", {})
        body_pointer = f"{base}/requestBody/content/application~1json/schema"
        valid = {key: self.oracle(f"{base}/parameters/{i}/schema") for key, (i, _p) in parameters.items()}
        body_oracle = self.oracle(body_pointer) if "application/json" in content else None
        # The rest of each request: the first positive case, where every part is valid.
        baseline = None
        # Without a JSON body to keep valid, a required body leaves only the body to vary.
        only_body = bool(operation.get("requestBody", {}).get("required")) and body_oracle is None
        for mode, case in cases:
            path_ok = all(
                serialize_query(v) and "/" not in str(v) and valid[("path", k)].is_valid(v) for k, v in (case.path_parameters or {}).items()
            )
            body_ok = case.media_type == "application/json" and body_oracle.is_valid(case.body) if body_oracle else True
            if mode == GenerationMode.POSITIVE and path_ok and (body_ok or not operation.get("requestBody", {}).get("required")):
                baseline = case
                break
        if baseline is None:
            self.skipped.append(f"{method.upper()} {template}: no valid baseline request")
            return
        path = template
        for name, value in (baseline.path_parameters or {}).items():
            path = path.replace("{" + name + "}", urllib_quote(serialize_query(value)[0]).replace("/", "%2F"))
        required = [(n, s) for (where, n), (_i, p) in parameters.items() if where == "query" and p.get("required")
                    for s in serialize_query(baseline.query[n])]  # fmt: skip
        body = baseline.body if body_oracle is not None and body_oracle.is_valid(baseline.body) else NO_BODY
        for where, name in parameters:
            if where != "query" or only_body:
                continue
            self.schemas += 1
            values = [c.query[name] for _m, c in cases if name in (c.query or {})] + self.arbitrary
            others = [(n, s) for n, s in required if n != name]
            for value in values:
                strings = serialize_query(value)
                if strings is None:
                    continue  # not representable in a query string (objects, nested or empty arrays)
                expected = any(valid[("query", name)].is_valid(twin) for twin in same_serialization(value))
                response = self.send(method, path, others + [(name, s) for s in strings], body)
                self.judge(f"{method.upper()} {path} ?{name}={value!r}", expected, response)
        if body_oracle is not None:
            self.schemas += 1
            bodies = [c.body for _m, c in cases if c.media_type == "application/json" and not isinstance(c.body, bytes)]
            for value in bodies + self.arbitrary:
                if json_type_of(value) is None:
                    continue
                response = self.send(method, path, required, value)
                self.judge(f"{method.upper()} {path} body {value!r}", body_oracle.is_valid(value), response)
        if FORM in content:
            generated = [c.body for _m, c in cases if c.media_type == FORM]
            self.form(method, path, required, f"{base}/requestBody/content/{escape_pointer(FORM)}/schema", generated)

    def form(self, method, path, query, pointer, generated):
        """A form's fields are strings: it is accepted when some reading of them is valid.
        Besides the generated bodies, forms of the schema's own field names with any values."""
        from hypothesis import strategies as st

        self.schemas += 1
        oracle = self.oracle(pointer)
        resolved = self.registry.resolver().lookup("urn:doc#" + urllib_quote(pointer))
        schema, schema_pointer = resolved.contents, pointer
        if "$ref" in schema and schema["$ref"].startswith("#"):
            schema_pointer = schema["$ref"][1:]
            schema = resolved.resolver.lookup(schema["$ref"]).contents
        names = sorted(schema.get("properties", {}))
        # A reading of the form is valid only if each listed field's reading is valid under
        # its property schema: the others need not be tried, which keeps the search whole.
        field_oracles = {name: self.oracle(f"{schema_pointer}/properties/{escape_pointer(name)}") for name in names}
        fields = st.none() | st.booleans() | st.integers(-9, 10**6) | st.text(max_size=6) | st.lists(st.text(max_size=4), min_size=1, max_size=2)
        own = collect(st.dictionaries(st.sampled_from(names), fields, min_size=1, max_size=6), 2 * self.per_operation) if names else []
        for value in generated + own + self.arbitrary:
            pairs = serialize_form(value)
            if not pairs:
                continue  # not representable as a form (nested values), or no body at all
            choices = [[twin for twin in same_serialization(v) if name not in field_oracles or field_oracles[name].is_valid(twin)]
                       for name, v in value.items()]  # fmt: skip
            if math.prod(len(c) for c in choices) > 4096:
                self.skipped.append(f"{method.upper()} {path}: a form of too many readings to judge")
                continue
            expected = any(oracle.is_valid(dict(zip(value, reading))) for reading in itertools.product(*choices))
            response = self.client.request(method, path, params=query, content=urlencode(pairs), headers={"content-type": FORM})
            self.judge(f"{method.upper()} {path} form {value!r}", expected, response)

    def send(self, method, path, query, body):
        if body is NO_BODY:
            return self.client.request(method, path, params=query)
        return self.client.request(method, path, params=query, content=json.dumps(body), headers={"content-type": "application/json"})

    def judge(self, what: str, expected: bool, response) -> None:
        self.tried += 1
        accepted = response.status_code < 300
        if response.status_code >= 500 or accepted != expected:
            verdict = "accept" if expected else "reject"
            self.disagreements.append(f"{what}: {response.status_code} {response.text[:200]} (expected {verdict})")


NO_BODY = object()
FORM = "application/x-www-form-urlencoded"


def serialize_form(value) -> list[tuple[str, str]] | None:
    if not isinstance(value, dict):
        return None
    pairs = []
    for name, field_value in value.items():
        texts = serialize_query(field_value)
        if texts is None:
            return None
        pairs += [(name, text) for text in texts]
    return pairs


def json_type_of(value) -> str | None:
    """The JSON type of a value, None for what JSON cannot carry (bytes, NaN, sets)."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return None
    return type(value).__name__


def escape_pointer(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def urlencode(pairs) -> str:
    from urllib.parse import urlencode as encode

    return encode(pairs)


def urllib_quote(pointer: str) -> str:
    from urllib.parse import quote

    return quote(pointer, safe="/~")


def _scalar_text(value) -> str | None:
    if isinstance(value, (dict, list)):
        return None
    return value if isinstance(value, str) else json.dumps(value)


def serialize_query(instance) -> list[str] | None:
    """Form style, exploded (OpenAPI's default for query parameters)."""
    if isinstance(instance, list):
        texts = [_scalar_text(item) for item in instance]
        return texts if texts and None not in texts else None
    text = _scalar_text(instance)
    return None if text is None else [text]


def same_serialization(instance) -> list:
    """Every JSON value a query string cannot tell from ``instance``: a string that spells a
    JSON literal and that literal (``"5"`` and ``5``), element by element in arrays, and a
    value and the array of just that value (``?a=x`` is both ``"x"`` and ``["x"]``)."""

    def twins(value) -> list:
        text = _scalar_text(value)
        found = [text]
        try:
            literal = json.loads(text)
        except ValueError:
            return found
        finite = not isinstance(literal, float) or math.isfinite(literal)
        if not isinstance(literal, (dict, list, str)) and finite and json.dumps(literal) == text:
            found.append(literal)
        return found

    scalar = instance[0] if isinstance(instance, list) and len(instance) == 1 else instance
    if isinstance(scalar, list):
        return [list(combination) for combination in itertools.product(*(twins(item) for item in scalar))]
    return twins(scalar) + [[twin] for twin in twins(scalar)]


def agentos_openapi(directory: Path) -> dict:
    """AgentOS's full OpenAPI document, as the installed agno generates it."""
    import warnings

    from agno.db.sqlite import SqliteDb
    from agno.os import AgentOS

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FastAPI warns of AgentOS's duplicate operationId
        return AgentOS(db=SqliteDb(db_file=str(directory / "agno.db")), telemetry=False).get_app().openapi()


EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "host_agentos.py"


def load_example():
    """examples/host_agentos.py as the module ``host_agentos`` (its bearer function is named so)."""
    import importlib.util

    if "host_agentos" not in sys.modules:
        spec = importlib.util.spec_from_file_location("host_agentos", EXAMPLE)
        module = importlib.util.module_from_spec(spec)
        sys.modules["host_agentos"] = module
        spec.loader.exec_module(module)
    return sys.modules["host_agentos"]
