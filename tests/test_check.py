"""``agentos-sessions check``: clean on this project's own server with every declared status
but 500 seen; against AgentOS 3.1.10 itself, its 204 for a missing session, its drift from
the contract and nothing blamed on its own PATCH; findings (grouped by check, one curl
each) and exit 1 on a server that breaks the contract, exit 2 when it cannot check at
all; the same verdict as JSON and JUnit XML; never the key."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import tomllib
import warnings
from collections import Counter
from pathlib import Path
from xml.etree import ElementTree

import httpx
import pytest
from rich.console import Console
from rich.progress import Progress
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from agentos_sessions import check as check_module
from agentos_sessions.check import PhaseProgress, curl_for, explain_by_target, read_run
from agentos_sessions.check_report import (
    NOT_EXERCISED,
    CheckReport,
    Finding,
    as_json,
    render,
)
from agentos_sessions.drift import Drift
from agentos_sessions.schemathesis_run import RunResult
from tests.support import (
    KEY,
    LiveServer,
    ThreadedServer,
    database_toml,
    free_port,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[1]
DECLARED = ("204", "400", "401", "404", "422", "500")
# A fixed seed and schemathesis's default number of cases, as the README's command runs.
SEED = "1"


def run_check(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "agentos_sessions.cli", "check", "--seed", SEED, *args],
        capture_output=True, text=True, timeout=600, cwd=cwd, env=env, check=False,
    )  # fmt: skip


def declared_rows(output: str) -> dict[str, str]:
    rows = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if cells and cells[0] in DECLARED and len(cells) == 3:
            rows[cells[0]] = cells[2]
    return rows


def check_with_reports(url: str, ids: list[str], tmp_path: Path) -> tuple[subprocess.CompletedProcess, dict, ElementTree.Element]:
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("\n".join(ids) + "\n")
    json_file, junit_file = tmp_path / "check.json", tmp_path / "check.xml"
    done = run_check(
        "--url", url, "--token", KEY, "--ids-file", str(ids_file),
        "--report", f"json={json_file}", "--report", f"junit={junit_file}", cwd=tmp_path,
    )  # fmt: skip
    print(done.stdout, done.stderr)
    assert KEY not in done.stdout + done.stderr + json_file.read_text() + junit_file.read_text()
    return done, json.loads(json_file.read_text()), ElementTree.parse(junit_file).getroot()


def junit_cases(root: ElementTree.Element) -> dict[str, ElementTree.Element]:
    return {case.get("name"): case for case in root.iter("testcase")}


@pytest.mark.live
@pytest.mark.usefixtures("backend")
def test_own_server_is_clean_with_every_declared_status_but_500_observed(make_database_settings, tmp_path):
    with LiveServer(tmp_path, database_toml(make_database_settings())) as server:
        done, report, junit = check_with_reports(server.url, server.seed(30), tmp_path)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "CLEAN: no findings (exit 0)" in done.stdout
    assert "passed: 3 steps" in done.stdout
    rows = declared_rows(done.stdout)
    assert set(rows) == set(DECLARED)
    for status in ("204", "400", "401", "404", "422"):
        assert rows[status].startswith("yes"), rows
    assert rows["500"] == "not observed"

    assert report["verdict"] == "clean" and report["exit_code"] == 0 and report["erase_exercised"]
    assert report["findings"] == [] and report["explained"] == []
    assert all(report["responses"]["declared"][s] > 0 for s in ("204", "400", "401", "404", "422"))
    # Wrong-method probes are listed apart, each answered 405, never in the table.
    assert report["responses"]["other_methods"] and all(
        set(statuses) == {"405"} for statuses in report["responses"]["other_methods"].values()
    )
    # Our own document is the contract itself.
    assert report["drift"]["compared"] and report["drift"]["differences"] == []
    assert report["drift"]["target_methods"] == ["DELETE"]
    assert junit.find("testsuite").get("failures") == "0"
    assert "schemathesis not_a_server_error" in junit_cases(junit)


# AgentOS 3.1.10 itself, as a deployment runs it: uvicorn, a bearer key, one SqliteDb.
AGENTOS = """
import sys, uvicorn
from agno.db.sqlite import SqliteDb
from agno.os import AgentOS
app = AgentOS(db=SqliteDb(db_file=sys.argv[1], id="default"), telemetry=False).get_app()
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""


