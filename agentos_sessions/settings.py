"""Typed settings, read once from environment variables and an optional TOML file.

Precedence: explicit environment variables override the file, the file overrides
defaults. Every setting is documented in README.md (tests/test_docs.py keeps it so).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

DEFAULT_DB_ID = "default"
DEFAULT_DB_URL = "sqlite:///agno.db"
DEFAULT_SESSION_TABLE = "agno_sessions"
DEFAULT_CONFIG_FILE = "agentos-sessions.toml"

# Environment variables, one place, so the README check and the parser agree.
ENV_CONFIG = "AGENTOS_SESSIONS_CONFIG"
ENV_DB_URL = "AGENTOS_SESSIONS_DB_URL"
ENV_DB_ID = "AGENTOS_SESSIONS_DB_ID"
ENV_SESSION_TABLES = "AGENTOS_SESSIONS_SESSION_TABLES"
ENV_DB_SCHEMA = "AGENTOS_SESSIONS_DB_SCHEMA"
ENV_ERASE_TRACES = "AGENTOS_SESSIONS_ERASE_TRACES"
ENV_BUSY_TIMEOUT = "AGENTOS_SESSIONS_BUSY_TIMEOUT_MS"
ENV_VALIDATE_RESPONSES = "AGENTOS_SESSIONS_VALIDATE_RESPONSES"
ENV_SECURITY_KEY = "OS_SECURITY_KEY"
ENV_HOST = "AGENTOS_SESSIONS_HOST"
ENV_PORT = "AGENTOS_SESSIONS_PORT"
ENV_WORKERS = "AGENTOS_SESSIONS_WORKERS"
ENV_METRICS_PUBLIC = "AGENTOS_SESSIONS_METRICS_PUBLIC"
ENV_AUDIT_TABLE = "AGENTOS_SESSIONS_AUDIT_TABLE"
ENV_HEALTH_TIMEOUT = "AGENTOS_SESSIONS_HEALTH_TIMEOUT_MS"
ENV_GROUP_COMMIT = "AGENTOS_SESSIONS_GROUP_COMMIT"
ENV_FAST_LANE = "AGENTOS_SESSIONS_FAST_LANE"
ENV_WRITER_PROCESS = "AGENTOS_SESSIONS_WRITER_PROCESS"
ENVIRONMENT_VARIABLES = (
    ENV_CONFIG, ENV_DB_URL, ENV_DB_ID, ENV_SESSION_TABLES, ENV_DB_SCHEMA, ENV_ERASE_TRACES,
    ENV_BUSY_TIMEOUT, ENV_VALIDATE_RESPONSES, ENV_SECURITY_KEY, ENV_HOST, ENV_PORT, ENV_WORKERS,
    ENV_METRICS_PUBLIC, ENV_AUDIT_TABLE, ENV_HEALTH_TIMEOUT, ENV_GROUP_COMMIT, ENV_FAST_LANE,
    ENV_WRITER_PROCESS,
)


class SettingsError(ValueError):
    """A configuration that cannot be served safely; the message names the setting."""


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


@dataclass(frozen=True)
class Settings:
    databases: tuple[DatabaseSettings, ...]
    security_key: str | None = field(default=None, repr=False)
    erase_traces: bool = False
    busy_timeout_ms: int = 5000
    validate_responses: bool = True
    host: str = "127.0.0.1"
    port: int = 7777
    workers: int = 1
    # Operators: /metrics needs the bearer key unless this is set; an audit table, when
    # named, receives one row per erase in the erase's own transaction; /health gives up
    # on a database after this long.
    metrics_public: bool = False
    audit_table: str | None = None
    health_timeout_ms: int = 2000
    # Concurrent erases in one worker share one durable commit, each in its own
    # savepoint, every answer given only after that commit (storage/group_commit.py).
    group_commit: bool = True
    # The delete operation's plain requests skip Connexion's generic per-request work
    # and are answered by the same handler code (agentos_sessions/fast_lane.py).
    fast_lane: bool = True
    # With group commit, each worker's batches are committed by a process of its own,
    # where no event loop competes for the GIL (storage/writer_process.py).
    writer_process: bool = True

    def database(self, db_id: str) -> DatabaseSettings | None:
        return next((d for d in self.databases if d.id == db_id), None)


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise SettingsError(f"{name} must be true or false, got {value!r}")


def _as_int(name: str, value: Any, minimum: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{name} must be an integer, got {value!r}") from None
    if number < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {number}")
    return number


def _session_tables(name: str, entries: Any) -> tuple[SessionTable, ...]:
    if isinstance(entries, str):
        entries = [e.strip() for e in entries.split(",") if e.strip()]
    if not isinstance(entries, list) or not entries:
        raise SettingsError(f"{name} must list at least one sessions table")
    tables = []
    for entry in entries:
        if isinstance(entry, str):
            tables.append(SessionTable.named(entry))
        elif isinstance(entry, dict) and isinstance(entry.get("name"), str):
            tables.append(SessionTable.named(entry["name"], entry.get("runs_table")))
        else:
            raise SettingsError(f"{name}: each entry is a table name or {{name, runs_table}}")
    if len({t.name for t in tables}) != len(tables):
        raise SettingsError(f"{name} lists a table twice")
    return tuple(tables)


def _database(entry: Mapping[str, Any], position: int) -> DatabaseSettings:
    where = f"databases[{position}]"
    unknown = set(entry) - {"id", "url", "session_tables", "schema", "traces_table", "spans_table", "create_tables"}
    if unknown:
        raise SettingsError(f"{where} has unknown keys: {', '.join(sorted(unknown))}")
    db_id = entry.get("id")
    if not isinstance(db_id, str) or not db_id:
        raise SettingsError(f"{where}.id must be a non-empty string")
    url = entry.get("url")
    if not isinstance(url, str) or not url:
        raise SettingsError(f"{where}.url must be a database URL")
    schema = entry.get("schema")
    if schema is None and url.startswith("postgresql"):
        schema = "ai"
    return DatabaseSettings(
        id=db_id,
        url=url,
        session_tables=_session_tables(f"{where}.session_tables", entry.get("session_tables", [DEFAULT_SESSION_TABLE])),
        schema=schema or None,
        traces_table=entry.get("traces_table", "agno_traces"),
        spans_table=entry.get("spans_table", "agno_spans"),
        create_tables=_as_bool(f"{where}.create_tables", entry.get("create_tables", True)),
    )


def load_settings(environ: Mapping[str, str] | None = None, config_file: str | Path | None = None) -> Settings:
    """Build settings from a TOML file (if any) and the environment."""
    env = os.environ if environ is None else environ
    path = config_file or env.get(ENV_CONFIG)
    if path is None and Path(DEFAULT_CONFIG_FILE).is_file():
        path = DEFAULT_CONFIG_FILE
    file_values: dict[str, Any] = {}
    if path is not None:
        try:
            file_values = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise SettingsError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"config file {path} is not valid TOML: {exc}") from None

    databases = [dict(d) for d in file_values.get("databases", [])]
    if not databases:
        databases = [{"id": DEFAULT_DB_ID, "url": DEFAULT_DB_URL}]
    # Environment variables describe (or override) the first database.
    first = databases[0]
    if ENV_DB_URL in env:
        first["url"] = env[ENV_DB_URL]
    if ENV_DB_ID in env:
        first["id"] = env[ENV_DB_ID]
    if ENV_SESSION_TABLES in env:
        first["session_tables"] = env[ENV_SESSION_TABLES]
    if ENV_DB_SCHEMA in env:
        first["schema"] = env[ENV_DB_SCHEMA]
    parsed = tuple(_database(d, i) for i, d in enumerate(databases))
    if len({d.id for d in parsed}) != len(parsed):
        raise SettingsError("database ids must be unique")

    def pick(env_name: str, file_key: str, default: Any) -> Any:
        return env.get(env_name, file_values.get(file_key, default))

    key = env.get(ENV_SECURITY_KEY) or file_values.get("security_key") or None
    return Settings(
        databases=parsed,
        security_key=key,
        erase_traces=_as_bool("erase_traces", pick(ENV_ERASE_TRACES, "erase_traces", False)),
        busy_timeout_ms=_as_int("busy_timeout_ms", pick(ENV_BUSY_TIMEOUT, "busy_timeout_ms", 5000), 0),
        validate_responses=_as_bool(
            "validate_responses", pick(ENV_VALIDATE_RESPONSES, "validate_responses", True)
        ),
        host=str(pick(ENV_HOST, "host", "127.0.0.1")),
        port=_as_int("port", pick(ENV_PORT, "port", 7777), 0),
        workers=_as_int("workers", pick(ENV_WORKERS, "workers", 1), 1),
        metrics_public=_as_bool("metrics_public", pick(ENV_METRICS_PUBLIC, "metrics_public", False)),
        audit_table=str(pick(ENV_AUDIT_TABLE, "audit_table", "")).strip() or None,
        health_timeout_ms=_as_int("health_timeout_ms", pick(ENV_HEALTH_TIMEOUT, "health_timeout_ms", 2000), 1),
        group_commit=_as_bool("group_commit", pick(ENV_GROUP_COMMIT, "group_commit", True)),
        fast_lane=_as_bool("fast_lane", pick(ENV_FAST_LANE, "fast_lane", True)),
        writer_process=_as_bool("writer_process", pick(ENV_WRITER_PROCESS, "writer_process", True)),
    )
