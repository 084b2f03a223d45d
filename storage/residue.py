"""What an erase can leave behind, found and swept.

``scan`` searches every text column of every table for ids, as a privacy audit would.
``find_orphans`` lists the rows an erase takes (runs, transcripts, compactions, tool
results, payloads, and with ``erase_traces`` traces and spans) whose session no longer
exists: an agent still running when its session was erased writes them afterwards.
``sweep_orphans`` erases them, one transaction per session id, each checked again in
the statement that deletes it, so a session that came back keeps its rows.
"""

from __future__ import annotations

import functools
import json
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from sqlalchemy import (
    JSON,
    Column,
    Connection,
    MetaData,
    String,
    Table,
    Text,
    cast,
    exists,
    func,
    inspect,
    literal,
    or_,
    select,
)
from sqlalchemy.sql.type_api import TypeEngine
from sqlalchemy.types import NullType

from storage.audit import AuditEntry, create_audit_table, record_erasures
from storage.database import Database
from storage.erase import Dependent, ErasedRows, plan_for
from storage.schema import POSTGRES_PAYLOAD_SCHEMA


@dataclass(frozen=True)
class Residue:
    """Rows of ``table`` whose ``column`` holds ``session_id``."""

    db_id: str
    session_id: str
    table: str
    column: str
    rows: int


@dataclass(frozen=True)
class Orphans:
    """Rows under ``session_id``, by kind, in a database that has no such session."""

    db_id: str
    session_id: str
    rows: dict[str, int]


def _spellings(session_id: str, dialect: str) -> list[str]:
    """The id as text holds it, and as JSON does: escaped, ASCII-only as Python writes it
    (SQLite's JSON text) or not (PostgreSQL's jsonb). PostgreSQL text holds no NUL."""
    spelled = {session_id, json.dumps(session_id)[1:-1], json.dumps(session_id, ensure_ascii=False)[1:-1]}
    return sorted(s for s in spelled if dialect != "postgresql" or "\x00" not in s)


def _holds_text(kind: TypeEngine) -> bool:
    # NullType: a SQLite column declared without a type, which holds anything.
    return isinstance(kind, (String, JSON, NullType))


def _schemas(database: Database) -> tuple[str | None, ...]:
    if database.dialect == "postgresql":
        return (database.settings.schema or "public", POSTGRES_PAYLOAD_SCHEMA)
    return (None,)


def _text_columns(conn: Connection, database: Database, skip: str | None) -> Iterator[tuple[str, Table]]:
    inspector = inspect(conn)
    schemas = _schemas(database)
    for schema in schemas:
        for name in inspector.get_table_names(schema=schema):
            if (schema, name) == (schemas[0], skip):  # the audit table is in the database's own schema
                continue
            columns = [Column(c["name"], c["type"]) for c in inspector.get_columns(name, schema=schema)]
            table = Table(name, MetaData(schema=schema), *(c for c in columns if _holds_text(c.type)))
            if table.columns:
                yield (f"{schema}.{name}" if schema else name), table


def scan(database: Database, session_ids: Iterable[str], *, audit_table: str | None = None) -> list[Residue]:
    """Every (table, column) whose rows hold one of ``session_ids``, by case-sensitive
    substring (so an id inside a longer one counts too), with how many rows; not the
    audit table, which keeps erased ids by design."""
    position = func.strpos if database.dialect == "postgresql" else func.instr
    found = []
    with database.engine.connect() as conn:
        for qualified, table in _text_columns(conn, database, audit_table):
            for session_id in session_ids:
                spellings = _spellings(session_id, database.dialect)
                if not spellings:
                    continue
                counts = [func.count().filter(or_(*(position(cast(c, Text), s) > 0 for s in spellings)))
                          for c in table.columns]  # fmt: skip
                row = conn.execute(select(*counts).select_from(table)).one()
                found += [Residue(database.id, session_id, qualified, c.name, n) for c, n in zip(table.columns, row) if n]
    return found


def _absent(owner, sessions: list[Table]):
    return [~exists().where(table.c.session_id == owner) for table in sessions]


def _orphan_kinds(conn: Connection, database: Database, erase_traces: bool) -> list[tuple[Dependent, list[Table]]]:
    """Each dependent table once, in erase order, with the sessions tables its owner must
    be missing from: all of them, so a row whose id any sessions table has is never taken
    (two sessions tables may share one runs table)."""
    plans = [(t, plan_for(conn, database, t, erase_traces)) for t in database.settings.session_tables]
    present = database.existing(conn, [database.ref(t.name) for t, _ in plans])
    sessions = [plan.sessions for t, plan in plans if database.ref(t.name) in present]
    kinds, seen = [], set()
    for position, (_session_table, plan) in enumerate(plans):
        for dependent in plan.dependents:
            if (dependent.kind == "runs" or position == 0) and dependent.table.fullname not in seen:
                seen.add(dependent.table.fullname)
                kinds.append((dependent, sessions))
    return kinds


def find_orphans(database: Database, *, erase_traces: bool = False) -> list[Orphans]:
    found: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    with database.engine.connect() as conn:
        for dependent, sessions in _orphan_kinds(conn, database, erase_traces):
            owner = dependent.owner
            query = select(owner, func.count()).select_from(dependent.rows()).where(*_absent(owner, sessions))
            for session_id, count in conn.execute(query.group_by(owner)):
                found[session_id][dependent.kind] += count
    return [Orphans(database.id, session_id, dict(rows)) for session_id, rows in sorted(found.items())]


def sweep_orphans(database: Database, session_ids: Iterable[str], *, erase_traces: bool = False,
                  audit_table: str | None = None, audit: AuditEntry | None = None) -> dict[str, ErasedRows]:  # fmt: skip
    """Erase the orphans of each id in a transaction of its own, audited as an erase is;
    an id whose session exists again keeps its rows (and is not in the answer)."""
    swept = {}
    for session_id in session_ids:
        sweep = functools.partial(_sweep_one, database=database, session_id=session_id, erase_traces=erase_traces,
                                  audit_table=audit_table, audit=audit)  # fmt: skip
        rows = database.write(sweep)
        if rows.counts:
            swept[session_id] = rows
    return swept


def _sweep_one(conn: Connection, database: Database, session_id: str, erase_traces: bool, audit_table: str | None,
               audit: AuditEntry | None) -> ErasedRows:  # fmt: skip
    counts: dict[str, int] = defaultdict(int)
    for dependent, sessions in _orphan_kinds(conn, database, erase_traces):
        # The id, only while no sessions table has it: checked by the delete itself.
        orphan = select(literal(session_id, String)).where(*_absent(literal(session_id, String), sessions))
        deleted = conn.execute(dependent.delete_owned_by(orphan)).rowcount
        if deleted:
            counts[dependent.kind] += deleted
    if counts and audit_table and audit is not None:
        ref = database.ref(audit_table)
        create_audit_table(conn, ref)
        record_erasures(conn, ref, [{
            "request_id": audit.request_id, "caller": audit.caller, "db_id": database.id,
            "session_table": database.settings.default_session_table.name, "session_id": session_id,
            "rows_erased": dict(counts),
        }])  # fmt: skip
    return ErasedRows(dict(counts))