@pytest.fixture
def agentos(tmp_path):
    """AgentOS on a loopback port over sessions seeded through Agno's own API: (url, ids)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from agno.db.sqlite import SqliteDb
        from agno.session import AgentSession

        db_file = tmp_path / "agno.db"
        db = SqliteDb(db_file=str(db_file), id="default")
        ids = [f"agentos-{i}" for i in range(30)]
        for session_id in ids:
            db.upsert_session(AgentSession(session_id=session_id, agent_id="support-agent", user_id="user-1",
                                           created_at=int(time.time())))  # fmt: skip
        db.db_engine.dispose()
    port = free_port()
    env = {**os.environ, "OS_SECURITY_KEY": KEY, "AGNO_TELEMETRY": "false"}
    log = (tmp_path / "agentos.log").open("wb")
    server = subprocess.Popen([sys.executable, "-c", AGENTOS, str(db_file), str(port)], env=env, stdout=log,
                              stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def serving() -> bool:
        assert server.poll() is None, (tmp_path / "agentos.log").read_text()
        try:
            return httpx.get(f"{url}/openapi.json", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(serving, timeout=120, what="AgentOS to serve /openapi.json")
        yield url, ids
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.mark.live
def test_agentos_itself_gets_its_204_for_a_missing_session_and_its_drift(agentos, tmp_path):
    url, ids = agentos
    done, report, junit = check_with_reports(url, ids, tmp_path)

    assert done.returncode == 1, done.stdout + done.stderr
    assert report["verdict"] == "not_clean"
    # The scenario catches what AgentOS's docs promise and it does not do.
    assert "delete it again: expected 404, got 204" in done.stdout
    assert report["scenario"] == {"status": "failed", "detail": "delete it again: expected 404, got 204"}
    # Its OPTIONS answer advertises only GET (README, "Where this differs from AgentOS itself").
    assert "✗ ST205 Allow header mismatch" in done.stdout
    # PATCH is AgentOS's own operation on the path: probed, explained, never a finding.
    assert not [f for f in report["findings"] if f["method"] == "PATCH"]
    assert [(e["check"].split()[0], e["method"]) for e in report["explained"]] == [("ST204", "PATCH")]
    assert report["drift"]["target_methods"] == ["DELETE", "GET", "PATCH"]
    assert "(this affects: ST204 on PATCH)" in done.stdout
    # The table counts only DELETE: PATCH's 422 is among the probes, not a 422 "seen".
    assert report["responses"]["other_methods"]["PATCH"] == {"422": 1}

    drift = [d["detail"] for d in report["drift"]["differences"]]
    assert report["drift"]["compared"] and not report["drift"]["strict"]
    assert any(d.startswith("added by the target: query `user_id`") for d in drift), drift
    assert any(d.startswith("added by the target: query `delete_media`") for d in drift), drift
    errors = next(d for d in drift if d.startswith("400, 401, 404, 500:"))
    assert "fields only in the target: `error_id`, `error_type`" in errors
    assert "fields only in the contract: `error_code`" in errors
    for line in ("query `user_id`", "query `delete_media`", "`error_id`, `error_type`"):
        assert line in done.stdout

    cases = junit_cases(junit)
    scenario = cases["scenario: delete → 204, delete again → 404, no key → 401"]
    assert "expected 404, got 204" in scenario.find("failure").text
    # Drift is informative here: reported, not failed.
    assert cases["drift from the target's own document"].find("failure") is None
    assert "`user_id`" in cases["drift from the target's own document"].find("system-out").text
    assert cases["schemathesis unsupported_method"].find("failure") is None


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
        done, report, junit = check_with_reports(url, ["kept-forever", "0-explodes"], tmp_path)
    out = done.stdout
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
    # It serves no document: the drift says so, and nothing else depends on it.
    assert report["drift"]["compared"] is False and report["drift"]["problem"] == "the target answered 404"
    failed = {name for name, case in junit_cases(junit).items() if case.find("failure") is not None}
    assert {"schemathesis not_a_server_error", "schemathesis ignored_auth"} <= failed


def test_unreachable_server_missing_key_or_bad_report_option_is_exit_2(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    unreachable = run_check("--url", f"http://127.0.0.1:{port}", "--token", KEY, cwd=tmp_path)
    assert unreachable.returncode == 2 and "cannot reach" in unreachable.stdout
    keyless = run_check("--url", f"http://127.0.0.1:{port}", cwd=tmp_path)
    assert keyless.returncode == 2 and "--token" in keyless.stdout
    bad = run_check("--url", f"http://127.0.0.1:{port}", "--token", KEY, "--report", "html=x", cwd=tmp_path)
    assert bad.returncode == 2 and "json=FILE or junit=FILE" in bad.stdout


def test_the_readmes_first_command_installs_what_check_needs():
    """No extra to remember: schemathesis comes with the package, pinned to its major."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (pin,) = [d for d in project["dependencies"] if d.startswith("schemathesis")]
    assert re.search(r"<\s*5$", pin) and "==" not in pin, pin
    assert "check" not in project["optional-dependencies"]
    assert "[check]" not in (ROOT / "README.md").read_text() + (ROOT / "agentos_sessions" / "check.py").read_text()


