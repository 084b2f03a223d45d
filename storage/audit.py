"""The optional audit table: one row per erase, written inside the erase's transaction.

Because the row is inserted by the same transaction that deletes the session, an erase
can never commit without its record, and a failed insert undoes the erase. A not-found
attempt is rolled back like everything else in its transaction, so the table holds
erasures only; every attempt, found or not, is in the audit log line.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from sqlalchemy import BigInteger, Column, Connection, Integer, MetaData, String, Table, insert

from storage.database import Database
from storage.erase import ErasedRows
from storage.schema import JsonDocument


@dataclass(frozen=True)
class AuditEntry:
    """Who asked, as the caller of the storage layer knows it; storage adds what it erased."""

    request_id: str
    caller: str | None


def audit_table(database: Database, name: str) -> Table:
    ref = database.ref(name)
    return Table(
        ref.name,
        MetaData(schema=ref.schema),
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("erased_at_ms", BigInteger, nullable=False),
        Column("request_id", String, nullable=False),
        Column("caller", String),
        Column("db_id", String, nullable=False),
        Column("session_table", String, nullable=False),
        Column("session_id", String, nullable=False),
        # Row counts by kind, never the rows themselves.
        Column("rows_erased", JsonDocument, nullable=False),
    )


def create_audit_table(database: Database, name: str) -> None:
    table = audit_table(database, name)
    # A write transaction, so workers starting together cannot both decide to create it.
    database.write(lambda conn: table.metadata.create_all(conn, checkfirst=True))


def audit_writer(
    database: Database, name: str, session_table: str, session_id: str, entry: AuditEntry
) -> Callable[[Connection, ErasedRows], None]:
    """The in-transaction hook ``erase_session`` calls once the session row is gone."""
    table = audit_table(database, name)

    def write(conn: Connection, erased: ErasedRows) -> None:
        conn.execute(
            insert(table).values(
                erased_at_ms=int(time.time() * 1000),
                request_id=entry.request_id,
                caller=entry.caller,
                db_id=database.id,
                session_table=session_table,
                session_id=session_id,
                rows_erased=dict(erased.counts),
            )
        )

    return write
