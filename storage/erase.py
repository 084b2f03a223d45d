"""The erase: a session and everything Agno keeps under its id, in one transaction."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from sqlalchemy import Connection, bindparam, column, delete, select, table, tuple_

from agentos_sessions.settings import SessionTable
from storage.database import Database
from storage.schema import COMPACTIONS_TABLE, PAYLOAD_TABLE, TOOL_RESULTS_TABLE, TRANSCRIPTS_TABLE, TableRef


class SessionTableMissing(Exception):
    """The sessions table to erase from does not exist in the database."""


class _NotFound(Exception):
    """Raised inside the transaction so that nothing it did is kept."""


@dataclass
class ErasedRows:
    """How many rows went, by kind, for audit and metrics."""

    counts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _table(ref: TableRef, *columns: str):
    return table(ref.name, *(column(c) for c in columns), schema=ref.schema)


def erase_session(
    database: Database,
    session_table: SessionTable,
    session_id: str,
    *,
    erase_traces: bool = False,
    in_transaction: Callable[[Connection, ErasedRows], None] | None = None,
) -> ErasedRows | None:
    """Erase one session. Returns what was erased, or None when no such session exists.

    Dependent rows are deleted first and the session row last: the session row's
    delete decides found or not found, and when it finds nothing the transaction is
    rolled back, so a not-found erase changes nothing even if orphans share the id.
    Every dependent table is handled explicitly, with or without a foreign key.
    ``in_transaction`` runs after the session row is gone, before the commit (the
    audit table uses it); if it raises, nothing is erased.
    """
    work = _erase_work(database, session_table, session_id, erase_traces, in_transaction)
    if work is None:
        return None
    try:
        return database.write_shared(work)
    except _NotFound:
        return None


async def erase_session_async(
    database: Database,
    session_table: SessionTable,
    session_id: str,
    *,
    erase_traces: bool = False,
    in_transaction: Callable[[Connection, ErasedRows], None] | None = None,
) -> ErasedRows | None:
    """``erase_session`` for a coroutine: the same transaction, awaited instead of blocked on."""
    work = _erase_work(database, session_table, session_id, erase_traces, in_transaction)
    if work is None:
        return None
    try:
        return await database.write_shared_async(work)
    except _NotFound:
        return None


def _erase_work(
    database: Database,
    session_table: SessionTable,
    session_id: str,
    erase_traces: bool,
    in_transaction: Callable[[Connection, ErasedRows], None] | None,
) -> Callable[[Connection], ErasedRows] | None:
    """The erase as one unit of work, or None when no such id can exist in this database."""
    if "\x00" in session_id and not database.stores_nul:
        return None
    return lambda conn: _erase(conn, database, session_table, session_id, erase_traces, in_transaction)


@dataclass(frozen=True)
class _Plan:
    """The erase's statements for one set of present tables, compiled once.

    Building and compiling SQLAlchemy constructs costs more CPU per erase than SQLite
    spends deleting the rows, so each distinct layout is compiled once and its SQL
    text executed directly; every statement binds only the session id.
    """

    dependents: tuple[tuple[str, str], ...]  # (kind, sql), in the order they must run
    session: str
    positional_binds: tuple[int, ...]  # per statement (dependents..., session): binds, or -1 if named

    def params(self, index: int, session_id: str):
        count = self.positional_binds[index]
        return {"sid": session_id} if count < 0 else (session_id,) * count


def _compile(database: Database, statement) -> tuple[str, int]:
    compiled = statement.compile(dialect=database.engine.dialect)
    if compiled.positional:
        return compiled.string, len(compiled.positiontup)
    return compiled.string, -1


def _build_plan(
    database: Database, session_table: SessionTable, erase_traces: bool, present: frozenset[TableRef]
) -> _Plan:
    sessions_ref = database.ref(session_table.name)
    runs_ref = database.ref(session_table.runs_table)
    transcripts_ref = database.ref(TRANSCRIPTS_TABLE)
    compactions_ref = database.ref(COMPACTIONS_TABLE)
    tool_results_ref = database.ref(TOOL_RESULTS_TABLE)
    payload_ref = database.payload_ref(PAYLOAD_TABLE)
    traces_ref = database.ref(database.settings.traces_table)
    spans_ref = database.ref(database.settings.spans_table)
    sid = bindparam("sid")
    statements: list[tuple[str, object]] = []

    def erase_where(kind: str, ref: TableRef, key: str) -> None:
        if ref in present:
            target = _table(ref, key)
            statements.append((kind, delete(target).where(target.c[key] == sid)))

    erase_where("runs", runs_ref, "session_id")
    erase_where("transcripts", transcripts_ref, "agno_session_id")
    erase_where("compactions", compactions_ref, "session_id")
    if tool_results_ref in present:
        results = _table(tool_results_ref, "session_id", "namespace", "path")
        if payload_ref in present:
            payloads = _table(payload_ref, "namespace", "path")
            owned = select(results.c.namespace, results.c.path).where(results.c.session_id == sid)
            statements.append(
                ("tool_result_payloads", delete(payloads).where(tuple_(payloads.c.namespace, payloads.c.path).in_(owned)))
            )
        erase_where("tool_results", tool_results_ref, "session_id")
    if erase_traces and traces_ref in present:
        traces = _table(traces_ref, "trace_id", "session_id")
        if spans_ref in present:
            spans = _table(spans_ref, "trace_id")
            session_traces = select(traces.c.trace_id).where(traces.c.session_id == sid)
            statements.append(("spans", delete(spans).where(spans.c.trace_id.in_(session_traces))))
        erase_where("traces", traces_ref, "session_id")
    sessions = _table(sessions_ref, "session_id")
    compiled = [(kind, *_compile(database, statement)) for kind, statement in statements]
    session_sql, session_binds = _compile(database, delete(sessions).where(sessions.c.session_id == sid))
    return _Plan(
        dependents=tuple((kind, sql) for kind, sql, _ in compiled),
        session=session_sql,
        positional_binds=tuple(binds for _, _, binds in compiled) + (session_binds,),
    )


def _plan_for(
    database: Database, session_table: SessionTable, erase_traces: bool, present: frozenset[TableRef]
) -> _Plan:
    plans = database.__dict__.setdefault("_erase_plans", {})
    key = (session_table, erase_traces, present)
    plan = plans.get(key)
    if plan is None:
        plan = plans[key] = _build_plan(database, session_table, erase_traces, present)
    return plan


def _erase(
    conn: Connection,
    database: Database,
    session_table: SessionTable,
    session_id: str,
    erase_traces: bool,
    in_transaction: Callable[[Connection, ErasedRows], None] | None = None,
) -> ErasedRows:
    sessions_ref = database.ref(session_table.name)
    candidates = [
        sessions_ref,
        database.ref(session_table.runs_table),
        database.ref(TRANSCRIPTS_TABLE),
        database.ref(COMPACTIONS_TABLE),
        database.ref(TOOL_RESULTS_TABLE),
        database.payload_ref(PAYLOAD_TABLE),
    ]
    if erase_traces:
        candidates += [database.ref(database.settings.traces_table), database.ref(database.settings.spans_table)]
    present = database.existing(conn, candidates)
    if sessions_ref not in present:
        raise SessionTableMissing(session_table.name)
    plan = _plan_for(database, session_table, erase_traces, frozenset(present))

    erased = ErasedRows()
    # Dependents first, the session row last: its delete decides found or not found.
    for index, (kind, sql) in enumerate(plan.dependents):
        erased.counts[kind] = conn.exec_driver_sql(sql, plan.params(index, session_id)).rowcount
    if conn.exec_driver_sql(plan.session, plan.params(len(plan.dependents), session_id)).rowcount == 0:
        raise _NotFound
    erased.counts["sessions"] = 1
    if in_transaction is not None:
        in_transaction(conn, erased)
    return erased
