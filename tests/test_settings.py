from __future__ import annotations

import pytest

from agentos_sessions.settings import SessionTable, SettingsError, load_settings


def write(tmp_path, text: str):
    path = tmp_path / "agentos-sessions.toml"
    path.write_text(text)
    return path


def test_defaults_are_one_sqlite_database_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings({})
    (database,) = settings.databases
    assert (database.id, database.url, database.schema) == ("default", "sqlite:///agno.db", None)
    assert database.session_tables == (SessionTable("agno_sessions", "agno_runs"),)
    assert (settings.host, settings.port, settings.workers) == ("127.0.0.1", 7777, 1)
    assert settings.security_key is None and settings.erase_traces is False


def test_runs_table_naming_follows_agno():
    assert SessionTable.named("agno_sessions").runs_table == "agno_runs"
    assert SessionTable.named("team_sessions").runs_table == "team_sessions_runs"
    assert SessionTable.named("team_sessions", "my_runs").runs_table == "my_runs"


def test_config_file_lists_databases_and_environment_overrides_it(tmp_path):
    path = write(tmp_path, """
erase_traces = true
busy_timeout_ms = 250

[[databases]]
id = "agents"
url = "postgresql+psycopg://u:secret@127.0.0.1/db"
session_tables = ["agno_sessions", { name = "team_sessions", runs_table = "team_runs" }]

[[databases]]
id = "archive"
url = "sqlite:///archive.db"
""")
    settings = load_settings({"OS_SECURITY_KEY": "k", "AGENTOS_SESSIONS_PORT": "9000"}, config_file=path)
    agents, archive = settings.databases
    assert agents.schema == "ai"  # Agno's PostgresDb default
    assert agents.session_tables[1] == SessionTable("team_sessions", "team_runs")
    assert archive.schema is None
    assert settings.erase_traces is True and settings.busy_timeout_ms == 250
    assert settings.port == 9000 and settings.security_key == "k"
    assert "secret" not in repr(settings) and "'k'" not in repr(settings)


def test_environment_describes_the_first_database(tmp_path):
    settings = load_settings({
        "AGENTOS_SESSIONS_DB_URL": "sqlite:///x.db", "AGENTOS_SESSIONS_DB_ID": "main",
        "AGENTOS_SESSIONS_SESSION_TABLES": "a_sessions, b_sessions", "AGENTOS_SESSIONS_ERASE_TRACES": "yes",
    }, config_file=write(tmp_path, ""))  # fmt: skip
    (database,) = settings.databases
    assert (database.id, database.url) == ("main", "sqlite:///x.db")
    assert [t.name for t in database.session_tables] == ["a_sessions", "b_sessions"]
    assert settings.erase_traces is True


@pytest.mark.parametrize(
    "text, message",
    [
        ('[[databases]]\nid = "a"\nurl = "sqlite:///a.db"\n[[databases]]\nid = "a"\nurl = "sqlite:///b.db"', "unique"),
        ('[[databases]]\nurl = "sqlite:///a.db"', "id must be"),
        ('[[databases]]\nid = "a"', "url must be"),
        ('[[databases]]\nid = "a"\nurl = "sqlite:///a.db"\nsesion_tables = []', "unknown keys: sesion_tables"),
        ('[[databases]]\nid = "a"\nurl = "sqlite:///a.db"\nsession_tables = []', "at least one"),
        ('[[databases]]\nid = "a"\nurl = "sqlite:///a.db"\nsession_tables = ["x", "x"]', "twice"),
        ("erase_traces = 'maybe'", "true or false"),
        ("workers = 0", "at least 1"),
        ("this is not toml", "not valid TOML"),
    ],
)
def test_bad_configuration_is_refused_with_the_setting_named(tmp_path, text, message):
    with pytest.raises(SettingsError, match=message):
        load_settings({}, config_file=write(tmp_path, text))


def test_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings({"AGENTOS_SESSIONS_CONFIG": str(tmp_path / "nope.toml")})
