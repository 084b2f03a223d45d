"""Group commit: concurrent erases share a commit and every answer stays exactly right."""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import event

from storage import ErasedRows, erase_session
from tests.support import (
    CONVERSATION_KINDS,
    AgnoData,
    data_gone,
    refuse_compaction_deletes,
    unique_ids,
    wait_until,
    writers_lock_held,
)

pytestmark = pytest.mark.usefixtures("backend")


@pytest.fixture
def database(make_database):
    return make_database(group_commit=True)


def erase(database, session_id):
    return erase_session(database, database.settings.default_session_table, session_id, erase_traces=True)


@contextmanager
def writer_held(database):
    """Keep the writer thread busy in a transaction, so everything sent meanwhile queues
    up and is committed together as the next batch."""
    entered, release = threading.Event(), threading.Event()

    def hold(_conn):
        entered.set()
        release.wait(10)

    holder = threading.Thread(target=database.write_shared, args=(hold,))
    holder.start()
    assert entered.wait(10)
    try:
        yield
    finally:
        release.set()
        holder.join()


def run_concurrently(database, ids, *, queued=None, results=None):
    """Erase each id from its own thread, while the writer is held; return {index: result}."""
    results = {} if results is None else results

    def one(index, session_id):
        try:
            results[index] = erase(database, session_id)
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            results[index] = exc

    threads = [threading.Thread(target=one, args=(i, sid)) for i, sid in enumerate(ids)]
    with writer_held(database):
        for thread in threads:
            thread.start()
        # Everything is queued behind the held transaction before it ends.
        while database.group_commit._queue.qsize() < len(ids):
            threading.Event().wait(0.005)
        if queued is not None:
            queued()
    for thread in threads:
        thread.join()
    return results


def test_concurrent_erases_share_one_commit_and_each_id_succeeds_exactly_once(database, data):
    ids = data.add_sessions(unique_ids("shared", 8), runs=3)
    # Every id asked for three times, interleaved, plus ids that never existed.
    asked = ids * 3 + ["missing-1", "missing-2"]
    batches_before = database.group_commit.batches

    results = run_concurrently(database, asked)

    assert database.group_commit.batches - batches_before == 2  # the held one, then all of these
    for session_id in ids:
        outcomes = [results[i] for i, sid in enumerate(asked) if sid == session_id]
        found = [r for r in outcomes if r is not None]
        assert len(found) == 1, outcomes
        assert found[0].counts["runs"] == 3 and found[0].counts["sessions"] == 1
    left = data.counts_many(ids)
    assert all([left[session_id][k] for k in CONVERSATION_KINDS] == [0] * len(CONVERSATION_KINDS) for session_id in ids)
    assert results[len(asked) - 1] is None and results[len(asked) - 2] is None


def test_not_found_in_a_batch_changes_nothing_and_needs_no_redo(database, data):
    """With tool results (their payloads need a subquery) erases run one by one; one
    whose session does not exist is answered without running, so its orphans stay, the
    erase sharing the commit keeps its effect, and the batch is not redone with
    savepoints."""
    orphan_id = "orphan"
    with database.engine.begin() as conn:
        conn.execute(data.side["transcripts"].insert(), {
            "framework": "f", "project_key": "p", "session_id": "ext", "subpath": "", "position": 0,
            "entry": "e", "agno_session_id": orphan_id, "created_at": 1})  # fmt: skip
    real = data.add_session(runs=2)
    batches_before = database.group_commit.batches

    with statements_recorded(database) as statements:
        results = run_concurrently(database, [orphan_id, real, real])

    assert results[0] is None
    assert data.counts(orphan_id)["transcripts"] == 1
    assert results[1] is not None and results[1].counts["tool_result_payloads"] == 1 and results[2] is None
    assert data.counts(real)["sessions"] == 0
    assert database.group_commit.batches - batches_before == 2  # the held one, then these
    # Only the held work (not an erase) ran in a savepoint; the erases' batch did not.
    assert sum(sql.upper().startswith("SAVEPOINT") for sql in statements) == 1, statements


def test_nobody_is_answered_before_the_shared_commit(database, data):
    ids = [data.add_session(runs=1) for _ in range(5)]
    answered_at_commit = []
    results: dict[int, object] = {}

    @event.listens_for(database.engine, "commit")
    def on_commit(_conn):
        answered_at_commit.append(len(results))

    def queued():
        # Armed only now: results fill in as callers return, and must still be empty
        # when the commit that covers them starts.
        answered_at_commit.clear()

    run_concurrently(database, ids, queued=queued, results=results)
    event.remove(database.engine, "commit", on_commit)
    assert answered_at_commit and answered_at_commit[0] == 0
    assert all(isinstance(results[i], ErasedRows) for i in range(len(ids)))


