"""The installed command: help, seed, and a serve that is secure without configuration."""

from __future__ import annotations

import re
import subprocess
import sys

import httpx
import pytest

from storage import Database
from tests.support import AgnoData, LiveServer, database_toml


def run_cli(*args: str, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "agentos_sessions.cli", *args], capture_output=True, text=True, cwd=cwd, env=env
    )


@pytest.mark.parametrize(
    "args, expected",
    [
        ([], ["serve", "seed", "--config"]),
        (["serve"], ["--host", "--port", "--workers", "OS_SECURITY_KEY", "127.0.0.1", "7777"]),
        (["seed"], ["--count", "--runs", "--db-id", "--table"]),
    ],
)
def test_help_explains_each_command(args, expected):
    done = run_cli(*args, "--help")
    assert done.returncode == 0
    for word in expected:
        assert word in done.stdout


def test_seed_creates_sessions_with_runs_and_prints_their_ids(make_database_settings, tmp_path):
    settings = make_database_settings()
    config = tmp_path / "config.toml"
    config.write_text(database_toml(settings))
    done = run_cli("--config", str(config), "seed", "--count", "4", "--runs", "3")
    assert done.returncode == 0, done.stderr
    ids = done.stdout.split()
    assert len(ids) == 4 and len(set(ids)) == 4
    database = Database(settings)
    try:
        data = AgnoData(database, settings.default_session_table)
        assert all(left["sessions"] == 1 and left["runs"] == 3 for left in data.counts_many(ids).values())
    finally:
        database.dispose()


def test_bad_configuration_exits_2_with_the_reason(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[[databases]]\nid = "x"\n')
    done = run_cli("--config", str(config), "seed")
    assert done.returncode == 2
    assert "url must be a database URL" in done.stderr


@pytest.mark.live
def test_serve_without_a_key_generates_one_prints_it_once_and_all_workers_use_it(make_database_settings, tmp_path):
    server = LiveServer(tmp_path, database_toml(make_database_settings()), workers=2, extra_env={"OS_SECURITY_KEY": ""})
    with server:
        ids = server.seed(6)
        match = re.search(r"OS_SECURITY_KEY=(\S+)", server.log.read_text())
        assert match, server.log.read_text()
        key = match.group(1)
        assert f"curl -i -X DELETE -H 'Authorization: Bearer {key}'" in server.log.read_text()
        statuses = []
        for session_id in ids:
            # A new connection each time, so both workers get a share.
            statuses.append(httpx.delete(f"{server.url}/sessions/{session_id}",
                                         headers={"Authorization": f"Bearer {key}"}).status_code)  # fmt: skip
        assert httpx.delete(f"{server.url}/sessions/{ids[0]}").status_code == 401
    assert statuses == [204] * len(ids)
    assert server.log.read_text().count(key) == 2  # the variable line and the curl line, once
