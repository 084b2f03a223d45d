"""``agentos-sessions check``: clean on this project's own server, findings (grouped by
check, one curl each) and exit 1 on a server that breaks the contract, exit 2 when it
cannot check at all; never prints the key."""

from __future__ import annotations

import argparse
import importlib.util
import io
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from rich.progress import Progress
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from agentos_sessions.check import PhaseProgress, failures_from_junit, reproducible
from agentos_sessions.check import main as check_main
from tests.support import KEY, LiveServer, ThreadedServer, database_toml

MAX_EXAMPLES = 40
DECLARED = ("204", "400", "401", "404", "422", "500")


def run_check(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # Wide, so rich never wraps a curl in the middle.
    env = {"COLUMNS": "400", "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "agentos_sessions.cli", "check", *args],
        capture_output=True, text=True, timeout=600, cwd=cwd, env=env,
    )  # fmt: skip


def declared_rows(output: str) -> dict[str, str]:
    rows = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if cells and cells[0] in DECLARED and len(cells) == 3:
            rows[cells[0]] = cells[2]
    return rows


@pytest.mark.live
@pytest.mark.usefixtures("backend")
def test_own_server_is_clean(make_database_settings, tmp_path):
    with LiveServer(tmp_path, database_toml(make_database_settings())) as server:
        ids_file = tmp_path / "ids.txt"
        ids_file.write_text("\n".join(server.seed(30)) + "\n")
        done = run_check(
            "--url", server.url, "--token", KEY, "--ids-file", str(ids_file),
            "--max-examples", str(MAX_EXAMPLES), "--report-dir", str(tmp_path / "reports"), cwd=tmp_path,
        )  # fmt: skip
    print(done.stdout, done.stderr)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "CLEAN: no findings (exit 0)" in done.stdout
    assert "passed (3 steps)" in done.stdout
    rows = declared_rows(done.stdout)
    assert set(rows) == set(DECLARED)
    # The scenario alone guarantees 204, 404 and 401; a healthy server never shows a 500.
    for status in ("204", "401", "404"):
        assert rows[status].startswith("yes"), rows
    assert rows["500"] == "not observed"
    assert KEY not in done.stdout + done.stderr
    assert (tmp_path / "reports" / "report.json").exists()


def broken_app() -> Starlette:
    """Claims the contract, breaks it: ignores the key, 500s in plain text, never 404s."""

    async def delete(request):
        if request.path_params["session_id"].startswith("0"):
            return PlainTextResponse("boom", status_code=500)
        if "authorization" not in request.headers:
            return Response('{"detail": "no key"}', status_code=401, media_type="application/json")
        return Response(status_code=204)

    return Starlette(routes=[Route("/sessions/{session_id}", delete, methods=["DELETE"])])


@pytest.mark.live
def test_broken_server_gets_findings_grouped_by_check_with_a_curl_each(tmp_path):
    with ThreadedServer(broken_app()) as url:
        ids_file = tmp_path / "ids.txt"
        ids_file.write_text("kept-forever\n0-explodes\n")
        done = run_check(
            "--url", url, "--token", KEY, "--ids-file", str(ids_file), "--max-examples", str(MAX_EXAMPLES), cwd=tmp_path
        )  # fmt: skip
    out = done.stdout
    print(out, done.stderr)
    assert done.returncode == 1
    assert "NOT CLEAN" in out
    # The scenario caught the session that never goes away.
    assert "delete it again: expected 404, got 204" in out
    for check in ("ST101 Server error", "ST105 Undocumented Content-Type", "ST401 API accepts invalid authentication"):
        lines = out.splitlines()
        header = next(i for i, line in enumerate(lines) if check in line)
        block = lines[header + 1 : header + 3]
        assert any(line.strip().startswith("curl -X DELETE") and url in line for line in block), (check, block)
    # Each check is one group, however many cases failed it.
    assert out.count("✗ ST101 Server error") == 1
    assert declared_rows(out)["500"].startswith("yes")
    assert KEY not in out + done.stderr


def test_without_schemathesis_it_is_exit_2_with_the_line_that_installs_it(monkeypatch):
    """Not "NOT CLEAN" with a finding: the server was never judged."""
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *rest: None if name == "schemathesis" else real_find_spec(name, *rest)
    )
    console = Console(record=True, width=200)
    arguments = argparse.Namespace(url="http://127.0.0.1:9", token=KEY, ids_file=None, spec=None, report_dir=None,
                                   max_examples=1, seed=1)  # fmt: skip

    assert check_main(arguments, console) == 2
    assert "pip install 'agentos-sessions[check]'" in console.export_text()


def test_unreachable_server_or_missing_key_is_exit_2(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    unreachable = run_check("--url", f"http://127.0.0.1:{port}", "--token", KEY, cwd=tmp_path)
    assert unreachable.returncode == 2 and "cannot reach" in unreachable.stdout
    keyless = run_check("--url", f"http://127.0.0.1:{port}", cwd=tmp_path)
    assert keyless.returncode == 2 and "--token" in keyless.stdout


JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="schemathesis"><testcase name="DELETE /sessions/{session_id}">
<failure type="failure" message="ST101, ST105">1. Test Case ID: abc

- ST101 Server error

- ST105 Undocumented Content-Type

    Received: text/plain
    Documented: application/json

[500] Internal Server Error:

    `boom`

Reproduce with:

    curl -X DELETE -H 'Authorization: [Filtered]' 'http://h/sessions/0'

    st replay abc</failure>
<failure type="failure" message="ST401">1. Test Case ID: def

- ST401 API accepts invalid authentication

    Expected 401 or 403, got `204 No Content`

[204] No Content:

    &lt;EMPTY&gt;

Reproduce with:

    curl -X DELETE -H 'Authorization: [Filtered]' 'http://h/sessions/x'</failure>
</testcase></testsuite></testsuites>
"""


def test_junit_failures_become_one_finding_per_check_with_a_runnable_curl(tmp_path):
    path = tmp_path / "junit.xml"
    path.write_text(JUNIT)
    findings = failures_from_junit(path)
    assert [f.check for f in findings] == [
        "ST101 Server error", "ST105 Undocumented Content-Type", "ST401 API accepts invalid authentication",
    ]  # fmt: skip
    assert findings[0].detail == "[500] Internal Server Error"
    assert "Received: text/plain Documented: application/json" in findings[1].detail
    # The key goes back in as $TOKEN; for an auth check the header stays a wrong one.
    assert findings[0].curl == """curl -X DELETE -H "Authorization: Bearer $TOKEN" 'http://h/sessions/0'"""
    assert findings[2].curl == "curl -X DELETE -H 'Authorization: Bearer not-the-key' 'http://h/sessions/x'"
    assert reproducible("curl -X DELETE 'http://h/x'", "ST203") == "curl -X DELETE 'http://h/x'"


def test_progress_advances_once_per_phase():
    console = Console(file=io.StringIO(), force_terminal=False)
    with Progress(console=console) as progress:
        task = progress.add_task("x", total=5)
        on_line = PhaseProgress(progress, task)
        for line in [
            " ✅  Loaded specification from openapi.yaml (in 0.5s)",
            " ⏭   Examples (in 0.01s)",
            " ✅  Coverage (in 0.12s)",
            " ✅  Fuzzing (in 2.1s)",
            " ⏭   Stateful (not applicable)",
            # The summary repeats the phase names; they must not count twice.
            "  ✅ Coverage",
            "  ✅ Fuzzing",
        ]:
            on_line(line)
        assert progress.tasks[0].completed == 5