def test_a_database_error_in_one_erase_fails_only_that_erase(database, data):
    doomed, fine = data.add_session(runs=2), data.add_session(runs=2)
    refuse_compaction_deletes(database, "disk on fire", only_session=doomed)
    before = data.counts(doomed)

    results = run_concurrently(database, [doomed, fine])

    assert isinstance(results[0], Exception) and "disk on fire" in str(results[0])
    assert data.counts(doomed) == before  # nothing half done
    assert results[1] is not None and data.counts(fine)["sessions"] == 0


def test_a_failed_shared_commit_retries_each_erase_alone(database, data, monkeypatch):
    ids = [data.add_session(runs=1) for _ in range(4)]
    real_transaction = database.group_commit._batch_transaction
    failures = []

    @contextmanager
    def failing_once():
        with real_transaction() as conn:
            yield conn
            if not failures:
                failures.append(True)
                # Raised before COMMIT, so the whole shared transaction rolls back.
                raise RuntimeError("commit refused")

    def queued():
        monkeypatch.setattr(database.group_commit, "_batch_transaction", failing_once)

    results = run_concurrently(database, ids, queued=queued)

    assert failures == [True]
    assert all(isinstance(results[i], ErasedRows) for i in range(len(ids))), results
    assert all(data.counts(sid)["sessions"] == 0 for sid in ids)


def test_after_close_erases_still_work_alone(database, data):
    database.group_commit.close()
    session_id = data.add_session(runs=1)
    assert erase(database, session_id) is not None
    assert data.counts(session_id)["sessions"] == 0


def test_event_loop_callers_share_commits_and_each_id_succeeds_exactly_once(database, data):
    """The handler's path: coroutines awaiting the writer thread, no threadpool."""
    import asyncio

    from storage.erase import erase_session_async

    ids = data.add_sessions(unique_ids("loop", 10), runs=2)
    asked = ids * 3 + ["never-existed"]

    async def erase_all():
        table = database.settings.default_session_table
        return await asyncio.gather(*(erase_session_async(database, table, sid) for sid in asked))

    with writer_held(database):
        results_future = []
        runner = threading.Thread(target=lambda: results_future.append(asyncio.run(erase_all())))
        runner.start()
        while database.group_commit._queue.qsize() < len(asked):
            threading.Event().wait(0.005)
    runner.join()
    (results,) = results_future
    for session_id in ids:
        found = [r for r, sid in zip(results, asked) if sid == session_id and r is not None]
        assert len(found) == 1 and found[0].counts == {"runs": 2, "transcripts": 1, "compactions": 1,
                                                       "tool_result_payloads": 1, "tool_results": 1, "sessions": 1}
    left = data.counts_many(ids)
    assert all([left[session_id][k] for k in CONVERSATION_KINDS] == [0] * len(CONVERSATION_KINDS) for session_id in ids)
    assert results[-1] is None


def test_event_loop_callers_without_group_commit_use_a_thread(make_database):
    import asyncio

    from storage.erase import erase_session_async

    database = make_database()
    agno = AgnoData(database, database.settings.default_session_table)
    agno.create_all()
    session_id = agno.add_session(runs=1)
    table = database.settings.default_session_table
    assert asyncio.run(erase_session_async(database, table, session_id)) is not None
    assert asyncio.run(erase_session_async(database, table, session_id)) is None


@pytest.fixture
def keyed_data(database):
    """Agno 3.x's sessions and runs, plus transcripts and compactions: every dependent is
    keyed by the session id, so a batch of erases runs as one set of statements."""
    agno = AgnoData(database, database.settings.default_session_table)
    agno.create_all(with_side_tables=False)
    with database.engine.begin() as conn:
        agno.sessions.metadata.create_all(conn, tables=[agno.side["transcripts"], agno.side["compactions"]])
    return agno


def plain_erase(database, session_id, table=None):
    return erase_session(database, table or database.settings.default_session_table, session_id)


