"""Group commit: concurrent erases share a commit and every answer stays exactly right."""

from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import logging
import os
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import event

import storage.erase
from storage import ErasedRows, erase_session
from storage.erase import EraseRequest, erase_batch
from storage.writer import Writer
from tests.support import (
    CONVERSATION_KINDS,
    data_gone,
    refuse_compaction_deletes,
    sqlite_write_lock_held,
    unique_ids,
    wait_until,
)

pytestmark = pytest.mark.usefixtures("backend")


class Hold:
    """A work item that keeps the writer inside its transaction until released, so
    everything submitted meanwhile queues up and is committed together next."""

    def __init__(self) -> None:
        self.entered, self.release = threading.Event(), threading.Event()


def eraser(database, *, fail_first_batch: bool = False):
    """The storage's own batch function, with ``Hold`` items and an optional failure of
    the first batch after all its work is done (so its transaction must roll back)."""
    failures: list[bool] = []

    def run_batch(conn, works):
        for work in works:
            if isinstance(work, Hold):
                work.entered.set()
                assert work.release.wait(10)
        requests = [w for w in works if not isinstance(w, Hold)]
        answers = iter(erase_batch(conn, database, requests, erase_traces=True))
        outcomes = []
        for work in works:  # up to the first request left for the next transaction
            if not isinstance(work, Hold) and (answer := next(answers, Hold)) is Hold:
                break
            outcomes.append(None if isinstance(work, Hold) else answer)
        if fail_first_batch and requests and not failures:
            failures.append(True)
            raise RuntimeError("commit refused")
        return outcomes

    run_batch.failures = failures
    return run_batch


class LoopThread:
    """An event loop on a thread of its own: callers of the writer, as handlers are."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def submit(self, writer: Writer, work) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(writer.submit(work), self.loop)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def loop():
    running = LoopThread()
    yield running
    running.close()


@pytest.fixture
def database(make_database):
    return make_database()


@pytest.fixture
def make_writer(database):
    writers: list[Writer] = []

    def make(**kwargs) -> Writer:
        fail_first_batch = kwargs.pop("fail_first_batch", False)
        writer = Writer(database, eraser(database, fail_first_batch=fail_first_batch), **kwargs)
        writers.append(writer)
        return writer

    yield make
    for writer in writers:
        writer.close()


def request(database, session_id: str) -> EraseRequest:
    return EraseRequest(database.settings.default_session_table, session_id)


def outcome(future: concurrent.futures.Future):
    error = future.exception(timeout=30)
    return error if error is not None else future.result()


def submit_together(writer: Writer, loop: LoopThread, works: list, *, queued=None) -> list:
    """Submit ``works`` while the writer is held, so they are committed as one batch
    (or as batches of ``max_batch``); return each one's outcome, in order."""
    hold = Hold()
    held = loop.submit(writer, hold)
    assert hold.entered.wait(10)
    futures = [loop.submit(writer, work) for work in works]
    wait_until(lambda: writer._queue.qsize() == len(works), what="every erase to be queued")
    if queued is not None:
        queued()
    hold.release.set()
    assert outcome(held) is None
    return [outcome(f) for f in futures]


def test_concurrent_erases_share_one_commit_and_each_id_succeeds_exactly_once(database, data, make_writer, loop):
    writer = make_writer()
    ids = data.add_sessions(unique_ids("shared", 8), runs=3)
    # Every id asked for three times, interleaved, plus ids that never existed.
    asked = [request(database, sid) for sid in ids * 3 + ["missing-1", "missing-2"]]

    results = submit_together(writer, loop, asked)

    assert writer.batches == 2  # the held one, then all of these
    for session_id in ids:
        found = [r for r, work in zip(results, asked) if work.session_id == session_id and r is not None]
        assert len(found) == 1 and found[0].counts["runs"] == 3 and found[0].counts["sessions"] == 1, found
    left = data.counts_many(ids)
    assert all([left[sid][k] for k in CONVERSATION_KINDS] == [0] * len(CONVERSATION_KINDS) for sid in ids)
    assert results[-1] is None and results[-2] is None


def test_nobody_is_answered_before_the_shared_commit(database, data, make_writer, loop):
    writer = make_writer()
    works = [request(database, data.add_session(runs=1)) for _ in range(5)]
    futures: list[concurrent.futures.Future] = []
    answered_at_commit: list[int] = []

    @event.listens_for(database.engine, "commit")
    def on_commit(_conn):
        answered_at_commit.append(sum(f.done() for f in futures))

    hold = Hold()
    held = loop.submit(writer, hold)
    assert hold.entered.wait(10)
    futures.extend(loop.submit(writer, work) for work in works)
    wait_until(lambda: writer._queue.qsize() == len(works), what="every erase to be queued")
    hold.release.set()
    results = [outcome(f) for f in futures]
    assert outcome(held) is None
    event.remove(database.engine, "commit", on_commit)
    assert answered_at_commit[-1] == 0, answered_at_commit
    assert all(isinstance(r, ErasedRows) for r in results)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_what_a_transaction_leaves_over_its_row_budget_goes_into_the_next(database, data, make_writer, loop,
                                                                          monkeypatch):  # fmt: skip
    writer = make_writer()
    ids = data.add_sessions(unique_ids("budget", 6), runs=3)
    sample = data.add_session(runs=3)
    erased = erase_session(database, database.settings.default_session_table, sample, erase_traces=True)
    per_session = sum(erased.counts.values())
    monkeypatch.setattr(storage.erase, "MAX_ROWS_PER_TRANSACTION", 2 * per_session)
    asked = [request(database, sid) for sid in ids + ids[:2]]

    results = submit_together(writer, loop, asked)

    assert writer.batches == 1 + 3  # the held one, then two sessions a time
    assert all(r.counts["sessions"] == 1 for r in results[:6]) and results[6:] == [None, None]
    assert all(data_gone(data, sid) for sid in ids)


def test_a_database_error_in_one_erase_fails_only_that_erase(database, data, make_writer, loop):
    writer = make_writer()
    doomed, fine = data.add_session(runs=2), data.add_session(runs=2)
    refuse_compaction_deletes(database, "disk on fire", only_session=doomed)
    before = data.counts(doomed)

    results = submit_together(writer, loop, [request(database, doomed), request(database, fine)])

    assert isinstance(results[0], Exception) and "disk on fire" in str(results[0])
    assert data.counts(doomed) == before  # nothing half done
    assert isinstance(results[1], ErasedRows) and data_gone(data, fine)


def test_a_failed_shared_commit_retries_each_erase_alone(database, data, make_writer, loop):
    writer = make_writer(fail_first_batch=True)
    ids = [data.add_session(runs=1) for _ in range(4)]

    results = submit_together(writer, loop, [request(database, sid) for sid in ids])

    assert writer.run_batch.failures == [True]
    assert all(isinstance(r, ErasedRows) for r in results), results
    assert all(data_gone(data, sid) for sid in ids)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_database_that_cannot_take_a_write_answers_every_waiting_erase_at_once(
    database, data, make_writer, loop, tmp_path
):
    """A lock held elsewhere past the busy timeout costs each erase that one timeout,
    not one timeout per erase waiting behind it."""
    writer = make_writer()
    ids = data.add_sessions(unique_ids("locked", 5), runs=1)
    begins: list[int] = []
    event.listen(database.engine, "begin", lambda _conn: begins.append(1))
    with sqlite_write_lock_held(Path(database.engine.url.database)):
        futures = [loop.submit(writer, request(database, sid)) for sid in ids]
        results = [outcome(f) for f in futures]
    assert all("database is locked" in str(r) for r in results), results
    assert len(begins) <= 2, "the waiting erases were not answered together"
    assert all(data.counts(sid)["sessions"] == 1 for sid in ids)


def test_after_close_erases_still_work_alone(database, data, make_writer, loop):
    writer = make_writer()
    writer.close()
    session_id = data.add_session(runs=1)
    assert isinstance(outcome(loop.submit(writer, request(database, session_id))), ErasedRows)
    assert data_gone(data, session_id)


def test_without_group_commit_each_erase_is_a_transaction_of_its_own(database, data, make_writer, loop):
    writer = make_writer(max_batch=1)
    ids = data.add_sessions(unique_ids("alone", 4), runs=1)

    results = submit_together(writer, loop, [request(database, sid) for sid in [*ids, ids[0]]])

    assert writer.batches == 1 + 5
    assert [r is not None for r in results] == [True, True, True, True, False]


def test_a_caller_that_goes_away_does_not_undo_its_erase(database, data, make_writer, loop):
    writer = make_writer()
    session_id = data.add_session(runs=1)
    hold = Hold()
    held = loop.submit(writer, hold)
    assert hold.entered.wait(10)
    gone = loop.submit(writer, request(database, session_id))
    wait_until(lambda: writer._queue.qsize() == 1, what="the erase to be queued")
    gone.cancel()
    hold.release.set()
    assert outcome(held) is None
    wait_until(lambda: data_gone(data, session_id), what="the abandoned erase to complete")


