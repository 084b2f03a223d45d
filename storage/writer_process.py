"""One writer process per SQLite file, shared by every worker: group commit's batches,
from all workers at once, run in one transaction where no event loop competes for the GIL.

Why a process: sqlite3 lets go of the GIL around every statement and every row, and a
writer thread must then win it back from its worker's event loop, several times per
batch, while it holds the writers' lock (``_writers_in_turn``). In a process of its
own the batch runs undisturbed (bench/README.md, fourth round).

Why shared: with a writer per worker, the workers' writers took turns on that lock,
each committing only its own worker's erases, and each cost its worker about 45 MB.
The shared writer takes whatever batches the workers have sent when its turn comes,
commits them together and answers each worker; a file has one writer whatever the
number of workers. (It did not make 2 workers faster than 1 on 2 cores: the commit
count was not what held them back; bench/README.md, sixth round.)

How the workers find it: a Unix socket ``<db>-writer.sock`` beside the database (mode
0600), reached only under the ``<db>-writer-start-lock`` flock. The worker that finds
no writer listening binds the socket itself, still under that lock, and starts the
writer with it, so the others queue in its backlog instead of starting a second one.
The writer leaves under the same lock once its last worker has gone, so nobody
connects to a writer that is on its way out.

What stays the same: one transaction, in a turn on the same lock, answered only after
its COMMIT returned. If a batch fails there, or the process dies, each worker redoes
its own batch, as it does any batch whose commit failed, and any worker starts a new
writer for the batches after. A worker that reached the writer with other settings
(another server on the same file) is turned away and commits in its worker. The
writer ignores SIGINT and SIGTERM, so workers shutting down gracefully can still
finish their erases through it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import socket
import struct
import sys
import time
from contextlib import contextmanager
from multiprocessing.connection import Connection as Channel
from multiprocessing.connection import wait
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from storage.database import Database
    from storage.group_commit import GroupCommit, Outcomes

logger = logging.getLogger("storage.writer_process")

# A worker whose writer dies starts (or reaches) another at most this often, and after
# this many deaths in a row without a batch committed in between, it stops trying: its
# batches run in the worker, as they do meanwhile.
RESTART_INTERVAL_S = 1.0
MAX_DEATHS_IN_A_ROW = 3
# A writer nobody reached (its starter died before connecting) does not wait forever.
IDLE_EXIT_S = 10.0
# AF_UNIX addresses stop at 107 bytes; longer ones are reached through the directory.
_MAX_SOCKET_ADDRESS = 100
# Writers this process started, reaped once they exit. Held here, not by the worker's
# end that started them: they outlive it while other workers use them.
_started: list[int] = []


class WriterFailed(Exception):
    """The writer process did not commit the batch (it failed or is gone)."""


def _paths(database: "Database") -> tuple[str, str]:
    """The writer's socket and the lock that guards reaching, starting and leaving it."""
    path = database.engine.url.database
    return f"{path}-writer.sock", f"{path}-writer-start-lock"


@contextmanager
def _start_lock(path: str) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


