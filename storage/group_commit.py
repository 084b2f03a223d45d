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
- nobody is answered before the shared COMMIT has returned, i.e. is durable under the
  connection's own ``synchronous`` setting (or PostgreSQL's ``synchronous_commit``);
- anything that goes wrong with the batch as a whole (BEGIN, COMMIT, a database error
  inside some work) makes the affected work run again alone through
  ``Database.write``, with its usual retries, so such a caller gets precisely the
  answer it would have had without grouping.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import TYPE_CHECKING, Callable, Generic, TypeVar

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

if TYPE_CHECKING:
    from storage.database import Database

T = TypeVar("T")
logger = logging.getLogger("storage.group_commit")

# Bounds how long the first erase of a batch waits for the last one's work.
MAX_BATCH = 64

_STOP = object()


class _Pending(Generic[T]):
    __slots__ = ("work", "done", "value", "error")

    def __init__(self, work: Callable[[Connection], T]):
        self.work = work
        self.done = threading.Event()
        self.value: T | None = None
        self.error: BaseException | None = None


class GroupCommit:
    def __init__(self, database: "Database", max_batch: int = MAX_BATCH):
        self._database = database
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.batches = 0  # commits made, for tests and curiosity
        self.grouped = 0  # work items committed through a shared transaction

    def run(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` in a transaction that may be shared; return once it is durable."""
        pending = _Pending(work)
        with self._lock:
            if self._closed:
                return self._database.write(work)
            if self._thread is None:
                # Started on first use, in the process that serves (workers are spawned).
                self._thread = threading.Thread(target=self._loop, name=f"group-commit-{self._database.id}", daemon=True)
                self._thread.start()
            self._queue.put(pending)
        pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.value  # type: ignore[return-value]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            thread = self._thread
            if thread is not None:
                self._queue.put(_STOP)
        if thread is not None:
            thread.join()

    def _loop(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            while len(batch) < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)
            try:
                self._commit(batch)
            except BaseException as exc:  # never leave a caller waiting forever
                logger.exception("group commit failed unexpectedly")
                for item in batch:
                    if not item.done.is_set():
                        item.error = exc
                        item.done.set()

    def _commit(self, batch: list[_Pending]) -> None:
        alone: list[_Pending] = []
        try:
            with self._database._transaction() as conn:
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
