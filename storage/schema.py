"""Agno's table layout, as far as this service needs it: the tables an erase touches, and the
sessions and runs tables a fresh database is given, named and indexed as Agno 3.x's
(``agno/db/*/schemas.py``) so Agno can later write to them."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from sqlalchemy import JSON, BigInteger, Column, ForeignKey, Index, MetaData, String, Table
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import GenericFunction

from storage.config import DatabaseSettings, SessionTable

# Agno stores JSON as JSONB on PostgreSQL and as JSON text on SQLite.
JsonDocument = JSON().with_variant(JSONB(), "postgresql")

# Tables whose names Agno does not let applications change.
TRANSCRIPTS_TABLE = "agno_transcripts"
COMPACTIONS_TABLE = "agno_compactions"
TOOL_RESULTS_TABLE = "agno_tool_results"
# Tool-result payloads live in Agno's file-system table, keyed by (namespace, path);
# on PostgreSQL it has a schema of its own.
PAYLOAD_TABLE = "agno_fs"
POSTGRES_PAYLOAD_SCHEMA = "fs"


def agentfs_path(path):
    """A path as AgentFS stores it (``agno/fs/_paths.py``, ``normalize_path``): NFC, runs of
    '/' as one, no leading '/'. Tool-result rows keep the path their writer gave, which
    for a run id not in NFC is not the payload's; a namespace on such a row is already
    AgentFS's own. Anything but text (SQLite may hold it) is returned as it is."""
    if not isinstance(path, str):
        return path
    value = unicodedata.normalize("NFC", path)
    while "//" in value:
        value = value.replace("//", "/")
    return value.removeprefix("/")


class AgentfsPath(GenericFunction):
    """``agentfs_path`` in SQL: on SQLite the Python function each connection registers
    (``storage/database.py``), on PostgreSQL built from its own functions."""

    type = String()
    name = "agentfs_path"
    inherit_cache = True


@compiles(AgentfsPath, "postgresql")
def _agentfs_path_postgresql(element, compiler, **kw):
    # After the collapse at most one '/' leads, so ltrim removes exactly it.
    return f"ltrim(regexp_replace(normalize({compiler.process(element.clauses, **kw)}, NFC), '/{{2,}}', '/', 'g'), '/')"


@dataclass(frozen=True)
class TableRef:
    """Where a table lives: schema (None for SQLite's main database) and name."""

    schema: str | None
    name: str


def _indexed(table: Table, *columns: str) -> None:
    for column in columns:
        Index(f"idx_{table.name}_{column}", table.c[column])


def sessions_table(metadata: MetaData, name: str) -> Table:
    table = Table(
        name,
        metadata,
        Column("session_id", String, primary_key=True, nullable=False),
        Column("session_type", String, nullable=False),
        Column("agent_id", String),
        Column("team_id", String),
        Column("workflow_id", String),
        Column("user_id", String),
        Column("session_data", JsonDocument),
        Column("agent_data", JsonDocument),
        Column("team_data", JsonDocument),
        Column("workflow_data", JsonDocument),
        Column("metadata", JsonDocument),
        Column("summary", JsonDocument),
        Column("created_at", BigInteger, nullable=False),
        Column("updated_at", BigInteger),
    )
    _indexed(table, "session_type", "created_at")
    return table


def runs_table(metadata: MetaData, name: str, sessions: Table) -> Table:
    session_key = f"{sessions.schema}.{sessions.name}" if sessions.schema else sessions.name
    table = Table(
        name,
        metadata,
        Column("run_id", String, primary_key=True, nullable=False),
        Column(
            "session_id",
            String,
            ForeignKey(f"{session_key}.session_id", ondelete="CASCADE"),
            nullable=False,
        ),
        Column("run_type", String, nullable=False),
        Column("agent_id", String),
        Column("team_id", String),
        Column("workflow_id", String),
        Column("user_id", String),
        Column("parent_run_id", String),
        Column("status", String),
        Column("run_index", BigInteger),
        Column("run_data", JsonDocument, nullable=False),
        Column("created_at", BigInteger, nullable=False),
        Column("updated_at", BigInteger),
    )
    _indexed(table, "session_id", "run_type", "agent_id", "team_id", "workflow_id", "user_id", "status", "created_at")
    Index(f"idx_{name}_session_id_run_index", table.c.session_id, table.c.run_index)
    return table


def layout(database: DatabaseSettings, session_table: SessionTable) -> tuple[Table, Table]:
    """The sessions table and its runs table, bound to a fresh MetaData."""
    metadata = MetaData(schema=database.schema)
    sessions = sessions_table(metadata, session_table.name)
    return sessions, runs_table(metadata, session_table.runs_table, sessions)
