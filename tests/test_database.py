"""One database: its connection settings, its health probe, its SQLite files (created
private, never through a symlink, a warning for those open to others), and the writers'
lock file beside a SQLite file (created private, never through a symlink, waited for with
a bound)."""

from __future__ import annotations

import fcntl
import logging
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from sqlalchemy import event

from storage import (
    CannotWrite,
    Database,
    DatabaseSettings,
    Storage,
    UnsafeDatabaseFile,
    erase_session,
)
from storage.database import WritersTurn, WritersTurnTimeout
from tests.support import AgnoData, require_root

sqlite_only = pytest.mark.parametrize("backend", ["sqlite"])


def erase(database, session_id):
    return erase_session(database, database.settings.default_session_table, session_id)


@sqlite_only
def test_erased_text_is_overwritten_in_the_database_file_whatever_sqlites_build_default(make_database):
    """SQLite leaves deleted rows' bytes in free pages unless ``secure_delete`` is on,
    and whether it is on by default depends on how SQLite was built (Debian's is, many
    others are not). An erase must not leave the conversation readable in the file."""
    database = make_database()
    # Runs before our own settings, as a build whose default is off would.
    event.listen(database.engine, "connect", lambda dbapi, _: dbapi.execute("PRAGMA secure_delete=OFF"), insert=True)
    data = AgnoData(database, database.settings.default_session_table)
    data.create_all()
    session_id = data.add_session(runs=2)
    data.add_session(runs=2)
    marker = data.write_private_text(session_id)
    path = Path(database.engine.url.database)
    assert database.truncate_wal()
    assert marker in path.read_bytes(), "the scan must see the text while it is stored"

    assert erase(database, session_id) is not None
    assert database.truncate_wal()

    assert marker not in path.read_bytes()


@sqlite_only
def test_a_write_connection_commits_durably_to_the_wal_and_overwrites_deleted_rows(make_database):
    """A 204 is sent after COMMIT returns, so COMMIT must mean on disk (synchronous=FULL
    in WAL mode fsyncs the WAL at every commit), and foreign keys must hold."""
    conn = make_database().connect_for_writes()
    try:
        settings = {name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                    for name in ("journal_mode", "synchronous", "secure_delete", "foreign_keys")}  # fmt: skip
    finally:
        conn.close()
    assert settings == {"journal_mode": "wal", "synchronous": 2, "secure_delete": 1, "foreign_keys": 1}


def test_ping_succeeds_on_a_database_that_can_take_a_write(make_database):
    make_database().ping()


def sqlite_files(database: Database) -> dict[str, int]:
    path = database.engine.url.database
    return {Path(name).name: stat.S_IMODE(os.stat(name).st_mode) for name in (path, f"{path}-wal", f"{path}-shm")}


@sqlite_only
@pytest.mark.parametrize("umask", [0o022, 0o000, 0o277])
def test_a_new_database_and_its_wal_and_shm_are_private_whatever_the_umask(make_database, umask):
    """SQLite creates a database 0644 under the usual umask, and its -wal and -shm with the
    database's mode: anyone on the machine could read every conversation. A umask that
    takes the owner's write away would leave a database SQLite opens read-only."""
    previous = os.umask(umask)
    try:
        database = make_database()
        data = AgnoData(database, database.settings.default_session_table)
        data.create_all()
        data.add_session()
        with database.engine.connect() as conn:  # open: the -wal and -shm exist
            conn.exec_driver_sql("SELECT 1")
            assert sqlite_files(database) == {"default.db": 0o600, "default.db-wal": 0o600, "default.db-shm": 0o600}
    finally:
        os.umask(previous)


def start_logging(settings, caplog) -> list[logging.LogRecord]:
    storage = Storage((settings,), busy_timeout_ms=2000)
    try:
        with caplog.at_level(logging.WARNING, logger="storage"):
            storage.start()
    finally:
        storage.close()
    return [r for r in caplog.records if r.levelno >= logging.WARNING]


@sqlite_only
def test_an_existing_database_open_to_others_gets_one_warning_at_start_naming_the_fix(make_database, caplog):
    database = make_database()
    data = AgnoData(database, database.settings.default_session_table)
    data.create_all()
    database.dispose()
    path = database.engine.url.database
    os.chmod(path, 0o644)

    warnings = start_logging(database.settings, caplog)

    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    message = warnings[0].getMessage()
    assert f"{path} is 0644" in message and message.endswith(f"chmod 600 {path}")
    caplog.clear()
    os.chmod(path, 0o600)
    assert start_logging(database.settings, caplog) == []


