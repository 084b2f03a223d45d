"""The erase: a session and everything Agno keeps under its id, in one transaction."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from sqlalchemy import Connection, any_, bindparam, column, delete, select, table, tuple_

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
) -> "_EraseWork | None":
    """The erase as one unit of work, or None when no such id can exist in this database."""
    if "\x00" in session_id and not database.stores_nul:
        return None
    return _EraseWork(database, session_table, session_id, erase_traces, in_transaction)


@dataclass(frozen=True, eq=False)
class _EraseWork:
    """One erase, runnable alone or, through ``run_batch``, together with others like it."""

    database: Database
    session_table: SessionTable
    session_id: str
    erase_traces: bool
    in_transaction: Callable[[Connection, ErasedRows], None] | None

    def __call__(self, conn: Connection) -> ErasedRows:
        return _erase(conn, self.database, self.session_table, self.session_id, self.erase_traces, self.in_transaction)

    @property
    def batch_key(self) -> tuple | None:
        """Erases with equal keys may run as one set of statements (group commit)."""
        if self.in_transaction is not None:
            return None  # an audit row per erase: each runs its own statements
        return (id(self.database), self.session_table, self.erase_traces)

    @staticmethod
    def run_batch(conn: Connection, works: list["_EraseWork"]) -> list[tuple[ErasedRows | None, Exception | None]]:
        return _erase_many(conn, works)

    @property
    def portable(self) -> tuple[SessionTable, str, bool] | None:
        """What the writer process needs to run this erase (``erase_works``); None when
        an audit hook must run inside it, which cannot leave this process."""
        if self.in_transaction is not None:
            return None
        return (self.session_table, self.session_id, self.erase_traces)


def erase_works(database: Database, portables: list[tuple[SessionTable, str, bool]]) -> list[_EraseWork]:
    """``_EraseWork.portable`` turned back into erases of ``database``."""
    return [_EraseWork(database, table, session_id, traces, None) for table, session_id, traces in portables]


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
    # When every dependent is keyed by the session id: the same erase for many sessions
    # at once, as (kind, table, key column) to delete by; None when some need a subquery.
    keyed_dependents: tuple[tuple[str, TableRef, str], ...] | None
    sessions_ref: TableRef

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
    keyed: list[tuple[str, TableRef, str]] = []

    def erase_where(kind: str, ref: TableRef, key: str) -> None:
        if ref in present:
            target = _table(ref, key)
            statements.append((kind, delete(target).where(target.c[key] == sid)))
            keyed.append((kind, ref, key))

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
        keyed_dependents=tuple(keyed) if len(keyed) == len(statements) else None,
        sessions_ref=sessions_ref,
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


def _candidates(database: Database, session_table: SessionTable, erase_traces: bool) -> tuple[TableRef, ...]:
    """Every table an erase may touch, the sessions table first."""
    candidates = (
        database.ref(session_table.name),
        database.ref(session_table.runs_table),
        database.ref(TRANSCRIPTS_TABLE),
        database.ref(COMPACTIONS_TABLE),
        database.ref(TOOL_RESULTS_TABLE),
        database.payload_ref(PAYLOAD_TABLE),
    )
    if erase_traces:
        candidates += (database.ref(database.settings.traces_table), database.ref(database.settings.spans_table))
    return candidates


def _plan_in(conn: Connection, database: Database, session_table: SessionTable, erase_traces: bool) -> _Plan:
    """The plan for the tables present now, inside this transaction."""
    sessions_ref = database.ref(session_table.name)
    present = database.existing(conn, _candidates(database, session_table, erase_traces))
    if sessions_ref not in present:
        raise SessionTableMissing(session_table.name)
    return _plan_for(database, session_table, erase_traces, frozenset(present))


def _erase(
    conn: Connection,
    database: Database,
    session_table: SessionTable,
    session_id: str,
    erase_traces: bool,
    in_transaction: Callable[[Connection, ErasedRows], None] | None = None,
) -> ErasedRows:
    plan = _plan_in(conn, database, session_table, erase_traces)
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


def _erase_many(conn: Connection, works: list[_EraseWork]) -> list[tuple[ErasedRows | None, Exception | None]]:
    """Erases of one layout as one set of statements, each answered as if it ran alone.

    Why: run one by one, a batch of erases costs a few statements each, and every one of
    them is a round trip (PostgreSQL) or a GIL hand-over (SQLite) while the lock that
    serialises writers is held. Here the batch costs a few statements in all.

    Why the answers are exactly those of serial transactions: the sessions that exist
    are read first (and locked on PostgreSQL, so no one can remove them before we do;
    SQLite's write lock is held already); only their dependents and rows are deleted, so
    an erase that finds nothing changes nothing, orphans included; an id given twice is
    found by its first erase only, as serially the second would find it gone. A plan
    whose dependents need subqueries (tool result payloads, spans) runs the erases one
    by one, but only those of sessions found: the others would change nothing and be
    rolled back, so they are answered "not found" without running, and the batch needs
    no redo with savepoints.
    """
    first = works[0]
    database = first.database
    ids = list(dict.fromkeys(work.session_id for work in works))
    if database.dialect == "postgresql":
        plan, found = _lock_and_look_up(conn, database, first.session_table, first.erase_traces, ids)
    else:
        plan, found = _plan_in(conn, database, first.session_table, first.erase_traces), None
    if plan.keyed_dependents is None:
        if found is None:
            found = _sessions_present(conn, plan, ids)
        outcomes: list[tuple[ErasedRows | None, Exception | None]] = []
        for work in works:
            if work.session_id in found:
                found.discard(work.session_id)  # a second ask in this batch finds it gone
                outcomes.append((work(conn), None))
            else:
                outcomes.append((None, _NotFound()))
        return outcomes
    if found is None:
        erased = _erase_counted(conn, database, plan, ids)
    else:
        erased = _erase_returning(conn, database, plan, [session_id for session_id in ids if session_id in found])
    outcomes = []
    for work in works:
        rows = erased.pop(work.session_id, None)
        outcomes.append((rows, None) if rows is not None else (None, _NotFound()))
    return outcomes


def _sessions_present(conn: Connection, plan: _Plan, ids: list[str]) -> set[str]:
    """SQLite: which of ``ids`` have a session row (the write lock is held, so they stay)."""
    sessions = _table(plan.sessions_ref, "session_id")
    present: set[str] = set()
    for start in range(0, len(ids), _SURVEY_IDS):
        chunk = ids[start : start + _SURVEY_IDS]
        present.update(conn.execute(select(sessions.c.session_id).where(sessions.c.session_id.in_(chunk))).scalars())
    return present


def _lock_and_look_up(
    conn: Connection, database: Database, session_table: SessionTable, erase_traces: bool, ids: list[str]
) -> tuple[_Plan, set[str]]:
    """PostgreSQL: lock the sessions that exist and look up the tables not known to
    exist, in one round trip; return the plan for those tables and the ids found.

    Why one statement: PostgreSQL has nothing like SQLite's schema version to tell us
    that no table appeared, so absent tables (transcripts, compactions...) are looked
    up in every transaction, and a round trip of its own cost each batch about as much
    as one of its deletes.
    """
    candidates = _candidates(database, session_table, erase_traces)
    present, unknown = database.known(candidates)
    if candidates[0] not in present:
        # Once: the usual look-up, which reports a missing sessions table properly.
        _plan_in(conn, database, session_table, erase_traces)
        present, unknown = database.known(candidates)
    survey = _locking_survey(database, candidates[0], unknown)
    bind: dict[str, object] = {"ids": ids}
    for position, ref in enumerate(unknown):
        bind[f"schema{position}"], bind[f"name{position}"] = ref.schema or "public", ref.name
    locked, *exists = conn.exec_driver_sql(survey, bind).one()
    appeared = {ref for ref, table_exists in zip(unknown, exists) if table_exists}
    database.remember_present(appeared)
    plan = _plan_for(database, session_table, erase_traces, frozenset(present | appeared))
    return plan, set(locked or ())


def _locking_survey(database: Database, sessions_ref: TableRef, unknown: tuple[TableRef, ...]) -> str:
    cache = database.__dict__.setdefault("_locking_surveys", {})
    key = (sessions_ref, unknown)
    sql = cache.get(key)
    if sql is None:
        sessions = _table(sessions_ref, "session_id")
        locked = select(sessions.c.session_id).where(sessions.c.session_id == any_(bindparam("ids"))).with_for_update()
        columns = [f"ARRAY({_compile(database, locked)[0]})"] + [
            f"EXISTS (SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = %(schema{position})s"
            f" AND tablename = %(name{position})s)"
            for position in range(len(unknown))
        ]
        sql = cache[key] = "SELECT " + ", ".join(columns)
    return sql


def _erase_returning(conn: Connection, database: Database, plan: _Plan, ids: list[str]) -> dict[str, ErasedRows]:
    """PostgreSQL: delete the locked sessions' dependents and rows in one statement, one
    data-modifying CTE per table, each returning the session ids of the rows it deleted,
    for exact per-session counts.

    Why one statement: each statement is a round trip and a parse, bind and execute in
    a backend, and a batch was four of them after the locked read. The locks are taken
    by that read, before this statement starts, so its snapshot sees every row committed
    under those sessions up to then, as separate statements would.
    """
    erased = {session_id: ErasedRows() for session_id in ids}
    if not erased:
        return erased
    sql, kinds = _returning_statement(database, plan)
    gone, *returned = conn.exec_driver_sql(sql, {"ids": ids}).one()
    for kind, session_ids in zip(kinds, returned):
        for rows in erased.values():
            rows.counts[kind] = 0
        for session_id in session_ids or ():
            erased[session_id].counts[kind] += 1
    if set(gone or ()) != set(erased):
        raise RuntimeError("sessions changed under a locked batch erase")
    for rows in erased.values():
        rows.counts["sessions"] = 1
    return erased


# Ids per survey: each takes 1 + (dependent tables) columns, and SQLite allows 2,000.
_SURVEY_IDS = 250


def _erase_counted(conn: Connection, database: Database, plan: _Plan, ids: list[str]) -> dict[str, ErasedRows]:
    """SQLite: one single-row survey of what exists, then one plain DELETE per table.

    Why not RETURNING as on PostgreSQL: Python's sqlite3 lets go of the GIL for every
    row it steps through, and under load the writer then waits up to a switch interval
    to get it back from its event loop, per row, while it holds the lock every worker's
    writer queues on. One row for the whole survey keeps those hand-overs to a handful
    per batch (bench/README.md has the figures). The write lock is held throughout, so
    what the survey counted is exactly what the deletes remove; they are checked anyway.
    """
    erased: dict[str, ErasedRows] = {}
    for start in range(0, len(ids), _SURVEY_IDS):
        chunk = ids[start : start + _SURVEY_IDS]
        statements = _sqlite_statements(database, plan, len(chunk))
        figures = conn.exec_driver_sql(statements.survey, tuple(chunk)).first()
        kinds = [kind for kind, _ in statements.dependents]
        per_id = 1 + len(kinds)  # exists, then a count per dependent table
        for position, session_id in enumerate(chunk):
            exists, *counts = figures[position * per_id : (position + 1) * per_id]
            if exists:
                erased[session_id] = ErasedRows(dict(zip(kinds, counts), sessions=1))
    if not erased:
        return erased
    present = tuple(session_id for session_id in ids if session_id in erased)
    deletes = _sqlite_statements(database, plan, len(present))
    for kind, sql in deletes.dependents:
        expected = sum(rows.counts[kind] for rows in erased.values())
        if conn.exec_driver_sql(sql, present).rowcount != expected:
            raise RuntimeError("rows changed under a locked batch erase")
    if conn.exec_driver_sql(deletes.sessions, present).rowcount != len(present):
        raise RuntimeError("sessions changed under a locked batch erase")
    return erased


@dataclass(frozen=True)
class _BatchStatements:
    """SQLite: a plan's single-row survey and its deletes for many session ids at once,
    compiled once."""

    survey: str
    dependents: tuple[tuple[str, str], ...]
    sessions: str


def _returning_statement(database: Database, plan: _Plan) -> tuple[str, tuple[str, ...]]:
    """The statement of ``_erase_returning`` and the kinds its columns count, in order.
    The ids go as one array, so one text serves every batch size and stays prepared."""
    cache = database.__dict__.setdefault("_returning_statements", {})
    key = id(plan)  # plans are kept for the database's lifetime
    cached = cache.get(key)
    if cached is None:
        ids = bindparam("ids")
        ctes, columns, kinds = [], [], []
        for position, (kind, ref, key_column) in enumerate(plan.keyed_dependents or ()):
            target = _table(ref, key_column)
            erase = delete(target).where(target.c[key_column] == any_(ids)).returning(target.c[key_column])
            ctes.append(f"d{position} AS ({_compile(database, erase)[0]})")
            columns.append(f"ARRAY(SELECT {key_column} FROM d{position})")
            kinds.append(kind)
        sessions = _table(plan.sessions_ref, "session_id")
        erase_sessions = delete(sessions).where(sessions.c.session_id == any_(ids)).returning(sessions.c.session_id)
        ctes.append(f"gone AS ({_compile(database, erase_sessions)[0]})")
        sql = "WITH " + ", ".join(ctes) + " SELECT " + ", ".join(["ARRAY(SELECT session_id FROM gone)", *columns])
        cached = cache[key] = (sql, tuple(kinds))
    return cached


def _sqlite_statements(database: Database, plan: _Plan, count: int) -> _BatchStatements:
    # SQLite has no arrays: one text per batch size, each id bound once as ?1..?count.
    cache = database.__dict__.setdefault("_batch_statements", {})
    key = (id(plan), count)
    statements = cache.get(key)
    if statements is None:
        quote = database.engine.dialect.identifier_preparer.quote
        numbered = [f"?{position}" for position in range(1, count + 1)]
        in_ids = "IN (" + ", ".join(numbered) + ")"
        sessions_table, sessions_key = quote(plan.sessions_ref.name), quote("session_id")
        keyed = [(kind, quote(ref.name), quote(key_column)) for kind, ref, key_column in plan.keyed_dependents or ()]
        columns = []
        for param in numbered:
            columns.append(f"EXISTS (SELECT 1 FROM {sessions_table} WHERE {sessions_key} = {param})")
            columns += [f"(SELECT count(*) FROM {name} WHERE {key_column} = {param})" for _, name, key_column in keyed]
        statements = cache[key] = _BatchStatements(
            survey="SELECT " + ", ".join(columns),
            dependents=tuple((kind, f"DELETE FROM {name} WHERE {key_column} {in_ids}") for kind, name, key_column in keyed),
            sessions=f"DELETE FROM {sessions_table} WHERE {sessions_key} {in_ids}",
        )
    return statements
