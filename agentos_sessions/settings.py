"""Typed settings, read once from environment variables and an optional TOML file.

Environment variables override the file, the file the defaults. Each scalar setting is
the TOML key ``name`` and the variable ``AGENTOS_SESSIONS_<NAME>``, in docs/operating.md
(tests/test_docs.py keeps it so).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from storage import DatabaseSettings, SessionTable, Storage
from storage.config import DEFAULT_SESSION_TABLE

DEFAULT_DB_ID = "default"
DEFAULT_DB_URL = "sqlite:///agno.db"
DEFAULT_CONFIG_FILE = "agentos-sessions.toml"

PREFIX = "AGENTOS_SESSIONS_"
ENV_CONFIG = PREFIX + "CONFIG"
ENV_SECURITY_KEY = "OS_SECURITY_KEY"  # AgentOS's own variable
# They describe (or override) the first database: (variable, its key there).
DATABASE_VARIABLES = {PREFIX + "DB_URL": "url", PREFIX + "DB_ID": "id", PREFIX + "SESSION_TABLES": "session_tables",
                      PREFIX + "DB_SCHEMA": "schema"}  # fmt: skip
_DATABASE_KEYS = {f.name for f in fields(DatabaseSettings)}


def _minimum(value: int) -> dict:
    return {"minimum": value}


class SettingsError(ValueError):
    """A configuration that cannot be served safely; the message names the setting."""


@dataclass(frozen=True)
class Settings:
    databases: tuple[DatabaseSettings, ...]
    security_key: str | None = field(default=None, repr=False)
    erase_traces: bool = False
    busy_timeout_ms: int = field(default=5000, metadata=_minimum(0))
    validate_responses: bool = True
    host: str = "127.0.0.1"
    port: int = field(default=7777, metadata=_minimum(0))
    workers: int = field(default=1, metadata=_minimum(1))
    metrics_public: bool = False
    health_details_public: bool = False
    audit_table: str | None = None
    health_timeout_ms: int = field(default=2000, metadata=_minimum(1))
    group_commit: bool = True
    fast_lane: bool = True
    request_timeout_ms: int = field(default=10000, metadata=_minimum(1))


SCALAR_SETTINGS = [f for f in fields(Settings) if f.name not in ("databases", "security_key")]


def env_name(setting: str) -> str:
    return PREFIX + setting.upper()


ENVIRONMENT_VARIABLES = (
    ENV_CONFIG, ENV_SECURITY_KEY, *DATABASE_VARIABLES, *(env_name(f.name) for f in SCALAR_SETTINGS)
)


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


def _scalar(setting, value: Any) -> Any:
    if setting.type == "bool":
        return _as_bool(setting.name, value)
    if setting.type == "int":
        return _as_int(setting.name, value, setting.metadata["minimum"])
    if setting.default is None:  # an optional name: empty means unset
        return None if value is None else str(value).strip() or None
    return str(value)


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
    unknown = set(entry) - _DATABASE_KEYS
    if unknown:
        raise SettingsError(f"{where} has unknown keys: {', '.join(sorted(unknown))}")
    db_id, url = entry.get("id"), entry.get("url")
    if not isinstance(db_id, str) or not db_id:
        raise SettingsError(f"{where}.id must be a non-empty string")
    if not isinstance(url, str) or not url:
        raise SettingsError(f"{where}.url must be a database URL")
    schema = entry.get("schema")
    if schema is None and url.startswith("postgresql"):
        schema = "ai"  # Agno's PostgresDb keeps its tables there by default
    return DatabaseSettings(
        id=db_id,
        url=url,
        session_tables=_session_tables(f"{where}.session_tables", entry.get("session_tables", [DEFAULT_SESSION_TABLE])),
        schema=schema or None,
        traces_table=entry.get("traces_table", "agno_traces"),
        spans_table=entry.get("spans_table", "agno_spans"),
        create_tables=_as_bool(f"{where}.create_tables", entry.get("create_tables", True)),
    )


def _read_file(env: Mapping[str, str], config_file: str | Path | None) -> dict[str, Any]:
    path = config_file or env.get(ENV_CONFIG)
    if path is None and Path(DEFAULT_CONFIG_FILE).is_file():
        path = DEFAULT_CONFIG_FILE
    if path is None:
        return {}
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SettingsError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config file {path} is not valid TOML: {exc}") from None


def load_settings(environ: Mapping[str, str] | None = None, config_file: str | Path | None = None) -> Settings:
    """Build settings from a TOML file (if any) and the environment."""
    env = os.environ if environ is None else environ
    file_values = _read_file(env, config_file)
    databases = [dict(d) for d in file_values.get("databases", [])] or [{"id": DEFAULT_DB_ID, "url": DEFAULT_DB_URL}]
    databases[0].update({key: env[variable] for variable, key in DATABASE_VARIABLES.items() if variable in env})
    parsed = tuple(_database(d, i) for i, d in enumerate(databases))
    if len({d.id for d in parsed}) != len(parsed):
        raise SettingsError("database ids must be unique")
    scalars = {
        s.name: _scalar(s, env.get(env_name(s.name), file_values.get(s.name, s.default))) for s in SCALAR_SETTINGS
    }
    key = env.get(ENV_SECURITY_KEY) or file_values.get("security_key") or None
    return Settings(databases=parsed, security_key=key, **scalars)


def open_storage(settings: Settings) -> Storage:
    """The storage these settings describe, not yet started."""
    return Storage(settings.databases, busy_timeout_ms=settings.busy_timeout_ms, erase_traces=settings.erase_traces,
                   audit_table=settings.audit_table, group_commit=settings.group_commit)  # fmt: skip