@contextmanager
def statements_recorded(database, with_rows: list[str] | None = None):
    """Every statement run meanwhile; also, in ``with_rows``, those with a result set."""
    seen: list[str] = []

    def record(_conn, cursor, statement, *_args):
        seen.append(statement)
        if with_rows is not None and cursor.description is not None:
            with_rows.append(statement)

    event.listen(database.engine, "after_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(database.engine, "after_cursor_execute", record)


def test_a_batch_of_plain_erases_is_one_set_of_statements_with_exact_answers(database, keyed_data, monkeypatch):
    import tests.test_group_commit as this

    monkeypatch.setattr(this, "erase", plain_erase)
    ids = keyed_data.add_sessions([f"set-{i}" for i in range(12)], runs=3)
    asked = ids * 2 + ["missing-1", ids[0], "missing-2"]
    recorded, with_rows = [], []
    plain_erase(database, "warm-up")  # the table look-up, once per schema, is not the batch's

    with statements_recorded(database, with_rows) as seen:
        results = run_concurrently(database, asked, queued=lambda: recorded.append((len(seen), len(with_rows))))
    batch_statements = seen[recorded[0][0]:]

    # One DELETE per table (runs, transcripts, compactions, sessions), however many
    # erases the batch holds.
    assert sum(s.upper().count("DELETE FROM") for s in batch_statements) == 4
    if database.dialect == "sqlite":
        # sqlite3 hands the GIL over for every row it steps through, so a batch reads
        # single-row results only: the schema version and the survey, no RETURNING.
        batch_results = with_rows[recorded[0][1]:]
        assert len(batch_results) == 2, batch_results
        assert not any(s.lstrip().upper().startswith("DELETE") for s in batch_results), batch_results
    else:
        # Each statement is a round trip: the locked read, which also looks up the
        # absent tables (tool results, payloads), then one statement deleting from
        # every table. (The holder's transaction ends with a savepoint release after
        # the count was taken.)
        round_trips = [s for s in batch_statements if "SAVEPOINT" not in s]
        assert len(round_trips) == 2, round_trips
    expected = {"runs": 3, "transcripts": 1, "compactions": 1, "sessions": 1}
    for session_id in ids:
        outcomes = [results[i] for i, sid in enumerate(asked) if sid == session_id]
        # The first ask erases it; every later one finds it gone, as serially.
        assert outcomes[0] is not None and outcomes[0].counts == expected, outcomes
        assert all(r is None for r in outcomes[1:]), outcomes
        assert data_gone(keyed_data, session_id)
    assert results[len(ids) * 2] is None and results[len(asked) - 1] is None


def test_not_found_in_a_set_batch_changes_nothing_orphans_included(database, keyed_data, monkeypatch):
    import tests.test_group_commit as this

    monkeypatch.setattr(this, "erase", plain_erase)
    orphan_id = "set-orphan"
    with database.engine.begin() as conn:
        conn.execute(keyed_data.side["transcripts"].insert(), {
            "framework": "f", "project_key": "p", "session_id": "ext", "subpath": "", "position": 0,
            "entry": "e", "agno_session_id": orphan_id, "created_at": 1})  # fmt: skip
    real = keyed_data.add_sessions(["set-real-1", "set-real-2"], runs=2)
    batches_before = database.group_commit.batches

    results = run_concurrently(database, [real[0], orphan_id, real[1]])

    assert database.group_commit.batches - batches_before == 2  # no redo: the not-found did not raise
    assert results[1] is None
    assert keyed_data.counts(orphan_id)["transcripts"] == 1
    assert results[0].counts["sessions"] == results[2].counts["sessions"] == 1
    assert data_gone(keyed_data, real[0]) and data_gone(keyed_data, real[1])


def test_a_side_table_created_after_a_set_batch_is_erased_by_the_next(database, monkeypatch):
    """The set path finds tables on its own (on PostgreSQL inside its locked read)."""
    import tests.test_group_commit as this

    monkeypatch.setattr(this, "erase", plain_erase)
    agno = AgnoData(database, database.settings.default_session_table)
    agno.create_all(with_side_tables=False)
    assert plain_erase(database, agno.add_session(everything=False)).counts == {"runs": 2, "sessions": 1}
    # Agno creates its transcripts and compactions tables lazily, later.
    with database.engine.begin() as conn:
        agno.sessions.metadata.create_all(conn, tables=[agno.side["transcripts"], agno.side["compactions"]])
    later = agno.add_session()

    assert plain_erase(database, later).counts == {"runs": 2, "transcripts": 1, "compactions": 1, "sessions": 1}
    assert data_gone(agno, later)


def test_erases_of_different_tables_in_one_batch_keep_their_order(make_database, monkeypatch):
    import tests.test_group_commit as this

    database = make_database(session_tables=("agno_sessions", "team_sessions"), group_commit=True)
    settings = database.settings
    agent, team = (AgnoData(database, table) for table in settings.session_tables)
    agent.create_all(with_side_tables=False)
    team.create_all(with_side_tables=False)
    agent_ids = agent.add_sessions(["mix-a1", "mix-a2", "mix-a3"], runs=1)
    team_ids = team.add_sessions(["mix-t1", "mix-t2"], runs=4)
    tables = {sid: settings.session_tables[0] for sid in agent_ids} | {sid: settings.session_tables[1] for sid in team_ids}
    monkeypatch.setattr(this, "erase", lambda db, sid: plain_erase(db, sid, tables.get(sid, settings.session_tables[0])))
    asked = ["mix-a1", "mix-a2", "mix-t1", "mix-a3", "mix-t2", "mix-t1", "mix-a1"]

    results = run_concurrently(database, asked)

    assert [r.counts["runs"] if r is not None else None for r in (results[i] for i in range(len(asked)))] == [
        1, 1, 4, 1, 4, None, None
    ]
    assert all(data_gone(agent, sid) for sid in agent_ids) and all(data_gone(team, sid) for sid in team_ids)


@pytest.mark.parametrize("backend", ["sqlite"])  # only SQLite's writers share a lock across workers
def test_erases_that_arrive_while_the_writer_waits_for_the_lock_join_its_batch(make_database):
    """The lock is what both workers' writers queue on: a turn takes everything waiting."""
    database = make_database(group_commit=True)
    data = AgnoData(database, database.settings.default_session_table)
    data.create_all(with_side_tables=False)
    ids = data.add_sessions([f"turn-{i}" for i in range(6)], runs=1)
    assert plain_erase(database, data.add_session(everything=False)) is not None  # the writer's lock file exists
    batches_before = database.group_commit.batches
    results: dict[int, object] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, plain_erase(database, ids[i]))) for i in range(6)]
    with writers_lock_held(database):
        threads[0].start()
        threading.Event().wait(0.05)
        # The writer has taken the first erase and waits for the lock.
        assert database.group_commit._queue.qsize() == 0 and database.group_commit.batches == batches_before
        for thread in threads[1:]:
            thread.start()
        while database.group_commit._queue.qsize() < 5:
            threading.Event().wait(0.005)
    for thread in threads:
        thread.join()

    assert database.group_commit.batches - batches_before == 1
    assert all(results[i] is not None and results[i].counts["sessions"] == 1 for i in range(6))
    assert all(data_gone(data, session_id) for session_id in ids)


