"""The installed command: help, seed, and a serve that is secure without configuration."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import httpx
import pytest

from sqlalchemy import select

from agentos_sessions.cli import main
from storage import Database
from storage.audit import audit_table
from tests.support import AgnoData, LiveServer, database_toml, orphan_session, unique_ids


def run_cli(*args: str, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "agentos_sessions.cli", *args], capture_output=True, text=True, cwd=cwd, env=env
    )


@pytest.mark.parametrize(
    "args, expected",
    [
        ([], ["serve", "seed", "check", "scan", "orphans", "--config"]),
        (["serve"], ["--host", "--port", "--workers", "OS_SECURITY_KEY", "127.0.0.1", "7777"]),
        (["seed"], ["--count", "--runs", "--db-id", "--table"]),
        (["scan"], ["SESSION_ID", "--db-id", "--json", "Exit 0 nothing found, 1 found, 2 could not run"]),
        (["orphans"], ["--erase", "--db-id", "--json", "audit", "Exit 0 none left"]),
    ],
)
def test_help_explains_each_command(args, expected, capsys):
    with pytest.raises(SystemExit) as exited:
        main([*args, "--help"])
    assert exited.value.code == 0
    unwrapped = " ".join(capsys.readouterr().out.split())
    for word in expected:
        assert word in unwrapped


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


def in_process(capsys, *args: str) -> tuple[int, str]:
    """A command run by ``main`` itself (a process of its own costs seconds): exit code, stdout."""
    code = main(list(args))
    return code, capsys.readouterr().out


def test_scan_and_orphans_report_sweep_and_exit_by_what_they_found(make_database_settings, tmp_path, capsys):
    settings = make_database_settings()
    config = tmp_path / "config.toml"
    config.write_text('erase_traces = true\naudit_table = "erasures"\n' + database_toml(settings))
    database = Database(settings)
    try:
        data = AgnoData(database, settings.default_session_table)
        data.create_all()
        kept, orphaned = unique_ids("cli", 2)
        data.add_session(kept)
        orphan_session(data, orphaned)

        code, out = in_process(capsys, "--config", str(config), "scan", kept, "never-there")
        assert code == 1 and f'{settings.id}: ' in out and f'row(s) hold "{kept}"' in out
        assert out.splitlines()[-1].startswith("scan: 1 of 2 id(s) found")
        code, out = in_process(capsys, "--config", str(config), "orphans")
        assert code == 1 and f'"{orphaned}" has no session: transcripts 1, compactions 1' in out

        # As a retention job runs it: its own process, the report on stdout, audit lines on stderr.
        swept = run_cli("--config", str(config), "orphans", "--erase", "--json")
        assert swept.returncode == 0, swept.stderr
        (report,) = json.loads(swept.stdout)
        assert (report["session_id"], report["swept"]) == (orphaned, report["rows"]) and report["rows"]["spans"] == 1
        (line,) = [json.loads(text) for text in swept.stderr.splitlines()]
        assert (line["outcome"], line["session_id"], line["rows_erased"]) == ("orphans_erased", orphaned, report["rows"])
        with database.engine.connect() as conn:
            recorded = conn.execute(select(audit_table(database.ref("erasures")).c.request_id)).scalars().all()
        assert recorded == [line["request_id"]]

        after = [in_process(capsys, "--config", str(config), *args) for args in (["orphans"], ["scan", orphaned])]
        assert after == [(0, "orphans: none\n"), (0, "scan: no row holds these ids\n")]
    finally:
        database.dispose()


def test_scan_of_an_unknown_database_exits_2_with_the_reason(make_database_settings, tmp_path, capsys):
    config = tmp_path / "config.toml"
    config.write_text(database_toml(make_database_settings()))
    assert main(["--config", str(config), "scan", "x", "--db-id", "elsewhere"]) == 2
    assert capsys.readouterr().err.strip() == "agentos-sessions: No database found with id 'elsewhere'"


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
