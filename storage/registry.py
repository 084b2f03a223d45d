"""The configured databases, addressed by id, and AgentOS's rules for choosing one."""

from __future__ import annotations

from dataclasses import dataclass

from agentos_sessions.settings import SessionTable, Settings
from storage.audit import AuditEntry, audit_writer, create_audit_table
from storage.database import Database
from storage.erase import ErasedRows, SessionTableMissing, erase_session_async


class TargetError(Exception):
    """The request does not name a usable database or table; the message is safe to show."""

    status = 400


class DatabaseRequired(TargetError):
    status = 400


class UnknownDatabase(TargetError):
    status = 404


class UnknownTable(TargetError):
    status = 404


@dataclass(frozen=True)
class Target:
    database: Database
    session_table: SessionTable
    table_named_by_caller: bool


class Storage:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.databases = {
            db.id: Database(
                db,
                busy_timeout_ms=settings.busy_timeout_ms,
                group_commit=settings.group_commit,
                writer_process=settings.writer_process,
            )
            for db in settings.databases
        }

    def start(self) -> None:
        for database in self.databases.values():
            if database.settings.create_tables:
                database.create_missing_tables()
                if self.settings.audit_table:
                    create_audit_table(database, self.settings.audit_table)

    def close(self) -> None:
        for database in self.databases.values():
            database.dispose()

    def locate(self, db_id: str | None, table: str | None) -> Target:
        """Pick the database and sessions table as AgentOS's ``get_db`` does.

        Empty values count as absent. ``table`` is only ever compared with configured
        names; whether that table exists is checked inside the erase transaction.
        """
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
            raise UnknownTable(f"No database with id '{database.id}' has table '{table}'")
        return Target(database, session_table, table_named_by_caller=True)

    async def erase_async(
        self, target: Target, session_id: str, *, audit: AuditEntry | None = None
    ) -> ErasedRows | None:
        """Erase a session where ``locate`` found it, with its audit row if configured;
        awaited on the event loop (see ``Database.write_shared_async``)."""
        try:
            return await erase_session_async(
                target.database,
                target.session_table,
                session_id,
                erase_traces=self.settings.erase_traces,
                in_transaction=self._audit_hook(target, session_id, audit),
            )
        except SessionTableMissing:
            return self._table_missing(target)

    def _audit_hook(self, target: Target, session_id: str, audit: AuditEntry | None):
        if audit is None or not self.settings.audit_table:
            return None
        return audit_writer(target.database, self.settings.audit_table, target.session_table.name, session_id, audit)

    @staticmethod
    def _table_missing(target: Target) -> None:
        if target.table_named_by_caller:
            raise UnknownTable(
                f"No database with id '{target.database.id}' has table '{target.session_table.name}'"
            ) from None
        # No sessions table yet means no session with this id.
        return None