@contextmanager
def _address(socket_path: str) -> Iterator[str]:
    if len(socket_path.encode()) <= _MAX_SOCKET_ADDRESS:
        yield socket_path
        return
    directory = os.open(os.path.dirname(socket_path) or ".", os.O_PATH | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{directory}/{os.path.basename(socket_path)}"
    finally:
        os.close(directory)


def _same_user(connection: socket.socket) -> bool:
    """Whether the writer at the other end runs as this user. What it sends is
    unpickled, and in a directory others may write to, another user could have bound
    the socket first. (The other way round, the socket's mode 0600 keeps others out.)"""
    credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", credentials)
    return uid == os.geteuid()


class WriterProcess:
    """A worker's end: it reaches (or starts) the shared writer with the first batch, and
    uses it once the writer has said ready. Only the worker's writer thread calls it
    (and ``close``, after that thread ended)."""

    def __init__(self, database: "Database"):
        self._database = database
        self._socket_path, self._lock_path = _paths(database)
        self._channel: Channel | None = None
        self._ready = False
        self._pid: int | None = None
        self._tried_at = float("-inf")
        self._deaths_in_a_row = 0
        self.last_commit: int | None = None  # the writer's commit that carried the last batch

    @property
    def pid(self) -> int | None:
        return self._pid if self._channel is not None else None

    def ready(self) -> bool:
        if self._ready:
            return True
        if self._channel is None:
            self._reach()
            return False
        try:
            if not self._channel.poll():
                return False
            answer, detail = self._channel.recv()
        except (EOFError, OSError):
            self._lost()
            return False
        if answer == "ready":
            self._pid, self._ready = detail, True
        else:
            logger.error("the writer process of database %s turned this worker away (%s); erases are committed in the worker", self._database.id, detail)
            self._deaths_in_a_row = MAX_DEATHS_IN_A_ROW
            self._disconnect()
        return self._ready

    def _reach(self) -> None:
        if self._deaths_in_a_row >= MAX_DEATHS_IN_A_ROW:
            return
        if time.monotonic() - self._tried_at < RESTART_INTERVAL_S:
            return
        self._tried_at = time.monotonic()
        _reap()
        try:
            with _start_lock(self._lock_path), _address(self._socket_path) as address:
                ours = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    try:
                        ours.connect(address)
                    except (FileNotFoundError, ConnectionRefusedError):
                        self._start_writer(address)
                        ours.connect(address)
                    if not _same_user(ours):
                        raise PermissionError(f"{self._socket_path} is served by another user")
                except BaseException:
                    ours.close()
                    raise
            self._channel = Channel(ours.detach())
            # The settings (URL and password included) travel over the socket, never on
            # the command line where any user's ps would show them.
            self._channel.send(("hello", (self._database.settings, self._database.busy_timeout_ms)))
        except OSError:
            logger.warning("could not reach or start a writer process; erases are committed in the worker", exc_info=True)
            self._lost()

    def _start_writer(self, address: str) -> None:
        """Under the start lock: listen where the last writer did (it died), and start a
        writer on that socket; connections made meanwhile wait in its backlog."""
        try:
            os.unlink(address)
        except FileNotFoundError:
            pass
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(address)
            os.chmod(address, 0o600)  # before listen: nobody else's connection is ever accepted
            listener.listen(64)
            # posix_spawn, not Popen: a Popen still running when its object is collected
            # warns, and this writer is meant to outlive the end that started it.
            os.set_inheritable(listener.fileno(), True)
            _started.append(
                os.posix_spawn(
                    sys.executable,
                    [sys.executable, "-m", "storage.writer_process", str(listener.fileno())],
                    _child_environment(),
                    file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)],
                )
            )
        finally:
            listener.close()

    def run(self, portable: list) -> "Outcomes":
        """Commit the batch in the writer process; its outcomes, or WriterFailed."""
        try:
            self._channel.send(("batch", portable))
            answer = self._channel.recv()
        except (EOFError, OSError) as exc:
            self._lost()
            raise WriterFailed("the writer process is gone") from exc
        if answer is None:
            raise WriterFailed("the batch failed in the writer process")
        self.last_commit, outcomes = answer
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
        self._disconnect()

    def _disconnect(self) -> None:
        if self._channel is not None:
            # The writer sees EOF; it answers nothing more to us, and leaves with its
            # last worker. Never killed from here: other workers may be using it.
            self._channel.close()
            self._channel = None
        self._ready, self._pid = False, None

    def close(self) -> None:
        # Not waited for: it finishes the batches it has, and only then sees that its
        # last worker is gone.
        self._disconnect()
        _reap()


def _reap() -> None:
    for pid in list(_started):
        try:
            if os.waitpid(pid, os.WNOHANG) == (0, 0):
                continue  # still running
        except ChildProcessError:
            pass
        _started.remove(pid)


