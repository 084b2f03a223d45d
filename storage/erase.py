"""The erase: sessions and everything Agno keeps under their ids, in the caller's transaction.

One shape serves one erase and a batch: the sessions that exist are found first (locked
on PostgreSQL; SQLite's write lock is held already), then only their rows deleted. So
an erase that finds nothing changes nothing, orphans with its id included, and an id
asked twice in a batch is found by its first ask only, as serial transactions answer."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import groupby
from typing import Sequence

from sqlalchemy import (
    ARRAY,
    Column,
    ColumnElement,
    Connection,
    MetaData,
    String,
    Table,
    and_,
    any_,
    bindparam,
    delete,
    exists,
    func,
    or_,
    select,
    tuple_,
    union,
)

from storage.audit import AuditEntry, record_erasures
from storage.config import SessionTable
from storage.database import Database
from storage.schema import COMPACTIONS_TABLE, PAYLOAD_TABLE, TOOL_RESULTS_TABLE, TRANSCRIPTS_TABLE, AgentfsPath, TableRef

_pg_tables = Table("pg_tables", MetaData(schema="pg_catalog"), Column("schemaname", String), Column("tablename", String))


# A SQLite erase holds the file's one write lock, which other workers and Agno wait for
# (at most their busy timeout): so up to this many rows, half a second on a small machine.
MAX_ROWS_PER_TRANSACTION = 10_000


@dataclass(frozen=True)
class EraseRequest:
    session_table: SessionTable
    session_id: str
    audit: AuditEntry | None = None


@dataclass
class ErasedRows:
    """How many rows went, by kind, for audit and metrics."""

    counts: dict[str, int] = field(default_factory=dict)


def erase_session(database: Database, session_table: SessionTable, session_id: str, *, erase_traces: bool = False,
                  audit_table: str | None = None, audit: AuditEntry | None = None) -> ErasedRows | None:  # fmt: skip
    """Erase one session in a transaction of its own; None when no such session exists."""
    requests = [EraseRequest(session_table, session_id, audit)]
    return database.write(lambda conn: erase_batch(conn, database, requests, erase_traces, audit_table))[0]


def erase_batch(conn: Connection, database: Database, requests: Sequence[EraseRequest], erase_traces: bool = False,
                audit_table: str | None = None) -> list[ErasedRows | None]:  # fmt: skip
    """Each request's rows erased, or None for no such session, in order, for requests up
    to ``MAX_ROWS_PER_TRANSACTION`` rows (the first whatever its size); the rest are left
    for another transaction. Requests for one sessions table share the statements; with
    an audit table, each erasure gets its row here, before the commit."""
    outcomes: list[ErasedRows | None] = []
    rows_left = MAX_ROWS_PER_TRANSACTION
    for session_table, run in groupby(requests, key=lambda request: request.session_table):
        run = list(run)
        # PostgreSQL text cannot hold NUL, so no such session can exist there.
        ids = [r.session_id for r in run if database.dialect != "postgresql" or "\x00" not in r.session_id]
        erased, deferred = (
            _erase_ids(conn, database, session_table, list(dict.fromkeys(ids)), erase_traces, rows_left, not outcomes)
            if ids else ({}, set())
        )  # fmt: skip
        rows_left -= sum(sum(rows.counts.values()) for rows in erased.values())
        audited = []
        for request in run:
            if request.session_id in deferred:
                break
            rows = erased.pop(request.session_id, None)  # asked again: this batch already took it
            outcomes.append(rows)
            if rows is not None and audit_table and request.audit is not None:
                audited.append({
                    "request_id": request.audit.request_id, "caller": request.audit.caller, "db_id": database.id,
                    "session_table": session_table.name, "session_id": request.session_id,
                    "rows_erased": dict(rows.counts),
                })  # fmt: skip
        if audited:
            record_erasures(conn, database.ref(audit_table), audited)
        if deferred:
            break
    return outcomes


@dataclass(frozen=True, eq=False)
class Dependent:
    """Rows that belong to a session: in ``table``, owned by the session id in ``owner``,
    a column of ``table`` itself or of ``via``; through ``via``, the rows whose ``columns``
    equal any one of the ``keys`` a ``via`` row gives."""

    kind: str
    table: Table
    owner: Column
    via: Table | None = None
    columns: tuple[Column, ...] = ()
    keys: tuple[tuple[ColumnElement, ...], ...] = ()

    def _matched(self):
        return or_(*(and_(*(mine == theirs for mine, theirs in zip(self.columns, key))) for key in self.keys))

    def rows(self):
        if self.via is None:
            return self.table
        return self.table.join(self.via, self._matched())

    def delete_owned_by(self, ids):
        if self.via is None:
            return delete(self.table).where(self.owner.in_(ids))
        keys = [select(*key).where(self.owner.in_(ids)) for key in self.keys]
        return delete(self.table).where(tuple_(*self.columns).in_(union(*keys) if len(keys) > 1 else keys[0]))

    def delete_returning_owner(self, ids):
        """PostgreSQL: the same delete, returning each deleted row's session id."""
        statement = delete(self.table).where(self.owner == any_(ids)).returning(self.owner)
        return statement if self.via is None else statement.where(self._matched())


