"""Group commit: one writer thread per database commits what is waiting, together.

In the shape of Datasette's ``execute_write_fn``: callers put work on one queue; one
thread per database runs whatever is waiting (up to ``max_batch`` items) in one
transaction on its own connection, commits, and only then answers each caller on its
event loop. Why: a batch shares one BEGIN, WAL append and fsync, where erases committed
one by one each pay for theirs and queue for the database's one write lock.

Every answer is the one a transaction of its own would give (``storage/erase.py``), and
nobody is answered before the COMMIT returned. If the batch fails, nothing of it is
kept: when the database cannot take any write (locked past the busy timeout, full,
read-only, gone), every waiting item gets that error at once, as each would alone;
otherwise each runs again alone through ``Database.write``, with its usual retries."""

from __future__ import annotations

import asyncio
import logging
import queue
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from storage.database import Database, cannot_write

W = TypeVar("W")
R = TypeVar("R")
# Answers a batch's items in order as transactions of their own would (a session not
# found is an answer, not an exception); it may answer only the first (at least one) and
# leave the rest for the next transaction.
RunBatch = Callable[[Connection, list[W]], list[R]]
Outcome = tuple[object, BaseException | None]

logger = logging.getLogger("storage.writer")

MAX_BATCH = 64
# Once idle this long after a commit on a SQLite file, the writer cuts the WAL to nothing
# (``Database.truncate_wal``), trying again after the second interval if kept from it.
TRUNCATE_WAL_WHEN_IDLE_S = 0.2
TRUNCATE_WAL_RETRY_S = 1.0

_STOP = object()


@dataclass(eq=False)
class _Pending:
    work: object
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future


class Writer(Generic[W, R]):
    def __init__(self, database: Database, run_batch: RunBatch, *, max_batch: int = MAX_BATCH):
        self.database = database
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.batches = 0  # shared transactions committed, for tests
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._conn: Connection | None = None  # the writer's own, kept across batches
        self._wal_cut_at: float | None = None
        self._stopping = False

    async def submit(self, work: W) -> R:
        """Run ``work`` in a transaction that may be shared; return once it is durable."""
        loop = asyncio.get_running_loop()
        pending = _Pending(work, loop, loop.create_future())
        with self._lock:
            closed = self._closed
            if not closed:
                if self._thread is None:
                    # Started on first use, in the process that serves (workers are spawned).
                    self._thread = threading.Thread(target=self._run, name=f"writer-{self.database.id}", daemon=True)
                    self._thread.start()
                self._queue.put(pending)
        if closed:
            return await asyncio.to_thread(self._alone, work)
        # Shielded: a caller that goes away must not cancel an erase already queued; it
        # completes (or not) exactly as if the caller had waited.
        return await asyncio.shield(pending.future)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            thread = self._thread
            if thread is not None:
                self._queue.put(_STOP)
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        batch: list[_Pending] = []  # what the last transaction left for the next
        while batch or not self._stopping:
            if not batch:
                try:
                    first = self._queue.get(timeout=self._until_wal_cut())
                except queue.Empty:
                    self._cut_wal()
                    continue
                if first is _STOP:
                    break
                batch = [first]
            try:
                outcomes = self._commit(batch)
            except BaseException as exc:  # never leave a caller waiting forever
                logger.exception("group commit failed unexpectedly")
                outcomes = [(None, exc)] * len(batch)
            _answer(batch[: len(outcomes)], outcomes)
            batch = batch[len(outcomes) :]
            if self.database.is_sqlite_file:
                self._wal_cut_at = time.monotonic() + TRUNCATE_WAL_WHEN_IDLE_S
        if self._wal_cut_at is not None:
            self._cut_wal()
        if self._conn is not None:
            self._conn.close()

    def _top_up(self, batch: list[_Pending], limit: int | None = None) -> None:
        while len(batch) < (limit or self.max_batch) and not self._stopping:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is _STOP:
                self._stopping = True
            else:
                batch.append(item)

    def _commit(self, batch: list[_Pending]) -> list[Outcome]:
        self._top_up(batch)
        try:
            if self._conn is None:
                self._conn = self.database.connect_for_writes()
            with self.database.transaction(self._conn) as conn:
                # Taken once the turn has come: what arrived while another worker's
                # writer held it shares this commit too.
                self._top_up(batch)
                values = self.run_batch(conn, [pending.work for pending in batch])
        except Exception as exc:
            if isinstance(exc, DBAPIError) and self._conn is not None:
                # Dropped, so a server that went away costs one failed batch.
                self._conn.close()
                self._conn = None
            if cannot_write(exc) and not getattr(exc, "connection_invalidated", False):
                # What came while this batch waited would wait as long: the same answer now.
                self._top_up(batch, limit=sys.maxsize)
                return [(None, exc)] * len(batch)
            return self._each_alone([pending.work for pending in batch])
        self.batches += 1
        return [(value, None) for value in values]

    def _each_alone(self, works: list) -> list[Outcome]:
        outcomes: list[Outcome] = []
        failing: BaseException | None = None
        for work in works:
            if failing is not None:
                outcomes.append((None, failing))
                continue
            try:
                outcomes.append((self._alone(work), None))
            except Exception as exc:
                outcomes.append((None, exc))
                if cannot_write(exc):
                    # The rest would only wait for the same answer, one after another.
                    failing = exc
        return outcomes

    def _alone(self, work: W) -> R:
        return self.database.write(lambda conn: self.run_batch(conn, [work])[0])

    def _until_wal_cut(self) -> float | None:
        return None if self._wal_cut_at is None else max(0.0, self._wal_cut_at - time.monotonic())

    def _cut_wal(self) -> None:
        try:
            retry = not self.database.truncate_wal()
        except Exception:
            # Not retried until the next commit, or a read-only directory logs it every second.
            logger.warning("could not truncate the WAL of database %s", self.database.id, exc_info=True)
            retry = False
        self._wal_cut_at = time.monotonic() + TRUNCATE_WAL_RETRY_S if retry else None


def _answer(batch: list[_Pending], outcomes: list[Outcome]) -> None:
    """Hand each caller its outcome on its own loop: one wake-up per loop and batch."""
    by_loop: dict[asyncio.AbstractEventLoop, list] = defaultdict(list)
    for pending, outcome in zip(batch, outcomes):
        by_loop[pending.loop].append((pending.future, outcome))
    for loop, settled in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, settled)
        except RuntimeError:  # that loop is closed: nobody is waiting any more
            pass


def _settle(settled: list[tuple[asyncio.Future, Outcome]]) -> None:
    for future, (value, error) in settled:
        if future.cancelled():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)