def _child_environment() -> dict[str, str]:
    # The writer must import this very code, wherever the worker found it.
    here = str(Path(__file__).resolve().parent.parent)
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, (here, environment.get("PYTHONPATH"))))
    return environment


class _SharedWriter:
    """The writer process: greets workers, and commits their batches together."""

    def __init__(self, listener: socket.socket):
        self._listener = listener
        self._workers: list[Channel] = []
        self._identity: tuple | None = None
        self._database: "Database | None" = None
        self._group_commit: "GroupCommit | None" = None
        self._commits = 0

    def serve(self) -> None:
        try:
            while True:
                readable = wait([self._listener, *self._workers], timeout=None if self._workers else IDLE_EXIT_S)
                if self._listener in readable:
                    while self._accept():
                        pass
                batches = self._receive([channel for channel in readable if channel is not self._listener])
                if batches:
                    self._commit(batches)
                if not self._workers and self._leave():
                    return
        finally:
            if self._group_commit is not None:
                self._group_commit.close()
                self._database.engine.dispose()

    def _accept(self) -> bool:
        """Take one waiting connection, if any (the listener never blocks)."""
        try:
            connection, _ = self._listener.accept()
        except BlockingIOError:
            return False
        connection.setblocking(True)
        self._workers.append(Channel(connection.detach()))
        return True

    def _leave(self) -> bool:
        """Whether to exit: no worker is left, and none is on its way in."""
        if self._identity is None:
            return True  # nobody ever said hello; a stale socket is replaced by the next
        socket_path, lock_path = _paths(self._database)
        with _start_lock(lock_path):
            if self._accept():
                return False
            try:
                os.unlink(socket_path)
            except FileNotFoundError:
                pass
            return True

    def _receive(self, channels: list) -> list[tuple[Channel, list]]:
        batches = []
        for channel in channels:
            try:
                kind, body = channel.recv()
            except (EOFError, OSError):
                self._drop(channel)
                continue
            if kind == "hello":
                self._greet(channel, body)
            else:
                batches.append((channel, body))
        return batches

    def _greet(self, channel: Channel, identity: tuple) -> None:
        if self._identity is None:
            from storage.database import Database
            from storage.group_commit import GroupCommit

            settings, busy_timeout_ms = identity
            self._database = Database(settings, busy_timeout_ms=busy_timeout_ms)
            # Its turn on the writers' lock and its kept connection; it starts no thread.
            self._group_commit = GroupCommit(self._database)
            self._identity = identity
        if identity == self._identity:
            self._send(channel, ("ready", os.getpid()))
        else:
            self._send(channel, ("refused", "it serves this file with other settings"))
            self._drop(channel)

    def _commit(self, batches: list[tuple[Channel, list]]) -> None:
        from storage.erase import erase_works

        def works():
            # Batches that arrived while we waited for the turn join this commit.
            waiting = set(self._workers) - {channel for channel, _ in batches}
            batches.extend(self._receive(wait(list(waiting), timeout=0)))
            return erase_works(self._database, [item for _, portable in batches for item in portable])

        try:
            outcomes = self._group_commit.run_in_turn(works)
        except Exception:
            answers = [None] * len(batches)  # rolled back; each worker redoes its batch
        else:
            self._commits += 1
            answers, start = [], 0
            for _, portable in batches:
                answers.append((self._commits, outcomes[start : start + len(portable)]))
                start += len(portable)
        for (channel, _), answer in zip(batches, answers):
            self._send(channel, answer)

    def _send(self, channel: Channel, message: object) -> None:
        try:
            channel.send(message)
        except OSError:
            self._drop(channel)

    def _drop(self, channel: Channel) -> None:
        if channel in self._workers:
            self._workers.remove(channel)
        channel.close()


def _serve(listener_fd: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    listener = socket.socket(fileno=listener_fd)
    listener.setblocking(False)
    _SharedWriter(listener).serve()


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
