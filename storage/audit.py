"""The optional audit table: one row per erase, inserted by the erase's own transaction, so
no erase commits without its record and a failed insert undoes the erase. A not-found
attempt changes nothing and gets no row (every attempt is in the audit log line)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache

from sqlalchemy import BigInteger, Column, Connection, Integer, MetaData, String, Table, insert

from storage.schema import JsonDocument, TableRef


@dataclass(frozen=True)
class AuditEntry:
    """Who asked, as the caller of the storage layer knows it; storage adds what it erased."""

    request_id: str
    caller: str | None


@lru_cache(maxsize=None)
def audit_table(ref: TableRef) -> Table:
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


def create_audit_table(conn: Connection, ref: TableRef) -> None:
    table = audit_table(ref)
    table.metadata.create_all(conn, tables=[table], checkfirst=True)


def record_erasures(conn: Connection, ref: TableRef, rows: list[dict]) -> None:
    """One audit row per erased session; ``rows`` carry every column but the time."""
    if rows:
        now_ms = int(time.time() * 1000)
        conn.execute(insert(audit_table(ref)), [dict(row, erased_at_ms=now_ms) for row in rows])
