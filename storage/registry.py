"""The configured databases, addressed by id, AgentOS's rules for choosing one, and the erase."""

from __future__ import annotations

import asyncio
import logging
import shlex
from dataclasses import dataclass

from storage.audit import AuditEntry, create_audit_table
from storage.config import DatabaseSettings, SessionTable
from storage.database import Database
from storage.erase import ErasedRows, EraseRequest, erase_batch
from storage.writer import MAX_BATCH, Writer

logger = logging.getLogger("storage")


class TargetError(Exception):
    """The request does not name a usable database or table; the message is safe to show."""

    status = 400


class DatabaseRequired(TargetError):
    """Several databases, or a table, and no db_id."""


class UnknownDatabase(TargetError):
    status = 404


class UnknownTable(TargetError):
    status = 404

    def __init__(self, db_id: str, table: str):
        super().__init__(f"No database with id '{db_id}' has table '{table}'")


@dataclass(frozen=True)
class Target:
    database: Database
    session_table: SessionTable
    table_named_by_caller: bool


class Storage:
    def __init__(self, databases: tuple[DatabaseSettings, ...], *, busy_timeout_ms: int = 5000,
                 erase_traces: bool = False, audit_table: str | None = None, group_commit: bool = True):  # fmt: skip
        self.audit_table = audit_table
        self.databases = {db.id: Database(db, busy_timeout_ms=busy_timeout_ms) for db in databases}

        def eraser(database: Database):
            return lambda conn, requests: erase_batch(conn, database, requests, erase_traces, audit_table)

        # Without group commit every erase is a batch of one: its own transaction.
        self.writers = {
            db_id: Writer(database, eraser(database), max_batch=MAX_BATCH if group_commit else 1)
            for db_id, database in self.databases.items()
        }

    def start(self, *, check_files: bool = True) -> None:
        """Create missing tables; with ``check_files``, warn once of every SQLite database
        whose files other users can open (a new one is created private)."""
        for database in self.databases.values():
            exposed = database.files_open_to_others() if check_files else []
            if exposed:
                logger.warning(
                    "the files of database %r can be opened by other users (%s); make them private: chmod 600 %s",
                    database.id, ", ".join(f"{path} is {mode:04o}" for path, mode in exposed),
                    " ".join(shlex.quote(path) for path, _mode in exposed),
                )  # fmt: skip
            if database.settings.create_tables:
                database.create_missing_tables()
                if self.audit_table:
                    with database.transaction() as conn:
                        create_audit_table(conn, database.ref(self.audit_table))

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        for database in self.databases.values():
            database.dispose()

    def locate(self, db_id: str | None, table: str | None) -> Target:
        """The database and sessions table, as AgentOS's ``get_db`` picks them: empty is
        absent; ``table`` is compared with configured names, its existence left to the erase."""
        db_id = db_id or None
        table = table or None
        if db_id is None:
            if table is not None:
                raise DatabaseRequired("The db_id query parameter is required when passing a table")
            if len(self.databases) > 1:
                raise DatabaseRequired("The db_id query parameter is required when using multiple databases")
            database = next(iter(self.databases.values()))
        else:
            database = self.databases.get(db_id)
            if database is None:
                raise UnknownDatabase(f"No database found with id '{db_id}'")
        if table is None:
            return Target(database, database.settings.default_session_table, table_named_by_caller=False)
        session_table = database.settings.session_table(table)
        if session_table is None:
            raise UnknownTable(database.id, table)
        return Target(database, session_table, table_named_by_caller=True)

    async def erase(self, target: Target, session_id: str, *, audit: AuditEntry | None = None) -> ErasedRows | None:
        """Erase a session where ``locate`` found it, with its audit row if configured;
        None when there is no such session. Returns once the erase is durable."""
        request = EraseRequest(target.session_table, session_id, audit)
        erased = await self.writers[target.database.id].submit(request)
        if erased is None and target.table_named_by_caller and not await asyncio.to_thread(_has_sessions_table, target):
            raise UnknownTable(target.database.id, target.session_table.name)
        return erased


def _has_sessions_table(target: Target) -> bool:
    ref = target.database.ref(target.session_table.name)
    # In a transaction: ``existing`` trusts what it saw within the same one.
    with target.database.engine.begin() as conn:
        return ref in target.database.existing(conn, [ref])