def report_for_render(**fields) -> CheckReport:
    return CheckReport("http://h", Path("openapi.yaml"), 1, 100, {"204": "Successful Response"}, **fields)


def rendered(report: CheckReport) -> str:
    console = Console(record=True, width=100, file=io.StringIO())
    render(report, KEY, console)
    return console.export_text()


def test_without_ids_the_verdict_says_the_erase_was_not_exercised():
    report = report_for_render(schemathesis_exit=0)
    text = rendered(report)
    assert f"NO FINDINGS, {NOT_EXERCISED} (exit 0)" in text
    assert "CLEAN: no findings" not in text
    assert as_json(report)["verdict"] == "erase_not_exercised" and not as_json(report)["erase_exercised"]

    report.findings.append(Finding("ST101 Server error", "[500]", source="not_a_server_error"))
    assert f"NOT CLEAN: 1 finding; {NOT_EXERCISED} (exit 1)" in rendered(report)


def test_strict_drift_turns_a_difference_into_exit_1():
    from agentos_sessions.drift import Difference

    drift = Drift("http://h/openapi.json", differences=[Difference("parameters", "added by the target: query `x`")])
    informative = report_for_render(scenario="passed", drift=drift)
    assert informative.exit_code == 0 and "CLEAN: no findings (exit 0)" in rendered(informative)
    strict = report_for_render(scenario="passed", drift=drift, strict_drift=True)
    assert strict.exit_code == 1 and "1 drift differences (--strict-drift)" in rendered(strict)


def test_a_probe_of_a_method_the_target_declares_is_explained_not_a_finding():
    report = report_for_render(findings=[
        Finding("ST204 Wrong response to undeclared method", "[422]", method="PATCH", source="unsupported_method"),
        Finding("ST205 Allow header mismatch", "[405] Allow: GET", method="OPTIONS", source="allow_header_conformance"),
        Finding("ST101 Server error", "[500]", method="DELETE", source="not_a_server_error"),
    ])  # fmt: skip
    explain_by_target(report, Drift("x", differences=[], target_methods=["DELETE", "GET", "PATCH"]))
    assert [(e.check, e.method) for e in report.explained] == [("ST204 Wrong response to undeclared method", "PATCH")]
    assert [f.method for f in report.findings] == ["OPTIONS", "DELETE"]
    assert report.findings[0].detail.endswith("(the target's document declares DELETE, GET, PATCH on this path)")
    # Without the target's document, nothing is explained away.
    unexplained = report_for_render(findings=[Finding("ST204 x", "[422]", method="PATCH", source="unsupported_method")])
    explain_by_target(unexplained, Drift("x", problem="the target answered 404"))
    assert len(unexplained.findings) == 1 and unexplained.explained == []