@dataclass(frozen=True, eq=False)
class Plan:
    """The erase for one set of present tables, built once: its statements bind only ids."""

    sessions: Table
    dependents: tuple[Dependent, ...]  # in the order they are deleted, before the sessions

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(dependent.kind for dependent in self.dependents)


def _table(ref: TableRef, *columns: str) -> Table:
    return Table(ref.name, MetaData(schema=ref.schema), *(Column(name, String) for name in columns))


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


@lru_cache(maxsize=256)
def _plan(candidates: tuple[TableRef, ...], present: frozenset[TableRef]) -> Plan:
    sessions_ref, runs_ref, transcripts_ref, compactions_ref, results_ref, payloads_ref, *trace_refs = candidates
    sessions = _table(sessions_ref, "session_id")
    dependents: list[Dependent] = []

    def keyed(kind: str, ref: TableRef, key: str) -> Table:
        target = _table(ref, key)
        if ref in present:
            dependents.append(Dependent(kind, target, target.c[key]))
        return target

    keyed("runs", runs_ref, "session_id")
    keyed("transcripts", transcripts_ref, "agno_session_id")
    keyed("compactions", compactions_ref, "session_id")
    results = _table(results_ref, "session_id", "namespace", "path")
    if results_ref in present and payloads_ref in present:
        payloads = _table(payloads_ref, "namespace", "path")
        # Written by AgentFS, a payload is at the path it normalised; written by hand, at the row's.
        keys = ((results.c.namespace, results.c.path), (results.c.namespace, AgentfsPath(results.c.path)))
        dependents.append(Dependent("tool_result_payloads", payloads, results.c.session_id, results,
                                     (payloads.c.namespace, payloads.c.path), keys))  # fmt: skip
    keyed("tool_results", results_ref, "session_id")
    if trace_refs:
        traces_ref, spans_ref = trace_refs
        traces = _table(traces_ref, "trace_id", "session_id")
        if traces_ref in present and spans_ref in present:
            spans = _table(spans_ref, "trace_id")
            keys = ((traces.c.trace_id,),)
            dependents.append(Dependent("spans", spans, traces.c.session_id, traces, (spans.c.trace_id,), keys))
        keyed("traces", traces_ref, "session_id")
    return Plan(sessions, tuple(dependents))


def plan_for(conn: Connection, database: Database, session_table: SessionTable, erase_traces: bool) -> Plan:
    """What an erase of a session in ``session_table`` takes, for the tables this
    transaction sees; the residue scan and the orphan sweep use it too."""
    candidates = _candidates(database, session_table, erase_traces)
    return _plan(candidates, frozenset(database.existing(conn, candidates)))


def _erase_ids(conn: Connection, database: Database, session_table: SessionTable, ids: list[str], erase_traces: bool,
               rows_left: int, take_first: bool) -> tuple[dict[str, ErasedRows], set[str]]:  # fmt: skip
    """The sessions erased, and those left for another transaction."""
    candidates = _candidates(database, session_table, erase_traces)
    if database.dialect == "postgresql":
        return _erase_postgresql(conn, database, candidates, ids), set()
    return _erase_sqlite(conn, database, candidates, ids, rows_left, take_first)


@lru_cache(maxsize=4096)
def _sqlite_statements(plan: Plan, count: int, dialect) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """For ``count`` ids: a one-row survey (which sessions exist, each one's rows per kind),
    then the deletes, compiled once with the id each placeholder takes. One row, as
    sqlite3 lets go of the GIL for every row, and getting it back from a busy event loop
    can take a switch interval; text, as running a SQLAlchemy construct costs more."""
    ids = [bindparam(f"id_{position}") for position in range(count)]
    sessions = plan.sessions

    def tally(owner, rows):
        per_session = (
            select(func.hex(owner).label("id"), func.count().label("n"))
            .select_from(rows).where(owner.in_(ids)).group_by(owner).subquery()
        )  # fmt: skip
        return select(func.json_group_object(per_session.c.id, per_session.c.n)).scalar_subquery()

    # The schema version comes with the survey, so the tables the plan was built from are
    # checked without a statement of their own.
    version = select(func.pragma_schema_version().table_valued("schema_version").c.schema_version).scalar_subquery()
    survey = select(version, tally(sessions.c.session_id, sessions), *(tally(d.owner, d.rows()) for d in plan.dependents))
    deletes = [d.delete_owned_by(ids) for d in plan.dependents]
    deletes.append(delete(sessions).where(sessions.c.session_id.in_(ids)))
    compiled = [statement.compile(dialect=dialect) for statement in [survey, *deletes]]
    return tuple((c.string, tuple(int(name.rpartition("_")[2]) for name in c.positiontup)) for c in compiled)


