"""One configured database: its engine, its connection settings and its write transactions."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, TypeVar

from sqlalchemy import Connection, column, create_engine, event, select, table, text, tuple_
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.schema import CreateSchema
from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError

from agentos_sessions.settings import DatabaseSettings
from storage.group_commit import GroupCommit
from storage.schema import POSTGRES_PAYLOAD_SCHEMA, TableRef, layout

logger = logging.getLogger("storage")

T = TypeVar("T")

# Transient conflicts worth retrying whole: PostgreSQL deadlock and serialization
# failures. SQLite waits out locks itself (busy_timeout) before reporting them.
_RETRYABLE_SQLSTATES = {"40P01", "40001"}
_WRITE_ATTEMPTS = 3

_sqlite_master = table("sqlite_master", column("type"), column("name"))
_pg_tables = table("pg_tables", column("schemaname"), column("tablename"), schema="pg_catalog")


class StaleTableCache(Exception):
    """A table this process had seen is gone; the transaction is retried after a re-check."""


def _sqlstate(exc: DBAPIError) -> str | None:
    return getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)


def _is_missing_table(exc: DBAPIError) -> bool:
    message = str(exc.orig).lower()
    return _sqlstate(exc) == "42P01" or "no such table" in message


class Database:
    def __init__(
        self,
        settings: DatabaseSettings,
        *,
        busy_timeout_ms: int = 5000,
        group_commit: bool = False,
        writer_process: bool = False,
    ):
        self.settings = settings
        self.id = settings.id
        self.busy_timeout_ms = busy_timeout_ms
        self.engine: Engine = _make_engine(settings.url, busy_timeout_ms)
        self.dialect = self.engine.dialect.name
        self.group_commit = GroupCommit(self, writer_process=writer_process) if group_commit else None
        # Tables seen to exist. Tables appear over time (Agno creates them lazily) but
        # are not expected to disappear, so only absent ones are looked up again.
        self._present: set[TableRef] = set()
        self._absent: set[TableRef] = set()
        self._schema_version: int | None = None

    def ref(self, name: str) -> TableRef:
        return TableRef(self.settings.schema if self.dialect != "sqlite" else None, name)

    def payload_ref(self, name: str) -> TableRef:
        return TableRef(POSTGRES_PAYLOAD_SCHEMA if self.dialect == "postgresql" else None, name)

    @property
    def stores_nul(self) -> bool:
        """PostgreSQL text cannot hold NUL, so an id containing one cannot exist there."""
        return self.dialect != "postgresql"

    def existing(self, conn: Connection, refs: Iterable[TableRef]) -> set[TableRef]:
        wanted = set(refs)
        if self.dialect == "sqlite" and conn.info.get("schema_checked_in") is not conn.get_transaction():
            # SQLite bumps schema_version on every CREATE or DROP, so while it stands
            # still what was found absent is still absent: no catalogue query per erase.
            # Once per transaction is enough: it holds the write lock, so no schema
            # change can happen inside it.
            conn.info["schema_checked_in"] = conn.get_transaction()
            version = conn.exec_driver_sql("PRAGMA schema_version").scalar()
            if version != self._schema_version:
                self._present.clear()
                self._absent.clear()
                self._schema_version = version
        unknown = wanted - self._present - self._absent
        if unknown:
            found = self._look_up(conn, unknown)
            self._present |= found
            if self.dialect == "sqlite":
                self._absent |= unknown - found
        return wanted & self._present

    def known(self, refs: Iterable[TableRef]) -> tuple[set[TableRef], tuple[TableRef, ...]]:
        """Of ``refs``: those seen to exist, and the rest, in order, still to look up."""
        refs = tuple(refs)
        return {r for r in refs if r in self._present}, tuple(r for r in refs if r not in self._present)

    def remember_present(self, refs: Iterable[TableRef]) -> None:
        """Tables a caller's own look-up found (see ``existing``)."""
        self._present.update(refs)

    def _look_up(self, conn: Connection, refs: set[TableRef]) -> set[TableRef]:
        if self.dialect == "sqlite":
            names = {r.name for r in refs}
            rows = conn.execute(
                select(_sqlite_master.c.name).where(_sqlite_master.c.type == "table", _sqlite_master.c.name.in_(names))
            )
            found = {row.name for row in rows}
            return {r for r in refs if r.name in found}
        pairs = [(r.schema or "public", r.name) for r in refs]
        rows = conn.execute(
            select(_pg_tables.c.schemaname, _pg_tables.c.tablename).where(
                tuple_(_pg_tables.c.schemaname, _pg_tables.c.tablename).in_(pairs)
            )
        )
        found = {(row.schemaname, row.tablename) for row in rows}
        return {r for r in refs if (r.schema or "public", r.name) in found}

    def connect_for_writes(self) -> Connection:
        # SQLite: take the write lock up front, so the busy timeout applies to
        # acquiring it and a read can never need upgrading mid-transaction.
        return self.engine.connect().execution_options(sqlite_begin="IMMEDIATE")

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        with self.connect_for_writes() as conn, conn.begin():
            yield conn

    def write(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` in one write transaction: all of it commits, or none of it."""
        for attempt in range(1, _WRITE_ATTEMPTS + 1):
            try:
                with self._transaction() as conn:
                    return work(conn)
            except (OperationalError, ProgrammingError) as exc:
                last = attempt == _WRITE_ATTEMPTS
                if _is_missing_table(exc) and self._present and not last:
                    self._present.clear()
                    continue
                if _sqlstate(exc) in _RETRYABLE_SQLSTATES and not last:
                    time.sleep(0.005 * attempt)
                    continue
                raise
        raise AssertionError("unreachable")

    def write_shared(self, work: Callable[[Connection], T]) -> T:
        """Like ``write``, but concurrent callers may share one commit (group commit).

        Only for work that is correct inside a savepoint of a shared transaction and
        returns or raises the same way as alone; see ``storage/group_commit.py``.
        """
        if self.group_commit is None:
            return self.write(work)
        return self.group_commit.run(work)

    async def write_shared_async(self, work: Callable[[Connection], T]) -> T:
        """``write_shared`` for the event loop: with group commit no thread waits at all."""
        if self.group_commit is None:
            from starlette.concurrency import run_in_threadpool

            return await run_in_threadpool(self.write, work)
        return await self.group_commit.run_async(work)

    def ping(self) -> None:
        """Succeeds only if an erase could start now: on SQLite that means getting the
        write lock, so a lock held past the busy timeout shows as unhealthy."""
        with self._transaction() as conn:
            conn.execute(text("SELECT 1"))

    def create_missing_tables(self) -> None:
        """Create each configured sessions table and its runs table if absent."""
        # Serialised like any write, so workers starting together cannot race to create.
        with self._transaction() as conn:
            if self.settings.schema and self.dialect == "postgresql":
                conn.execute(CreateSchema(self.settings.schema, if_not_exists=True))
            for session_table in self.settings.session_tables:
                sessions, runs = layout(self.settings, session_table)
                sessions.metadata.create_all(conn, checkfirst=True)
        self._present.clear()

    def dispose(self) -> None:
        if self.group_commit is not None:
            self.group_commit.close()
        self.engine.dispose()


def sqlite_pragmas(busy_timeout_ms: int) -> tuple[str, ...]:
    """Every SQLite connection's settings; the benchmark's storage ceiling uses them too."""
    return (
        "PRAGMA journal_mode=WAL",
        "PRAGMA foreign_keys=ON",
        f"PRAGMA busy_timeout={int(busy_timeout_ms)}",
        # Every acknowledged erase survives a power cut, not only a process crash.
        "PRAGMA synchronous=FULL",
        # Deleted rows are overwritten, not left readable in free pages; SQLite's
        # default for this depends on how it was built.
        "PRAGMA secure_delete=ON",
    )


def _make_engine(url: str, busy_timeout_ms: int) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        # pool_pre_ping lets a server that was restarted be used again without a restart here.
        return create_engine(
            parsed,
            pool_pre_ping=True,
            connect_args={"connect_timeout": max(1, busy_timeout_ms // 1000)},
        )

    engine = create_engine(parsed, connect_args={"timeout": busy_timeout_ms / 1000})

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection, _record):
        # Transactions are begun explicitly below, not by the driver.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in sqlite_pragmas(busy_timeout_ms):
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine
