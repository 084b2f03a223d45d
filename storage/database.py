"""One configured database: its engine, the tables it has, and its write transactions."""

from __future__ import annotations

import fcntl
import logging
import os
import stat
import threading
import time
from contextlib import contextmanager, nullcontext
from typing import Callable, Iterable, Iterator, TypeVar

from sqlalchemy import Connection, column, create_engine, event, select, table, tuple_
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError
from sqlalchemy.schema import CreateSchema

from storage.config import DatabaseSettings
from storage.schema import (
    COMPACTIONS_TABLE,
    PAYLOAD_TABLE,
    POSTGRES_PAYLOAD_SCHEMA,
    TOOL_RESULTS_TABLE,
    TRANSCRIPTS_TABLE,
    TableRef,
    agentfs_path,
    layout,
)

logger = logging.getLogger("storage")

T = TypeVar("T")

# PostgreSQL deadlock and serialization failures are worth retrying whole; SQLite waits
# out locks itself (busy_timeout) before reporting them.
_RETRYABLE_SQLSTATES = {"40P01", "40001"}
_WRITE_ATTEMPTS = 3

_sqlite_master = table("sqlite_master", column("type"), column("name"))
_pg_tables = table("pg_tables", column("schemaname"), column("tablename"), schema="pg_catalog")


# The courtesy is long enough for a waiting writer thread to wake and get its GIL back.
_TURN_POLL_S, _TURN_COURTESY_S = 0.0005, 0.05


def _try_lockf(fd: int, kind: int, keep: bool = True) -> bool:
    """A record lock on byte 1 (which flock does not see), if no other process holds one."""
    try:
        fcntl.lockf(fd, kind | fcntl.LOCK_NB, 1, 1)
    except OSError:  # EAGAIN or EACCES
        return False
    if not keep:
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, 1)
    return True


class WritersTurnTimeout(Exception):
    """The writers' lock file stayed held past the busy timeout; nothing was written."""


class CannotWrite(Exception):
    """The database would refuse an erase's writes now; the message is why (``read-only``,
    ``disk full``, ``locked``), without names or paths, safe to show to the key's holder."""


class UnsafeDatabaseFile(Exception):
    """The SQLite file cannot be created privately where it is configured."""


# An erase of the smallest session writes a few dozen pages to the WAL (each a frame of
# the page and 24 bytes, after the WAL's 32-byte header): with less room than that left on
# its disk it fails, and that is what "full" means here.
_WAL_FRAMES_OF_AN_ERASE = 32

_PRIVATE = 0o600
_OPEN_TO_OTHERS = stat.S_IRWXG | stat.S_IRWXO


def create_private_file(path: str) -> None:
    """Create an absent SQLite file, empty (a valid database) and 0600, before SQLite
    opens it: SQLite would create it 0644 under the usual umask, and gives its -wal and
    -shm files the database's own mode. Created so from the start, with no moment it is
    readable by others; O_EXCL never follows a symlink, so none is created through."""
    if os.path.exists(path):  # a database, perhaps through the operator's own symlink
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, _PRIVATE)
    except FileExistsError:
        if os.path.exists(path):  # another worker created it meanwhile
            return
        raise UnsafeDatabaseFile(f"{path} is a symlink to nothing: no database is created through it") from None
    try:
        os.fchmod(fd, _PRIVATE)  # the owner's read and write, whatever the umask took away
    finally:
        os.close(fd)


def files_open_to_others(path: str) -> list[tuple[str, int]]:
    """The SQLite file and its -wal and -shm, those that exist and other users may open,
    with their modes (through the operator's symlink, if the path is one)."""
    found = []
    for name in (path, f"{path}-wal", f"{path}-shm"):
        try:
            mode = stat.S_IMODE(os.stat(name).st_mode)
        except FileNotFoundError:
            continue
        if mode & _OPEN_TO_OTHERS:
            found.append((name, mode))
    return found


def _sqlstate(exc: DBAPIError) -> str | None:
    return getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)


def _is_missing_table(exc: DBAPIError) -> bool:
    return _sqlstate(exc) == "42P01" or "no such table" in str(exc.orig).lower()


def _refusal(exc: OperationalError) -> str | None:
    """``read-only`` or ``locked`` (past the busy timeout), when the error says so."""
    name, state = getattr(exc.orig, "sqlite_errorname", ""), _sqlstate(exc)
    if name.startswith("SQLITE_READONLY") or state == "25006":
        return "read-only"
    if name.startswith("SQLITE_BUSY") or state == "55P03":
        return "locked"
    return None


