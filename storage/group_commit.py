"""Group commit: concurrent write transactions of one process share one durable commit.

Why: with one commit per erase, every erase pays for its own BEGIN, WAL append and
fsync, and on SQLite every request thread competes for the single write lock through
SQLite's sleep-and-retry busy handler. Here one writer thread per database takes
whatever erases are waiting, runs each inside its own SAVEPOINT of one transaction,
commits once, and only then answers all of them.

Why it is exactly equivalent to one transaction per request:

- each piece of work runs alone in its savepoint, in arrival order, seeing everything
  the earlier ones did, as serial transactions would;
- work that raises (e.g. "not found") is rolled back to its savepoint, so none of its
  changes survive, and its exception is what its caller gets;
- consecutive work that offers ``run_batch`` under one ``batch_key`` (erases of one
  table layout) runs as one set of statements instead, which answers each item exactly
  as it would have been answered alone and leaves a not-found item without effect
  (``storage/erase.py``, ``_erase_many``);
- nobody is answered before the shared COMMIT has returned, i.e. is durable under the
  connection's own ``synchronous`` setting (or PostgreSQL's ``synchronous_commit``);
- anything that goes wrong with the batch as a whole (BEGIN, COMMIT, a database error
  inside some work) makes the affected work run again alone through
  ``Database.write``, with its usual retries, so such a caller gets precisely the
  answer it would have had without grouping.

With ``writer_process``, the batch's statements and COMMIT run in the database's
writer process, shared by all workers (``storage/writer_process.py``), through the same
``run_in_turn``; the writer thread here only hands the batch over and answers from what
comes back.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import queue
import sys
import threading
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Generic, TypeVar

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

if TYPE_CHECKING:
    from storage.database import Database
    from storage.writer_process import WriterProcess

T = TypeVar("T")
logger = logging.getLogger("storage.group_commit")

# Bounds how long the first erase of a batch waits for the last one's work.
MAX_BATCH = 64
# After each statement the writer must win the GIL back from its event loop, while it
# holds the lock every worker's writer queues on. CPython makes a busy thread let go
# only after the switch interval (5 ms by default). 0.5 ms got 7-19% more erases per
# second through than 5 ms, and 0.1 ms about 7% more than 0.5 ms; below that, nothing
# more (bench/README.md).
WRITER_SWITCH_INTERVAL = 0.0001

# After a commit on a SQLite file, once no work has come for this long, the writer cuts
# the WAL to nothing (``truncate_wal``); if a reader keeps it from that, it tries again
# after the second interval. Steady load never pays for it: the writer is never idle.
TRUNCATE_WAL_WHEN_IDLE_S = 0.2
TRUNCATE_WAL_RETRY_S = 1.0

_STOP = object()


class _Flag:
    """``threading.Event``'s set and is_set, without the lock and condition nobody waits on."""

    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


class _Pending(Generic[T]):
    """One caller's work. A thread caller waits on ``done``; an event-loop caller gets
    ``future`` resolved on its own loop, so it needs no threadpool thread at all."""

    __slots__ = ("work", "done", "value", "error", "loop", "future")

    def __init__(self, work: Callable[[Connection], T], loop: asyncio.AbstractEventLoop | None = None):
        self.work = work
        # Only a thread caller blocks on it; an event-loop caller awaits ``future``.
        self.done = threading.Event() if loop is None else _Flag()
        self.value: T | None = None
        self.error: BaseException | None = None
        self.loop = loop
        self.future: asyncio.Future | None = loop.create_future() if loop is not None else None


def _settle(items: list[_Pending]) -> None:
    """On the caller's event loop: hand each future its outcome."""
    for item in items:
        if item.future.cancelled():
            continue
        if item.error is not None:
            item.future.set_exception(item.error)
        else:
            item.future.set_result(item.value)


def _batchable(item: _Pending) -> bool:
    return getattr(item.work, "batch_key", None) is not None


Outcomes = list[tuple[object, BaseException | None]]


def _run_in_runs(conn: Connection, works: list[Callable[[Connection], object]]) -> Outcomes:
    """Each work's (value, error), in arrival order, running runs of work that shares a
    ``batch_key`` through its ``run_batch`` (one set of statements for all of them).

    Only ``run_batch`` may answer with an error without raising: it promises that such an
    item changed nothing. Anything raised fails the whole transaction.
    """
    outcomes: Outcomes = []
    start = 0
    while start < len(works):
        key = getattr(works[start], "batch_key", None)
        end = start + 1
        while key is not None and end < len(works) and getattr(works[end], "batch_key", None) == key:
            end += 1
        if key is not None:
            outcomes.extend(works[start].run_batch(conn, works[start:end]))
        else:
            outcomes.append((works[start](conn), None))
        start = end
    return outcomes


def _writer_lock_path(database: "Database") -> str | None:
    url = database.engine.url
    if database.dialect != "sqlite" or not url.database or url.database == ":memory:":
        return None
    # Beside the database, like SQLite's own -wal and -shm files.
    return f"{url.database}-writer-lock"


class GroupCommit:
    def __init__(self, database: "Database", max_batch: int = MAX_BATCH, *, writer_process: bool = False):
        self._database = database
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.batches = 0  # commits made, for tests and curiosity
        self.grouped = 0  # work items committed through a shared transaction
        self._lock_path = _writer_lock_path(database)
        self._lock_fd: int | None = None
        self._conn: Connection | None = None  # the writer thread's own, kept across batches
        self._stop_seen = False
        self.sent_to_writer = 0  # batches handed to the writer process, for tests
        self.remote_batches = 0  # commits the writer process made, for tests
        self._writer_process: "WriterProcess | None" = None
        self._wal_cut_at: float | None = None  # set by a commit on a SQLite file
        # Only where our writers share a lock across workers (a SQLite file): there a
        # writer waiting for its GIL keeps every worker waiting. On PostgreSQL each
        # worker's writer waits only for itself, and handing batches over cost more
        # than it saved (bench/README.md).
        if writer_process and self._lock_path is not None:
            from storage.writer_process import WriterProcess

            self._writer_process = WriterProcess(database)

    def run(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` in a transaction that may be shared; return once it is durable."""
        pending = _Pending(work)
        if not self._enqueue(pending):
            return self._database.write(work)
        pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.value  # type: ignore[return-value]

    async def run_async(self, work: Callable[[Connection], T]) -> T:
        """``run`` for a coroutine: the event loop is never blocked and no thread waits."""
        pending = _Pending(work, asyncio.get_running_loop())
        if not self._enqueue(pending):
            from starlette.concurrency import run_in_threadpool

            return await run_in_threadpool(self._database.write, work)
        # Shielded: a caller that goes away must not cancel an erase already queued;
        # the erase then completes (or not) exactly as if the caller had waited.
        return await asyncio.shield(pending.future)

    def _enqueue(self, pending: _Pending) -> bool:
        with self._lock:
            if self._closed:
                return False
            if self._thread is None:
                # Only ever shortened: the interval is the whole process's.
                sys.setswitchinterval(min(sys.getswitchinterval(), WRITER_SWITCH_INTERVAL))
                # Started on first use, in the process that serves (workers are spawned).
                self._thread = threading.Thread(target=self._loop, name=f"group-commit-{self._database.id}", daemon=True)
                self._thread.start()
            self._queue.put(pending)
        return True

    def close(self) -> None:
        with self._lock:
            self._closed = True
            thread = self._thread
            if thread is not None:
                self._queue.put(_STOP)
        if thread is not None:
            thread.join()
        if self._writer_process is not None:
            self._writer_process.close()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @contextmanager
    def _batch_transaction(self):
        """One write transaction on the writer's own connection.

        The connection is kept from batch to batch: checking one out of the pool costs a
        round trip on PostgreSQL (``pool_pre_ping``) and Python work on both. After a
        database error it is dropped, so a server that went away costs one failed batch,
        whose erases are then redone alone through ``Database.write`` (which pings), and
        the next batch connects afresh.
        """
        if self._conn is None:
            self._conn = self._database.connect_for_writes()
        try:
            with self._conn.begin():
                yield self._conn
        except DBAPIError:
            # SQLAlchemy has already invalidated it if the error was a disconnect.
            conn, self._conn = self._conn, None
            conn.close()
            raise

    @contextmanager
    def _writers_in_turn(self):
        """On SQLite, the writer threads of all worker processes queue on one OS lock.

        SQLite's own busy handler polls with growing sleeps (1, 2, 5, 10 ... ms), so two
        workers fighting for the write lock mostly sleep; a blocking flock hands the
        lock over the moment it is released. It only orders our own writers: anyone
        else still meets SQLite's lock and busy timeout as before. Without a lock file
        (read-only directory, in-memory database) SQLite's busy handler does it all.
        """
        if self._lock_path is None:
            yield
            return
        if self._lock_fd is None:
            try:
                self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError:
                self._lock_path = None
                yield
                return
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _loop(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=self._until_wal_cut())
            except queue.Empty:
                self._cut_wal()
                continue
            if first is _STOP:
                self._cut_wal_if_due()
                return
            batch = [first]
            self._top_up(batch)
            try:
                self._commit(batch)
            except BaseException as exc:  # never leave a caller waiting forever
                logger.exception("group commit failed unexpectedly")
                for item in batch:
                    if not item.done.is_set():
                        item.error = exc
                        item.done.set()
            self._wake(batch)
            if self._lock_path is not None:
                self._wal_cut_at = time.monotonic() + TRUNCATE_WAL_WHEN_IDLE_S
            if self._stop_seen:
                self._cut_wal_if_due()
                return

    def _until_wal_cut(self) -> float | None:
        return None if self._wal_cut_at is None else max(0.0, self._wal_cut_at - time.monotonic())

    def _cut_wal_if_due(self) -> None:
        if self._wal_cut_at is not None:
            self._cut_wal()

    def _cut_wal(self) -> None:
        try:
            retry = not self.truncate_wal()  # a reader kept it from completing
        except Exception:
            # Not retried until the next commit: a WAL that cannot be checkpointed at all
            # (a read-only directory) would otherwise log this every second.
            logger.warning("could not truncate the WAL of database %s", self._database.id, exc_info=True)
            retry = False
        self._wal_cut_at = time.monotonic() + TRUNCATE_WAL_RETRY_S if retry else None

    def _top_up(self, batch: list[_Pending]) -> None:
        """Add whatever is waiting, up to the batch limit; a stop ends the loop after it."""
        while len(batch) < self._max_batch and not self._stop_seen:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is _STOP:
                self._stop_seen = True
            else:
                batch.append(item)

    @staticmethod
    def _wake(batch: list[_Pending]) -> None:
        """Answer event-loop callers: one wake-up per loop and batch, not per request."""
        by_loop: dict[asyncio.AbstractEventLoop, list[_Pending]] = {}
        for item in batch:
            if item.loop is not None:
                by_loop.setdefault(item.loop, []).append(item)
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, items)
            except RuntimeError:  # that loop is closed: nobody is waiting any more
                pass

    def _commit(self, batch: list[_Pending]) -> None:
        # Optimistic first: when no work raises (the usual case; run_batch answers a
        # not-found without raising), no savepoints are needed, and savepoints cost
        # SQLite a sub-journal copy of every page an erase touches. The first raise
        # rolls the whole transaction back, uncommitted and unanswered, and the batch is
        # redone with savepoints.
        if (len(batch) > 1 or _batchable(batch[0])) and self._commit_optimistically(batch):
            return
        self._commit_with_savepoints(batch)

    def run_in_turn(self, works: Callable[[], list[Callable[[Connection], object]]]) -> Outcomes:
        """Run the works in one transaction, in this writer's turn, and return their
        outcomes; ``works`` is asked for them once the turn has come. The writer
        process runs its batches through it too."""
        with self._writers_in_turn():
            batch = works()
            with self._batch_transaction() as conn:
                return _run_in_runs(conn, batch)

    def truncate_wal(self) -> bool:
        """In this writer's turn, copy the whole SQLite WAL into the database and cut the
        WAL to nothing; False if a reader or another writer kept it from completing.

        Why: an erase overwrites the conversation in the database file (``secure_delete``),
        but the WAL still holds the pages Agno wrote it into, and frames past the point
        where the WAL is reused stay in the file for as long as the database is open. It
        never waits for a reader: the next try comes later.
        """
        with self._writers_in_turn():
            raw = self._database.engine.raw_connection()
            try:
                cursor = raw.cursor()
                cursor.execute("PRAGMA busy_timeout=0")
                try:
                    busy, _frames, _copied = cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                finally:
                    cursor.execute(f"PRAGMA busy_timeout={int(self._database.busy_timeout_ms)}")
                    cursor.close()
            finally:
                raw.close()
        return busy == 0

    def _topped_up_works(self, batch: list[_Pending]) -> list[Callable[[Connection], object]]:
        # Erases that came in while another worker's writer held the lock join this
        # batch: the lock is the bottleneck, and a turn's fixed costs (BEGIN, the schema
        # check, COMMIT's fsync) are then shared by more.
        self._top_up(batch)
        return [item.work for item in batch]

    def _commit_optimistically(self, batch: list[_Pending]) -> bool:
        try:
            outcomes = self._run_in_writer_process(batch)
            if outcomes is None:
                outcomes = self.run_in_turn(lambda: self._topped_up_works(batch))
        except Exception:
            return False
        self.batches += 1
        self.grouped += len(batch)
        for item, (value, error) in zip(batch, outcomes):
            item.value, item.error = value, error
            item.done.set()
        return True

    def _run_in_writer_process(self, batch: list[_Pending]) -> Outcomes | None:
        """The batch's outcomes from the writer process, or None to run it here: no
        writer process, not ready yet, or work it cannot carry (an audit row per erase).

        If the writer process fails or dies, this raises and the batch is redone here,
        like any batch whose shared commit failed. A writer killed after its COMMIT but
        before its answer leaves those erases done and unanswered; redone, they find
        nothing and answer 404, the same answer a client's retry would get.
        """
        writer = self._writer_process
        if writer is None or not writer.ready():
            return None
        self._top_up(batch)
        portable = [getattr(item.work, "portable", None) for item in batch]
        if None in portable:
            return None
        self.sent_to_writer += 1
        outcomes = writer.run(portable)
        self.remote_batches += 1
        return outcomes

    def _commit_with_savepoints(self, batch: list[_Pending]) -> None:
        alone: list[_Pending] = []
        try:
            with self._writers_in_turn(), self._batch_transaction() as conn:
                for item in batch:
                    savepoint = conn.begin_nested()
                    try:
                        item.value = item.work(conn)
                    except DBAPIError:
                        # A database error may deserve Database.write's retries (a table
                        # dropped since it was cached, a deadlock): give it its own turn.
                        savepoint.rollback()
                        alone.append(item)
                    except Exception as exc:
                        savepoint.rollback()
                        item.error = exc
                    else:
                        savepoint.commit()
        except Exception:
            # Nothing of this batch was committed; each caller gets its own transaction.
            alone = batch
        else:
            self.batches += 1
            self.grouped += len(batch) - len(alone)
            for item in batch:
                if item not in alone:
                    item.done.set()
        for item in alone:
            item.value, item.error = None, None
            try:
                item.value = self._database.write(item.work)
            except Exception as exc:
                item.error = exc
            item.done.set()