def _erase_sqlite(conn: Connection, database: Database, candidates: tuple[TableRef, ...], ids: list[str],
                  rows_left: int, take_first: bool):  # fmt: skip
    present = database.cached(candidates)
    for _look in range(2):  # the second look is up to date: the write lock is held
        if present is None or candidates[0] not in present:
            present = database.existing(conn, candidates)  # asks the database
            if candidates[0] not in present:
                return {}, set()  # no sessions table yet: no such session
        plan = _plan(candidates, frozenset(present))
        version, *values = _run(conn, _sqlite_statements(plan, len(ids), conn.dialect)[0], ids).one()
        if version == database.schema_version:
            break
        present = None  # a table came or went since it was last looked at
    else:
        raise RuntimeError("the schema changed under the write lock")
    found, *tallies = (json.loads(value) for value in values)
    # hex() of SQLite text is its UTF-8 bytes, NUL included, so any id survives the trip.
    present = [(session_id, key) for session_id in ids if (key := session_id.encode().hex().upper()) in found]
    kept = 0
    for _, key in present:
        rows = 1 + sum(tally.get(key, 0) for tally in tallies)
        if (kept or not take_first) and rows > rows_left:
            break
        kept, rows_left = kept + 1, rows_left - rows
    present, deferred = present[:kept], {session_id for session_id, _ in present[kept:]}
    if not present:
        return {}, deferred
    present_ids = [session_id for session_id, _ in present]
    for statement in _sqlite_statements(plan, len(present_ids), conn.dialect)[1:]:
        _run(conn, statement, present_ids)
    kinds = plan.kinds
    return {
        session_id: ErasedRows({**{kind: tally.get(key, 0) for kind, tally in zip(kinds, tallies)}, "sessions": 1})
        for session_id, key in present
    }, deferred


def _run(conn: Connection, statement: tuple[str, tuple[int, ...]], ids: list[str]):
    sql, positions = statement
    return conn.exec_driver_sql(sql, tuple(ids[position] for position in positions))


_ID_ARRAY = bindparam("ids", type_=ARRAY(String))


@lru_cache(maxsize=256)
def _postgresql_survey(sessions_ref: TableRef, unknown: tuple[TableRef, ...]):
    """One round trip: lock the sessions that exist, and look up the tables not yet seen."""
    sessions = _table(sessions_ref, "session_id")
    locked = select(sessions.c.session_id).where(sessions.c.session_id == any_(_ID_ARRAY)).with_for_update().subquery()
    appeared = [
        exists().where(_pg_tables.c.schemaname == (ref.schema or "public"), _pg_tables.c.tablename == ref.name)
        for ref in unknown
    ]
    return select(select(func.array_agg(locked.c.session_id)).scalar_subquery(), *appeared)


@lru_cache(maxsize=256)
def _postgresql_erase(plan: Plan):
    """One round trip: every delete as a data-modifying CTE returning the session ids of
    the rows it took. The survey took the locks first, so this statement's snapshot sees
    every row committed under those sessions, as separate statements would."""
    sessions = plan.sessions
    gone = delete(sessions).where(sessions.c.session_id == any_(_ID_ARRAY)).returning(sessions.c.session_id)
    ctes = [statement.cte(f"d{position}") for position, statement in enumerate(
        [gone, *(d.delete_returning_owner(_ID_ARRAY) for d in plan.dependents)]
    )]  # fmt: skip
    return select(*(select(func.array_agg(list(cte.c)[0])).scalar_subquery() for cte in ctes))


def _erase_postgresql(conn: Connection, database: Database, candidates: tuple[TableRef, ...], ids: list[str]):
    if database.unknown(candidates[:1]):
        # Until the sessions table has been seen: the survey would fail without it.
        if candidates[0] not in database.existing(conn, candidates):
            return {}
    unknown = database.unknown(candidates)
    locked, *exist = conn.execute(_postgresql_survey(candidates[0], unknown), {"ids": ids}).one()
    database.remember_present(ref for ref, table_exists in zip(unknown, exist) if table_exists)
    if not locked:
        return {}
    plan = _plan(candidates, frozenset(set(candidates) - set(database.unknown(candidates))))
    gone, *returned = conn.execute(_postgresql_erase(plan), {"ids": locked}).one()
    if sorted(gone or ()) != sorted(locked):
        raise RuntimeError("sessions changed under locked rows")
    counts = [Counter(session_ids or ()) for session_ids in returned]
    return {
        session_id: ErasedRows({**{kind: c[session_id] for kind, c in zip(plan.kinds, counts)}, "sessions": 1})
        for session_id in locked
    }