def cannot_write(exc: BaseException) -> bool:
    """The database refuses every write now (locked past the busy timeout, full,
    read-only, unreachable), whatever the write; not a conflict worth retrying."""
    if isinstance(exc, OperationalError):
        return _sqlstate(exc) not in _RETRYABLE_SQLSTATES and not _is_missing_table(exc)
    return isinstance(exc, WritersTurnTimeout)


class WritersTurn:
    """On a SQLite file, every worker's writer takes turns on a lock file beside it:
    SQLite's busy handler sleeps 1, 2, 5, 10 ... ms between tries, so writers fighting
    for the write lock mostly sleep, where this polls every 0.5 ms at most. The file is
    opened without following a symlink and created 0600; one not a regular file of ours
    (another user may plant and hold it) is not used. No wait exceeds the busy timeout.

    Turns are fair: a waiter holds a record lock on byte 1, and a writer with more to do
    lets it go first, else it would take the turn again before the waiter's next poll,
    batch after batch, until the waiter timed out.
    """

    def __init__(self, path: str, timeout_s: float):
        self.path, self.timeout_s = path, timeout_s
        self._in_process = threading.Lock()  # flock does not order threads sharing one fd
        self._fd: int | None = None
        self._usable = True

    def _descriptor(self) -> int | None:
        if self._fd is None and self._usable:
            problem = None
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                problem = f"cannot open it ({exc.strerror})"
            else:
                info = os.fstat(fd)
                if stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid():
                    self._fd = fd
                else:
                    os.close(fd)
                    problem = "it is not a regular file owned by this user"
            if problem:
                self._usable = False
                logger.warning("not using the writers' lock file %s: %s", self.path, problem)
        return self._fd

    def acquire(self, timeout_s: float) -> bool:
        """Take the turn, waiting at most ``timeout_s``; False if it stayed taken."""
        deadline = time.monotonic() + timeout_s
        if not self._in_process.acquire(timeout=timeout_s):
            return False
        fd, delay, waiting = self._descriptor(), 0.0001, False
        courtesy_ends = min(deadline, time.monotonic() + _TURN_COURTESY_S)
        while fd is not None and not _try_lockf(fd, fcntl.LOCK_EX, keep=False) and time.monotonic() < courtesy_ends:
            time.sleep(_TURN_POLL_S)  # another process waits: until it has taken the turn
        while fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                # Never blocks: a record lock another process holds only delays this mark.
                waiting = waiting or _try_lockf(fd, fcntl.LOCK_SH)
                if time.monotonic() >= deadline:
                    fcntl.lockf(fd, fcntl.LOCK_UN, 1, 1)
                    self._in_process.release()
                    return False
                time.sleep(delay)
                delay = min(delay * 2, _TURN_POLL_S)
        if waiting:
            fcntl.lockf(fd, fcntl.LOCK_UN, 1, 1)
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._in_process.release()

    @contextmanager
    def held(self) -> Iterator[None]:
        if not self.acquire(self.timeout_s):
            raise WritersTurnTimeout(f"the writers' lock {self.path} stayed held past the busy timeout")
        try:
            yield
        finally:
            self.release()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Database:
    def __init__(self, settings: DatabaseSettings, *, busy_timeout_ms: int = 5000):
        self.settings = settings
        self.id = settings.id
        self.busy_timeout_ms = busy_timeout_ms
        self.engine: Engine = _make_engine(settings.url, busy_timeout_ms)
        self.dialect = self.engine.dialect.name
        # Beside the database, like SQLite's own -wal and -shm files.
        path = f"{self.engine.url.database}-writer-lock"
        self.turn = WritersTurn(path, busy_timeout_ms / 1000) if self.is_sqlite_file else None
        # Tables seen to exist. Tables appear over time (Agno creates them lazily) but
        # are not expected to disappear, so only absent ones are looked up again.
        self._present: set[TableRef] = set()
        self._absent: set[TableRef] = set()
        self._schema_version: int | None = None

    @property
    def is_sqlite_file(self) -> bool:
        return self.dialect == "sqlite" and self.engine.url.database not in (None, "", ":memory:")

    def files_open_to_others(self) -> list[tuple[str, int]]:
        return files_open_to_others(self.engine.url.database) if self.is_sqlite_file else []

    def ref(self, name: str) -> TableRef:
        return TableRef(self.settings.schema if self.dialect != "sqlite" else None, name)

    def payload_ref(self, name: str) -> TableRef:
        return TableRef(POSTGRES_PAYLOAD_SCHEMA if self.dialect == "postgresql" else None, name)

    def existing(self, conn: Connection, refs: Iterable[TableRef]) -> set[TableRef]:
        """Which of ``refs`` exist, as seen by this transaction."""
        wanted = set(refs)
        if self.dialect == "sqlite" and conn.info.get("schema_checked_in") is not conn.get_transaction():
            # SQLite bumps schema_version on every CREATE or DROP: while it stands still,
            # what was absent still is, with no catalogue query per erase.
            conn.info["schema_checked_in"] = conn.get_transaction()
            version = conn.exec_driver_sql("PRAGMA schema_version").scalar()
            if version != self._schema_version:
                self._present.clear()
                self._absent.clear()
                self._schema_version = version
        unknown = wanted - self._present - self._absent
        if unknown:
            found = self._look_up(conn, unknown)
            self.remember_present(found)
            if self.dialect == "sqlite":
                self._absent |= unknown - found
        return wanted & self._present

    def cached(self, refs: Iterable[TableRef]) -> set[TableRef] | None:
        """SQLite: which of ``refs`` exist as last seen, asking nothing (None if one was never
        looked up); valid while ``schema_version`` is the database's."""
        wanted = set(refs)
        return None if wanted - self._present - self._absent else wanted & self._present

    @property
    def schema_version(self) -> int | None:
        return self._schema_version

    def unknown(self, refs: Iterable[TableRef]) -> tuple[TableRef, ...]:
        """Of ``refs``, in order, those not yet seen to exist (PostgreSQL looks them up
        in every transaction: it has no schema version to say that none appeared)."""
        return tuple(r for r in refs if r not in self._present)

    def remember_present(self, refs: Iterable[TableRef]) -> None:
        self._present.update(refs)

    def _look_up(self, conn: Connection, refs: set[TableRef]) -> set[TableRef]:
        if self.dialect == "sqlite":
            query = select(_sqlite_master.c.name).where(
                _sqlite_master.c.type == "table", _sqlite_master.c.name.in_({r.name for r in refs})
            )
            return {r for r in refs if r.name in set(conn.execute(query).scalars())}
        columns = (_pg_tables.c.schemaname, _pg_tables.c.tablename)
        query = select(*columns).where(tuple_(*columns).in_([(r.schema or "public", r.name) for r in refs]))
        found = {tuple(row) for row in conn.execute(query)}
        return {r for r in refs if (r.schema or "public", r.name) in found}

    def connect_for_writes(self) -> Connection:
        # SQLite: take the write lock up front, so the busy timeout applies to
        # acquiring it and a read can never need upgrading mid-transaction.
        return self.engine.connect().execution_options(sqlite_begin="IMMEDIATE")

    @contextmanager
    def transaction(self, conn: Connection | None = None) -> Iterator[Connection]:
        """One write transaction, in this service's writers' turn; on ``conn`` if given."""
        with self.turn.held() if self.turn else nullcontext():
            if conn is not None:
                with conn.begin():
                    yield conn
                return
            with self.connect_for_writes() as own, own.begin():
                yield own

    def write(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` in one write transaction: all of it commits, or none of it."""
        for attempt in range(1, _WRITE_ATTEMPTS + 1):
            try:
                with self.transaction() as conn:
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

    def ping(self) -> None:
        """Succeeds only if an erase could start and write now, writing nothing: the
        writers' turn and SQLite's write lock, or PostgreSQL's table locks of an erase,
        within the busy timeout; then a write that is rolled back, and room on the disk.
        ``CannotWrite`` says why not, when it is one of those."""
        try:
            turn = self.turn.held() if self.turn else nullcontext()
            with turn, self.connect_for_writes() as conn, conn.begin() as transaction:
                try:
                    self._try_a_write(conn)
                finally:
                    transaction.rollback()
        except WritersTurnTimeout as exc:
            raise CannotWrite("locked") from exc
        except OperationalError as exc:
            reason = _refusal(exc)
            if reason is None:
                raise
            raise CannotWrite(reason) from exc

    def _try_a_write(self, conn: Connection) -> None:
        if self.dialect == "sqlite":
            # A write to the header, of the value it holds, never committed: a read-only
            # file, directory or mount refuses it as it would an erase.
            version = int(conn.exec_driver_sql("PRAGMA user_version").scalar())
            conn.exec_driver_sql(f"PRAGMA user_version = {version}")
            if self.is_sqlite_file:
                self._check_room(int(conn.exec_driver_sql("PRAGMA page_size").scalar()))
            return
        if conn.exec_driver_sql("SHOW transaction_read_only").scalar() == "on":
            raise CannotWrite("read-only")  # a standby, or default_transaction_read_only
        # The locks a DELETE takes: a lock held against them (LOCK TABLE, a long DDL)
        # outlasts lock_timeout, as an erase would wait on it; agents' writes do not conflict.
        names = [name for pair in self.settings.session_tables for name in (pair.name, pair.runs_table)]
        erased = [self.ref(name) for name in (*names, TRANSCRIPTS_TABLE, COMPACTIONS_TABLE, TOOL_RESULTS_TABLE)]
        erased.append(self.payload_ref(PAYLOAD_TABLE))
        present = self.existing(conn, erased)
        for ref in (r for r in erased if r in present):
            quoted = conn.dialect.identifier_preparer.format_table(table(ref.name, schema=ref.schema))
            conn.exec_driver_sql(f"LOCK TABLE {quoted} IN ROW EXCLUSIVE MODE")

    def _check_room(self, page_size: int) -> None:
        """The WAL's disk has room for an erase's frames (a full disk fails only the write)."""
        info = os.statvfs(self.engine.url.database)
        # Blocks reserved for root are root's to write.
        free = (info.f_bfree if os.geteuid() == 0 else info.f_bavail) * info.f_frsize
        if free < 32 + _WAL_FRAMES_OF_AN_ERASE * (page_size + 24):
            raise CannotWrite("disk full")

    def truncate_wal(self) -> bool:
        """Copy the SQLite WAL into the database and cut it to nothing, without waiting; False
        if a reader or writer kept it from that. The erase overwrites the conversation in
        the file (``secure_delete``), but the WAL keeps Agno's pages while the file is open."""
        if self.turn is not None and not self.turn.acquire(0):
            return False
        raw = self.engine.raw_connection()
        try:
            cursor = raw.cursor()
            cursor.execute("PRAGMA busy_timeout=0")
            try:
                busy, _frames, _copied = cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            finally:
                cursor.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
                cursor.close()
        finally:
            raw.close()
            if self.turn is not None:
                self.turn.release()
        return busy == 0

    def create_missing_tables(self) -> None:
        """Create each configured sessions table and its runs table if absent."""
        # Serialised like any write, so workers starting together cannot race to create.
        with self.transaction() as conn:
            if self.settings.schema and self.dialect == "postgresql":
                conn.execute(CreateSchema(self.settings.schema, if_not_exists=True))
            for session_table in self.settings.session_tables:
                sessions, _runs = layout(self.settings, session_table)
                sessions.metadata.create_all(conn, checkfirst=True)
        self._present.clear()

    def dispose(self) -> None:
        self.engine.dispose()
        if self.turn is not None:
            self.turn.close()


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
        # pool_pre_ping picks up a restarted server; lock_timeout bounds a wait for rows
        # another transaction holds, as SQLite's busy timeout does.
        return create_engine(
            parsed,
            pool_pre_ping=True,
            connect_args={
                "connect_timeout": max(1, busy_timeout_ms // 1000),
                "options": f"-c lock_timeout={int(busy_timeout_ms)}",
            },
        )

    engine = create_engine(parsed, connect_args={"timeout": busy_timeout_ms / 1000})

    if parsed.database not in (None, "", ":memory:") and not parsed.query.get("uri"):

        @event.listens_for(engine, "do_connect")
        def _create_privately(_dialect, _record, _args, _kwargs):
            create_private_file(parsed.database)

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection, _record):
        # Transactions are begun explicitly below, not by the driver.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in sqlite_pragmas(busy_timeout_ms):
            cursor.execute(pragma)
        cursor.close()
        # Payloads are matched by the path AgentFS stored, which SQLite cannot compute.
        dbapi_connection.create_function("agentfs_path", 1, agentfs_path, deterministic=True)

    @event.listens_for(engine, "begin")
    def _begin(conn):
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine
