"""The writer process (SQLite files): batches committed by the writer every worker of
the file shares give the same answers, and a writer that dies, idle or mid-batch, loses
nothing and leaves nothing half-done."""

from __future__ import annotations

import logging
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from storage import Database, erase_session
from tests.support import AgnoData, data_gone, wait_until, writers_lock_held

pytestmark = pytest.mark.usefixtures("backend")
# Only SQLite's writers share a lock across workers; PostgreSQL gets no writer process.
sqlite_only = pytest.mark.parametrize("backend", ["sqlite"])


def writer(database):
    return database.group_commit._writer_process


def started(database):
    """The database with its writer process up (it starts with the first erase)."""
    assert erase_session(database, database.settings.default_session_table, "nobody-yet") is None
    wait_until(writer(database).ready, what="the writer process")
    return database


@pytest.fixture
def database(make_database):
    return make_database(group_commit=True, writer_process=True)


@pytest.fixture
def data(database):
    agno = AgnoData(database, database.settings.default_session_table)
    agno.create_all(with_side_tables=False)
    return agno


def erase_concurrently(database, ids) -> dict[int, object]:
    results: dict[int, object] = {}

    def one(index, session_id):
        results[index] = erase_session(database, database.settings.default_session_table, session_id)

    threads = [threading.Thread(target=one, args=(i, sid)) for i, sid in enumerate(ids)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


@sqlite_only
def test_batches_run_in_the_writer_process_with_exact_answers(database, data):
    started(database)
    ids = data.add_sessions([f"wp-{i}" for i in range(30)], runs=3)
    kept = data.add_sessions(["wp-kept"], runs=3)[0]
    asked = ids + ["wp-unknown-1", ids[0], "wp-unknown-2"]
    remote_before = database.group_commit.remote_batches

    results = erase_concurrently(database, asked)

    assert database.group_commit.remote_batches > remote_before
    found = [asked[i] for i, rows in results.items() if rows is not None]
    assert sorted(found) == sorted(ids), "each present id found exactly once, the unknown ones never"
    assert all(results[i].counts == {"runs": 3, "sessions": 1} for i in results if results[i] is not None)
    assert all(data_gone(data, session_id) for session_id in ids)
    left = data.counts(kept)
    assert (left["sessions"], left["runs"]) == (1, 3)


@sqlite_only
def test_an_erase_with_an_audit_hook_is_committed_in_the_worker(database, data):
    started(database)
    session_id = data.add_session(runs=2)
    sent_before = database.group_commit.sent_to_writer
    audited: list[int] = []

    erased = erase_session(
        database,
        database.settings.default_session_table,
        session_id,
        in_transaction=lambda conn, rows: audited.append(rows.total),
    )

    assert erased is not None and audited == [3]
    assert database.group_commit.sent_to_writer == sent_before
    assert data_gone(data, session_id)


@sqlite_only
def test_a_writer_killed_while_idle_is_replaced_and_no_erase_is_lost(database, data, caplog):
    started(database)
    first_pid = writer(database).pid
    ids = data.add_sessions([f"idle-{i}" for i in range(20)], runs=2)
    os.kill(first_pid, signal.SIGKILL)
    wait_until(lambda: _exited(first_pid), what="the killed writer to exit")

    with caplog.at_level(logging.WARNING, logger="storage.writer_process"):
        results = erase_concurrently(database, ids[:10])

    assert all(results[i] is not None for i in range(10))
    assert "is gone" in caplog.text
    wait_until(writer(database).ready, what="a new writer process")
    assert writer(database).pid != first_pid
    remote_before = database.group_commit.remote_batches
    results = erase_concurrently(database, ids[10:])
    assert all(results[i] is not None for i in range(10))
    assert database.group_commit.remote_batches > remote_before
    assert all(data_gone(data, session_id) for session_id in ids)


@sqlite_only
def test_a_writer_that_cannot_start_is_given_up_and_erases_go_on_in_the_worker(database, data, monkeypatch, caplog):
    import storage.writer_process as writer_process

    monkeypatch.setattr(writer_process, "RESTART_INTERVAL_S", 0)
    monkeypatch.setattr(writer_process.sys, "executable", "/bin/false")
    ids = data.add_sessions([f"nostart-{i}" for i in range(12)], runs=1)

    with caplog.at_level(logging.WARNING, logger="storage.writer_process"):
        for session_id in ids:
            assert erase_session(database, database.settings.default_session_table, session_id) is not None
            time.sleep(0.05)  # time for the failed start to be seen

    assert caplog.text.count("died 3 times in a row") == 1
    assert writer(database).pid is None and database.group_commit.sent_to_writer == 0
    assert all(data_gone(data, session_id) for session_id in ids)


@sqlite_only
def test_a_writer_killed_mid_batch_leaves_nothing_half_done_and_every_erase_answered(database, data, caplog):
    started(database)
    ids = data.add_sessions([f"mid-{i}" for i in range(8)], runs=3)
    batches_before, sent_before = database.group_commit.batches, database.group_commit.sent_to_writer
    results: dict[int, object] = {}
    load = threading.Thread(target=lambda: results.update(erase_concurrently(database, ids)))
    with caplog.at_level(logging.WARNING, logger="storage.writer_process"):
        with writers_lock_held(database):
            load.start()
            wait_until(lambda: database.group_commit.sent_to_writer > sent_before, what="a batch to be sent")
            time.sleep(0.2)  # the writer process has it and waits for the lock
            assert database.group_commit.batches == batches_before
            os.kill(writer(database).pid, signal.SIGKILL)
            time.sleep(0.3)
        load.join(60)

    assert not load.is_alive()
    assert "is gone" in caplog.text, "the batch must have been lost with the writer and redone"
    assert all(results[i] is not None and results[i].counts == {"runs": 3, "sessions": 1} for i in range(len(ids)))
    assert all(data_gone(data, session_id) for session_id in ids)


@sqlite_only
def test_the_writer_process_leaves_with_its_last_worker(database, data):
    started(database)
    pid = writer(database).pid
    socket_file = Path(f"{database.engine.url.database}-writer.sock")
    assert socket_file.stat().st_mode & 0o777 == 0o600, "only this user may hand it erases"

    database.dispose()

    wait_until(lambda: _exited(pid), timeout=15, what="the writer to leave")
    assert not socket_file.exists(), "it left under the start lock, taking its socket with it"


@sqlite_only
def test_the_writer_process_ends_when_its_worker_is_killed(data, tmp_path):
    settings_file = tmp_path / "settings.pickle"
    settings_file.write_bytes(pickle.dumps(data.database.settings))
    with subprocess.Popen(
        [sys.executable, "-c", _WORKER, str(settings_file)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    ) as worker:
        try:
            pid = int(worker.stdout.readline())
        finally:
            worker.kill()
    wait_until(lambda: _exited(pid), timeout=15, what="the orphaned writer process to exit")


_WORKER = textwrap.dedent(
    """
    import pickle, sys, time
    from storage import Database, erase_session
    with open(sys.argv[1], "rb") as file:
        settings = pickle.load(file)
    database = Database(settings, group_commit=True, writer_process=True)
    erase_session(database, settings.default_session_table, "nobody")
    while not database.group_commit._writer_process.ready():
        time.sleep(0.02)
    print(database.group_commit._writer_process.pid, flush=True)
    time.sleep(120)
    """
)


@sqlite_only
def test_a_worker_closed_before_its_writer_was_ready_does_not_wait_and_the_writer_leaves(database, data):
    from storage import writer_process

    assert erase_session(database, database.settings.default_session_table, "nobody-yet") is None
    assert not writer(database).ready()
    (pid,) = writer_process._started

    database.group_commit.close()

    # Still starting up when close returned: close did not wait for it. Waiting for it
    # to import and open the database cost every short-lived worker (and test) about a
    # second; it needs no waiting, as it has had no batch.
    assert not _exited(pid)
    wait_until(lambda: _exited(pid), timeout=15, what="the writer to leave")


@pytest.fixture
def another_worker(database):
    """A second worker's view of the same database file, as ``serve --workers 2`` has."""
    opened = []

    def make(**settings_changes):
        settings = replace(database.settings, **settings_changes)
        worker = Database(settings, busy_timeout_ms=database.busy_timeout_ms, group_commit=True, writer_process=True)
        opened.append(worker)
        return worker

    yield make
    for worker in opened:
        worker.dispose()


@sqlite_only
def test_workers_of_one_file_share_one_writer_and_their_batches_share_a_commit(database, data, another_worker, monkeypatch):
    second = started(another_worker())
    started(database)
    assert writer(second).pid == writer(database).pid
    commits = {worker: _commits_of(worker, monkeypatch) for worker in (database, second)}
    first_ids = data.add_sessions([f"one-{i}" for i in range(6)], runs=3)
    second_ids = data.add_sessions([f"two-{i}" for i in range(6)], runs=3)
    kept = data.add_sessions(["shared-kept"], runs=3)[0]
    sent_before = [database.group_commit.sent_to_writer, second.group_commit.sent_to_writer]
    results: dict[str, dict] = {}
    loads = [
        threading.Thread(target=lambda: results.update(first=erase_concurrently(database, first_ids + ["two-0"]))),
        threading.Thread(target=lambda: results.update(second=erase_concurrently(second, second_ids + ["nobody"]))),
    ]

    with writers_lock_held(database):
        # One worker's batch reaches the writer, which then waits for its turn; the
        # other's arrives during that wait.
        for load, worker, before in zip(loads, (database, second), sent_before):
            load.start()
            wait_until(lambda: worker.group_commit.sent_to_writer > before, what="a batch to be handed over")
            time.sleep(0.2)
    for load in loads:
        load.join(60)

    # The batch that came during the wait joined the waiting one's commit.
    assert commits[database][0] == commits[second][0], commits
    first, second_results = results["first"], results["second"]
    assert all(first[i].counts == {"runs": 3, "sessions": 1} for i in range(6))
    assert all(second_results[i].counts == {"runs": 3, "sessions": 1} for i in range(1, 6))
    # "two-0" was asked of both workers at once: exactly one of them erased it.
    assert (first[6] is None) != (second_results[0] is None)
    assert second_results[6] is None
    assert all(data_gone(data, session_id) for session_id in first_ids + second_ids)
    left = data.counts(kept)
    assert (left["sessions"], left["runs"]) == (1, 3)


def _commits_of(database, monkeypatch) -> list[int]:
    """The writer's commit numbers that carried this worker's batches, from now on."""
    seen: list[int] = []
    end = writer(database)
    send_and_wait = end.run

    def run(portable):
        outcomes = send_and_wait(portable)
        seen.append(end.last_commit)
        return outcomes

    monkeypatch.setattr(end, "run", run)
    return seen


@sqlite_only
def test_a_worker_with_other_settings_is_turned_away_and_commits_in_the_worker(database, data, another_worker, caplog):
    started(database)
    # Another server on the same file, erasing traces from another table.
    other = another_worker(traces_table="other_traces")
    ids = data.add_sessions([f"other-{i}" for i in range(5)], runs=2)

    with caplog.at_level(logging.WARNING, logger="storage.writer_process"):
        assert erase_session(other, other.settings.default_session_table, ids[0]) is not None
        wait_until(
            lambda: not writer(other).ready() and "turned this worker away" in caplog.text,
            what="the writer to turn it away",
        )
        for session_id in ids[1:]:
            assert erase_session(other, other.settings.default_session_table, session_id) is not None

    assert other.group_commit.sent_to_writer == 0 and writer(other).pid is None
    assert all(data_gone(data, session_id) for session_id in ids)


@sqlite_only
def test_a_writer_run_by_another_user_is_never_used(database, data, monkeypatch, caplog):
    import storage.writer_process as writer_process

    # As if the socket beside the database had been bound by someone else first.
    monkeypatch.setattr(writer_process.os, "geteuid", lambda: os.getuid() + 1)
    monkeypatch.setattr(writer_process, "RESTART_INTERVAL_S", 0)
    ids = data.add_sessions([f"stranger-{i}" for i in range(6)], runs=1)

    with caplog.at_level(logging.WARNING, logger="storage.writer_process"):
        for session_id in ids:
            assert erase_session(database, database.settings.default_session_table, session_id) is not None
            writer(database).ready()

    assert "served by another user" in caplog.text
    assert database.group_commit.sent_to_writer == 0 and writer(database).pid is None
    assert all(data_gone(data, session_id) for session_id in ids)


@sqlite_only
def test_a_database_deep_in_the_file_system_still_gets_a_shared_writer(database, another_worker, tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    deep_database = another_worker(url=f"sqlite:///{deep / 'agno.db'}")
    agno = AgnoData(deep_database, deep_database.settings.default_session_table)
    agno.create_all(with_side_tables=False)
    ids = agno.add_sessions([f"deep-{i}" for i in range(5)], runs=2)
    assert len(f"{deep / 'agno.db'}-writer.sock") > 107, "beyond what an AF_UNIX address holds"

    started(deep_database)
    results = erase_concurrently(deep_database, ids)

    assert deep_database.group_commit.remote_batches > 0
    assert all(results[i] is not None for i in range(5)) and all(data_gone(agno, sid) for sid in ids)


@sqlite_only
def test_the_database_url_is_not_on_the_writer_command_line(database, data):
    started(database)
    command_line = Path(f"/proc/{writer(database).pid}/cmdline").read_bytes().decode()
    assert database.settings.url not in command_line
    assert "storage.writer_process" in command_line


def _exited(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status  # exited; only its parent has yet to reap it


@pytest.mark.parametrize("backend", ["postgres"])
def test_postgresql_commits_in_the_worker(make_database):
    """Each worker's writer waits only for itself there, and handing batches over cost
    more than it saved (bench/README.md)."""
    database = make_database(group_commit=True, writer_process=True)
    data = AgnoData(database, database.settings.default_session_table)
    data.create_all(with_side_tables=False)
    ids = data.add_sessions([f"pg-{i}" for i in range(10)], runs=1)

    results = erase_concurrently(database, ids)

    assert database.group_commit._writer_process is None
    assert all(results[i] is not None for i in range(10)) and all(data_gone(data, sid) for sid in ids)