@sqlite_only
def test_no_database_is_created_through_a_symlink_to_nothing(make_database_settings, tmp_path):
    """A link planted where the database will be (a shared directory) would make SQLite
    create the database wherever it points."""
    settings = make_database_settings()
    elsewhere = tmp_path / "elsewhere.db"
    os.symlink(elsewhere, settings.url.removeprefix("sqlite:///"))
    database = Database(settings, busy_timeout_ms=2000)
    try:
        with pytest.raises(UnsafeDatabaseFile, match="symlink to nothing"):
            database.create_missing_tables()
        with pytest.raises(UnsafeDatabaseFile):
            database.ping()
    finally:
        database.dispose()
    assert not elsewhere.exists()


@sqlite_only
def test_a_database_reached_through_the_operators_symlink_is_used(make_database_settings, tmp_path):
    settings = make_database_settings()
    target = tmp_path / "data" / "agno.db"
    target.parent.mkdir()
    creator = Database(DatabaseSettings(id="t", url=f"sqlite:///{target}"))
    creator.create_missing_tables()
    creator.dispose()
    os.symlink(target, settings.url.removeprefix("sqlite:///"))
    database = Database(settings, busy_timeout_ms=2000)
    try:
        data = AgnoData(database, settings.default_session_table)
        data.create_all()
        assert erase(database, data.add_session()) is not None
    finally:
        database.dispose()
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


@sqlite_only
def test_a_worker_that_keeps_committing_lets_a_waiting_worker_have_its_turn(make_database):
    """Without fairness the busy worker takes the turn again the moment it lets go, batch
    after batch, and the other waits until its busy timeout answers 500."""
    database = make_database()
    database.ping()
    other_worker = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import time
            from storage.database import WritersTurn
            turn = WritersTurn({database.turn.path!r}, 5.0)
            print("taking turns", flush=True)
            while True:
                with turn.held():
                    time.sleep(0.1)
        """)],
        cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE,
    )  # fmt: skip
    ours = WritersTurn(database.turn.path, 1.0)
    try:
        assert other_worker.stdout.readline() == b"taking turns\n"
        for _ in range(5):
            assert ours.acquire(1.0), "the busy worker kept the turn for a whole second"
            ours.release()
            time.sleep(0.05)
    finally:
        other_worker.kill()
        other_worker.communicate(timeout=10)
        ours.close()


@sqlite_only
def test_the_writers_lock_file_is_created_private_beside_the_database(make_database):
    database = make_database()
    database.ping()
    lock = Path(database.turn.path)
    assert lock.parent == Path(database.engine.url.database).parent
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600


@sqlite_only
def test_a_symlink_at_the_lock_path_is_never_followed(make_database_settings, tmp_path, caplog):
    settings = make_database_settings()
    victim = tmp_path / "victim.txt"
    victim.write_text("not ours to touch")
    victim.chmod(0o644)
    os.symlink(victim, f"{settings.url.removeprefix('sqlite:///')}-writer-lock")
    database = Database(settings, busy_timeout_ms=2000)
    try:
        data = AgnoData(database, settings.default_session_table)
        with caplog.at_level(logging.WARNING, logger="storage"):
            data.create_all()
        session_id = data.add_session(runs=1)
        assert erase(database, session_id) is not None
    finally:
        database.dispose()
    assert victim.read_text() == "not ours to touch" and stat.S_IMODE(victim.stat().st_mode) == 0o644
    assert "not using the writers' lock file" in caplog.text


@sqlite_only
def test_a_lock_file_another_user_owns_is_not_used(make_database_settings, caplog):
    require_root("give the lock file to another user")
    settings = make_database_settings()
    lock = Path(f"{settings.url.removeprefix('sqlite:///')}-writer-lock")
    lock.touch(mode=0o666)
    os.chown(lock, 65534, 65534)
    # That user holds it, as another local user in a shared directory could.
    other = os.open(lock, os.O_RDWR)
    fcntl.flock(other, fcntl.LOCK_EX)
    database = Database(settings, busy_timeout_ms=2000)
    try:
        data = AgnoData(database, settings.default_session_table)
        with caplog.at_level(logging.WARNING, logger="storage"):
            data.create_all()
        assert erase(database, data.add_session(runs=1)) is not None
    finally:
        database.dispose()
        os.close(other)
    assert "not a regular file owned by this user" in caplog.text


@sqlite_only
def test_a_held_writers_lock_costs_at_most_the_busy_timeout_and_changes_nothing(make_database):
    database = make_database()
    data = AgnoData(database, database.settings.default_session_table)
    data.create_all()
    session_id = data.add_session(runs=2)
    before = data.counts(session_id)
    # Another process of ours (a hung worker) holds the lock.
    other = os.open(database.turn.path, os.O_RDWR)
    fcntl.flock(other, fcntl.LOCK_EX)
    try:
        with pytest.raises(WritersTurnTimeout):
            erase(database, session_id)
        with pytest.raises(CannotWrite, match="^locked$"):
            database.ping()
    finally:
        os.close(other)
    assert data.counts(session_id) == before
    assert erase(database, session_id) is not None