def test_the_writer_gets_the_gil_back_quickly(database, data):
    import sys

    from storage.group_commit import WRITER_SWITCH_INTERVAL

    previous = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)
        assert erase(database, data.add_session(runs=1)) is not None
        assert sys.getswitchinterval() <= WRITER_SWITCH_INTERVAL
    finally:
        sys.setswitchinterval(previous)


def _wal_holding_a_marker(data, session_id) -> tuple[Path, bytes]:
    """Write a marker into the session's runs, as an agent would; the WAL now holds it."""
    marker = data.write_private_text(session_id)
    wal = Path(f"{data.database.engine.url.database}-wal")
    assert marker in wal.read_bytes(), "the scan must see the text while the WAL holds it"
    return wal, marker


both_writers = pytest.mark.parametrize("writer_process", [False, True], ids=["in-worker", "writer-process"])


@pytest.mark.parametrize("backend", ["sqlite"])
@both_writers
def test_an_erased_conversation_leaves_the_wal_once_the_writer_is_idle(make_database, writer_process):
    database = make_database(group_commit=True, writer_process=writer_process)
    data = AgnoData(database, database.settings.default_session_table)
    data.create_all(with_side_tables=False)
    session_id = data.add_session(runs=2)
    wal, marker = _wal_holding_a_marker(data, session_id)

    assert erase(database, session_id) is not None

    wait_until(lambda: marker not in wal.read_bytes(), what="the WAL to be cut")
    assert marker not in Path(database.engine.url.database).read_bytes()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_reader_on_an_old_snapshot_only_delays_the_wal_cut(database, data):
    first, second = data.add_sessions(unique_ids("old-snapshot", 2), runs=2)
    wal, marker = _wal_holding_a_marker(data, first)

    with database.engine.connect() as agent, agent.begin():
        agent.execute(data.sessions.select()).all()  # an agent reading, on the snapshot before the erase
        assert erase(database, first) is not None
        time.sleep(1.5)  # idle long enough for the cut to be tried, and tried again
        assert marker in wal.read_bytes(), "the reader's snapshot still needs those frames"
        assert erase(database, second) is not None  # erases go on meanwhile

    wait_until(lambda: marker not in wal.read_bytes(), what="the WAL to be cut")


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_wal_that_cannot_be_cut_is_not_retried_until_the_next_commit(database, data, monkeypatch, caplog):
    tries: list[int] = []

    def cannot_cut():
        tries.append(1)
        raise OSError("attempt to write a readonly database")

    monkeypatch.setattr(database.group_commit, "truncate_wal", cannot_cut)
    first, second = data.add_sessions(unique_ids("no-cut", 2), runs=1)

    with caplog.at_level(logging.WARNING, logger="storage.group_commit"):
        assert erase(database, first) is not None
        wait_until(lambda: tries, what="the cut to be tried")
        time.sleep(1.5)  # past the retry interval: a retry would have come by now
        assert len(tries) == 1, "a failing cut must not log every second"
        assert erase(database, second) is not None
        wait_until(lambda: len(tries) == 2, what="the next commit's cut")

    assert caplog.text.count("could not truncate the WAL") == 2
