"""What storage is told about each database: plain values, built by the app from its settings."""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_SESSION_TABLE = "agno_sessions"


@dataclass(frozen=True)
class SessionTable:
    """A sessions table and the runs table Agno pairs with it."""

    name: str
    runs_table: str

    @classmethod
    def named(cls, name: str, runs_table: str | None = None) -> "SessionTable":
        # Agno's rule: an explicit runs table wins; a renamed sessions table gets
        # "<name>_runs"; the default sessions table uses "agno_runs".
        if not runs_table:
            runs_table = "agno_runs" if name == DEFAULT_SESSION_TABLE else f"{name}_runs"
        return cls(name=name, runs_table=runs_table)


@dataclass(frozen=True)
class DatabaseSettings:
    id: str
    url: str = field(repr=False)  # may carry a password
    session_tables: tuple[SessionTable, ...] = (SessionTable.named(DEFAULT_SESSION_TABLE),)
    # PostgreSQL schema holding Agno's tables; Agno's PostgresDb defaults to "ai".
    schema: str | None = None
    traces_table: str = "agno_traces"
    spans_table: str = "agno_spans"
    create_tables: bool = True

    @property
    def default_session_table(self) -> SessionTable:
        return self.session_tables[0]

    def session_table(self, name: str) -> SessionTable | None:
        return next((t for t in self.session_tables if t.name == name), None)