@pytest.mark.parametrize("backend", ["sqlite"])  # only SQLite's writers take turns on a lock file
def test_erases_that_arrive_while_the_writer_waits_for_its_turn_join_its_batch(database, data, make_writer, loop):
    writer = make_writer()
    ids = data.add_sessions(unique_ids("turn", 6), runs=1)
    assert outcome(loop.submit(writer, request(database, "warm-up"))) is None  # the lock file exists
    batches_before = writer.batches
    other_worker = os.open(database.turn.path, os.O_RDWR)
    fcntl.flock(other_worker, fcntl.LOCK_EX)
    try:
        first = loop.submit(writer, request(database, ids[0]))
        # The writer has taken the first erase and waits for the turn (up to the busy timeout).
        wait_until(database.turn._in_process.locked, what="the writer to wait for its turn")
        rest = [loop.submit(writer, request(database, sid)) for sid in ids[1:]]
        wait_until(lambda: writer._queue.qsize() == 5, what="the others to queue")
    finally:
        fcntl.flock(other_worker, fcntl.LOCK_UN)
        os.close(other_worker)
    results = [outcome(f) for f in [first, *rest]]

    assert writer.batches - batches_before == 1
    assert all(isinstance(r, ErasedRows) for r in results), results
    assert all(data_gone(data, sid) for sid in ids)


def _wal_holding_a_marker(data, session_id) -> tuple[Path, bytes]:
    """Write a marker into the session's runs, as an agent would; the WAL now holds it."""
    marker = data.write_private_text(session_id)
    wal = Path(f"{data.database.engine.url.database}-wal")
    assert marker in wal.read_bytes(), "the scan must see the text while the WAL holds it"
    return wal, marker


@pytest.mark.parametrize("backend", ["sqlite"])
def test_an_erased_conversation_leaves_the_wal_once_the_writer_is_idle(database, data, make_writer, loop):
    writer = make_writer()
    session_id = data.add_session(runs=2)
    wal, marker = _wal_holding_a_marker(data, session_id)

    assert isinstance(outcome(loop.submit(writer, request(database, session_id))), ErasedRows)

    wait_until(lambda: marker not in wal.read_bytes(), what="the WAL to be cut")
    assert marker not in Path(database.engine.url.database).read_bytes()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_reader_on_an_old_snapshot_only_delays_the_wal_cut(database, data, make_writer, loop):
    writer = make_writer()
    first, second = data.add_sessions(unique_ids("old-snapshot", 2), runs=2)
    wal, marker = _wal_holding_a_marker(data, first)

    with database.engine.connect() as agent, agent.begin():
        agent.execute(data.sessions.select()).all()  # an agent reading, on the snapshot before the erase
        assert isinstance(outcome(loop.submit(writer, request(database, first))), ErasedRows)
        time.sleep(1.5)  # idle long enough for the cut to be tried, and tried again
        assert marker in wal.read_bytes(), "the reader's snapshot still needs those frames"
        assert isinstance(outcome(loop.submit(writer, request(database, second))), ErasedRows)  # erases go on

    wait_until(lambda: marker not in wal.read_bytes(), what="the WAL to be cut")


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_wal_that_cannot_be_cut_is_not_retried_until_the_next_commit(
    database, data, make_writer, loop, monkeypatch, caplog
):
    writer = make_writer()
    tries: list[int] = []

    def cannot_cut():
        tries.append(1)
        raise OSError("attempt to write a readonly database")

    monkeypatch.setattr(database, "truncate_wal", cannot_cut)
    first, second = data.add_sessions(unique_ids("no-cut", 2), runs=1)

    with caplog.at_level(logging.WARNING, logger="storage.writer"):
        assert isinstance(outcome(loop.submit(writer, request(database, first))), ErasedRows)
        wait_until(lambda: tries, what="the cut to be tried")
        time.sleep(1.5)  # past the retry interval: a retry would have come by now
        assert len(tries) == 1, "a failing cut must not log every second"
        assert isinstance(outcome(loop.submit(writer, request(database, second))), ErasedRows)
        wait_until(lambda: len(tries) == 2, what="the next commit's cut")

    assert caplog.text.count("could not truncate the WAL") == 2
