"""A writer process per worker and SQLite database: group commit's batches run where
no event loop competes for the GIL.

Why: sqlite3 lets go of the GIL around every statement and every row, and a writer
thread must then win it back from its worker's event loop, several times per batch,
while it holds the lock every worker's writer queues on (``_writers_in_turn``). So one
worker's busy event loop kept the other worker's writer waiting too. In a process of
its own the batch runs undisturbed; the worker's writer thread only sends it and waits
for the answers. Measured against the thread alone, back to back: p99 about a fifth
lower, throughput a few percent higher (bench/README.md, fourth round).

What stays the same: the batch runs through ``GroupCommit.run_in_turn``, in one
transaction, in the same turn on the same lock as in the worker, and is answered only
after its COMMIT returned. If a batch fails there, or the process dies, the worker
redoes the batch itself, as it does any batch whose commit failed, and starts a new
process for the batches after. The process ignores SIGINT and SIGTERM, so a worker
shutting down gracefully can still finish its erases through it, and it exits when the
worker closes its end or dies.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from multiprocessing.connection import Connection as Channel
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from storage.database import Database
    from storage.group_commit import Outcomes

logger = logging.getLogger("storage.writer_process")

# A writer that dies is replaced at most this often, and after this many deaths in a
# row without a batch committed in between, no more are started: its batches run in
# the worker, as they do meanwhile.
RESTART_INTERVAL_S = 1.0
MAX_DEATHS_IN_A_ROW = 3
_READY = "ready"


class WriterFailed(Exception):
    """The writer process did not commit the batch (it failed or is gone)."""


class WriterProcess:
    """The worker's end: started by the first batch, used once it reports ready. Only
    the worker's writer thread calls it (and ``close``, after that thread ended)."""

    def __init__(self, database: "Database"):
        self._database = database
        self._process: subprocess.Popen | None = None
        self._channel: Channel | None = None
        self._ready = False
        self._started_at = float("-inf")
        self._deaths_in_a_row = 0

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _start(self) -> None:
        if self._deaths_in_a_row >= MAX_DEATHS_IN_A_ROW:
            return
        if time.monotonic() - self._started_at < RESTART_INTERVAL_S:
            return
        self._started_at = time.monotonic()
        ours, theirs = socket.socketpair()
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "storage.writer_process", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                env=_child_environment(),
            )
        except OSError:
            logger.warning("could not start a writer process; erases are committed in the worker", exc_info=True)
            ours.close()
            return
        finally:
            theirs.close()
        self._channel = Channel(ours.detach())
        try:
            # The settings (URL and password included) travel over the socket, never
            # on the command line where any user's ps would show them.
            self._channel.send((self._database.settings, self._database.busy_timeout_ms))
        except OSError:
            self._lost()

    def ready(self) -> bool:
        if self._ready:
            return True
        if self._process is None:
            self._start()
            return False
        try:
            if self._channel is not None and self._channel.poll():
                self._ready = self._channel.recv() == _READY
        except (EOFError, OSError):
            self._lost()
        return self._ready

    def run(self, portable: list) -> "Outcomes":
        """Commit the batch in the writer process; its outcomes, or WriterFailed."""
        try:
            self._channel.send(portable)
            outcomes = self._channel.recv()
        except (EOFError, OSError) as exc:
            self._lost()
            raise WriterFailed("the writer process is gone") from exc
        if outcomes is None:
            raise WriterFailed("the batch failed in the writer process")
        self._deaths_in_a_row = 0
        return outcomes

    def _lost(self) -> None:
        self._deaths_in_a_row += 1
        if self._deaths_in_a_row >= MAX_DEATHS_IN_A_ROW:
            logger.error(
                "the writer process of database %s died %d times in a row; erases are committed in the worker from now on",
                self._database.id,
                self._deaths_in_a_row,
            )
        else:
            logger.warning("the writer process of database %s is gone; a new one will be started", self._database.id)
        self._stop(kill=True)

    def close(self) -> None:
        # A writer that never reported ready has had no batch, so there is nothing to
        # finish: waiting for it to import and open the database cost every short-lived
        # worker (and test) about a second at shutdown.
        self._stop(kill=not self._ready)

    def _stop(self, *, kill: bool) -> None:
        if self._channel is not None:
            self._channel.close()  # the writer sees EOF once its batch is done, and exits
            self._channel = None
        process, self._process, self._ready = self._process, None, False
        if process is None:
            return
        if kill:
            process.kill()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _child_environment() -> dict[str, str]:
    # The writer must import this very code, wherever the worker found it.
    here = str(Path(__file__).resolve().parent.parent)
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, (here, environment.get("PYTHONPATH"))))
    return environment


def _serve(channel: Channel) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from storage.database import Database
    from storage.erase import erase_works
    from storage.group_commit import GroupCommit

    try:
        settings, busy_timeout_ms = channel.recv()
    except (EOFError, OSError):
        return  # the worker went away before it needed us
    database = Database(settings, busy_timeout_ms=busy_timeout_ms)
    # Its turn on the writers' lock and its kept connection; it starts no thread.
    writer = GroupCommit(database)
    outcomes: object = _READY
    try:
        while True:
            try:
                channel.send(outcomes)
                portable = channel.recv()
            except (EOFError, OSError):
                return  # the worker closed its end or died
            try:
                outcomes = writer.run_in_turn(lambda: erase_works(database, portable))
            except Exception:
                outcomes = None  # rolled back; the worker redoes it and reports any error
    finally:
        writer.close()
        database.engine.dispose()


if __name__ == "__main__":
    _serve(Channel(int(sys.argv[1])))