def test_findings_of_one_check_on_several_methods_are_explained_one_method_at_a_time(tmp_path):
    def probe(method: str) -> dict:
        failure = {"code": "ST204", "title": "Wrong response to undeclared method", "message": "expected 405"}
        return {"request": {"method": method, "uri": "http://h/sessions/0", "headers": {}},
                "response": {"status_code": 422}, "checks": [{"name": "unsupported_method", "status": "failure",
                                                               "failure_info": {"failure": failure}}]}  # fmt: skip

    interactions = {f"case-{method}": probe(method) for method in ("PATCH", "PUT")}
    recorder = {"interactions": {k: {"request": v["request"], "response": v["response"]} for k, v in interactions.items()},
                "checks": {k: v["checks"] for k, v in interactions.items()}, "cases": {}}  # fmt: skip
    (tmp_path / "events.ndjson").write_text(json.dumps({"ScenarioFinished": {"recorder": recorder}}) + "\n")
    report = report_for_render()
    read_run(RunResult(1, "", {"complete": True}, tmp_path), report)
    assert [(f.check, f.method) for f in report.findings] == [("ST204 Wrong response to undeclared method", "PATCH"),
                                                              ("ST204 Wrong response to undeclared method", "PUT")]  # fmt: skip
    explain_by_target(report, Drift("x", differences=[], target_methods=["DELETE", "PATCH"]))
    assert [e.method for e in report.explained] == ["PATCH"] and [f.method for f in report.findings] == ["PUT"]


def test_a_schemathesis_run_past_its_bound_is_could_not_check(monkeypatch, tmp_path):
    def too_long(*_args, **_kwargs):
        raise subprocess.TimeoutExpired(["schemathesis"], 900)

    monkeypatch.setattr(check_module, "run_schemathesis", too_long)
    report = check_module.check(f"http://127.0.0.1:{free_port()}", KEY, workdir=tmp_path)
    assert report.could_not_check == "schemathesis did not finish within 900 s" and report.exit_code == 2


def test_a_recorded_request_becomes_a_runnable_curl_with_the_key_as_token():
    request = {"method": "DELETE", "uri": "http://h/sessions/0?db_id=", "headers": {"Authorization": ["[Filtered]"]}}
    assert curl_for(request, "not_a_server_error") == """curl -X DELETE -H "Authorization: Bearer $TOKEN" 'http://h/sessions/0?db_id='"""
    # A check that sent a wrong key on purpose keeps a wrong one.
    assert "-H 'Authorization: Bearer not-the-key'" in curl_for(request, "ignored_auth")
    assert curl_for({"method": "PATCH", "uri": "http://h/x", "headers": {}}, "unsupported_method") == "curl -X PATCH http://h/x"


def test_progress_advances_once_per_phase():
    console = Console(file=io.StringIO(), force_terminal=False)
    with Progress(console=console) as progress:
        task = progress.add_task("x", total=4)
        on_event = PhaseProgress(progress, task)
        for name in ("probing", "examples", "coverage", "fuzzing", "stateful"):
            on_event({"PhaseStarted": {"phase": {"name": name}}})
            on_event({"PhaseFinished": {"phase": {"name": name}, "status": "success"}})
        assert progress.tasks[0].completed == 4
        assert Counter(t.description for t in progress.tasks) == Counter(["schemathesis: reporting"])


def test_the_operating_reference_documents_every_field_of_the_json_report():
    reference = (ROOT / "docs" / "operating.md").read_text()
    document = as_json(report_for_render(findings=[Finding("ST101 Server error", "[500]")],
                                         drift=Drift("x", differences=[])))  # fmt: skip
    fields = set(document) | set(document["scenario"]) | set(document["schemathesis"]) | set(document["responses"])
    fields |= set(document["findings"][0]) | set(document["drift"])
    assert [f for f in sorted(fields) if f"`{f}`" not in reference] == []
