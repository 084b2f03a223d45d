"""``agentos-sessions check``: judge any server that claims this contract, and show why.

The judging is the live contract test's suite: schemathesis with every check, set by
``schemathesis.toml`` alone, plus, given disposable ids, the scenario a client relies on
(delete → 204, again → 404, no key → 401). Findings are grouped by check with one curl
each, with which of the responses the contract declares were seen."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import xml.etree.ElementTree as ElementTree
from collections import Counter, defaultdict
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence
from urllib.parse import quote

import httpx
import yaml
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from agentos_sessions.contract import contract_path

CONFIG_FILENAME = "schemathesis.toml"
TOKEN_ENV = "API_TOKEN"
# How often a generated session id is replaced by a disposable real one, so the 204
# path is exercised while random ids still probe the 404 path.
DISPOSABLE_ID_PROBABILITY = 0.3


def config_path() -> Path:
    """The base configuration, beside the contract in a checkout or inside the wheel."""
    return contract_path().with_name(CONFIG_FILENAME)


def compose_config(disposable_ids: list[str], base: Path | None = None) -> str:
    """The base configuration plus a fuzz dictionary of session ids that really exist.

    Schemathesis only draws dictionary values into positive cases when they match the
    parameter's schema, so negative cases stay negative.
    """
    text = (base or config_path()).read_text()
    if not disposable_ids:
        return text
    values = ", ".join(json.dumps(i) for i in disposable_ids)
    return (
        f"{text}\n"
        f"[dictionaries.disposable_session_ids]\nvalues = [{values}]\n\n"
        f"[parameters]\n"
        f'"path.session_id" = {{ dictionary = "disposable_session_ids", probability = {DISPOSABLE_ID_PROBABILITY} }}\n'
    )


@dataclass
class RunResult:
    returncode: int
    output: str
    report: dict
    # Where any extra report formats asked for were written (junit, har, ...).
    report_dir: Path | None = None


def run_schemathesis(
    url: str, token: str, workdir: Path, *, disposable_ids: list[str] = (), spec: Path | None = None,
    max_examples: int = 100, seed: int = 1, extra_args: list[str] = (), timeout: float = 900,
    reports: Sequence[str] = (), on_line: Callable[[str], None] | None = None,
) -> RunResult:  # fmt: skip
    """Run ``schemathesis run`` and return its exit code, console output and JSON report.

    ``reports`` adds report formats (written under ``report_dir``); ``on_line`` receives
    the console output line by line while it runs, for a progress display.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / CONFIG_FILENAME
    config_file.write_text(compose_config(list(disposable_ids)))
    report_file = workdir / "report.json"
    report_dir = workdir / "reports"
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config_file), "run", str(spec or contract_path()),
        "--url", url, "--seed", str(seed), "--max-examples", str(max_examples),
        "--report", ",".join(["json", *reports]), "--report-dir", str(report_dir),
        "--report-json-path", str(report_file), "--no-color", *extra_args,
    ]  # fmt: skip
    # Piped, Python would hold the output back until exit; progress needs it line by line.
    env = {**os.environ, TOKEN_ENV: token, "PYTHONUNBUFFERED": "1"}
    lines: list[str] = []
    with subprocess.Popen(
        command, env=env, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as process:
        timed_out = threading.Event()
        # Past the bound the run is stopped, not waited for.
        deadline = threading.Timer(timeout, lambda: (timed_out.set(), process.kill()))
        deadline.start()
        try:
            for line in process.stdout:
                lines.append(line)
                if on_line is not None:
                    on_line(line.rstrip("\n"))
        finally:
            deadline.cancel()
        process.wait()
    if timed_out.is_set():
        raise subprocess.TimeoutExpired(command, timeout, output="".join(lines))
    report = json.loads(report_file.read_text()) if report_file.exists() else {}
    return RunResult(process.returncode, "".join(lines), report, report_dir)


OPERATION_PATH = "/sessions/{session_id}"
SCENARIO = "scenario: delete → 204, delete again → 404, no key → 401"
PHASES = ("Examples", "Coverage", "Fuzzing", "Stateful")
TOKEN_PLACEHOLDER = "$TOKEN"
# Schemathesis filters the Authorization value out of its curls. For its auth checks
# (ST4xx) the header it sent was a deliberately wrong one; elsewhere it was the key.
_FILTERED_AUTH = re.compile(r"-H '[Aa]uthorization: \[Filtered\]'")


@dataclass
class Finding:
    check: str
    detail: str
    curl: str | None


@dataclass
class CheckReport:
    url: str
    spec: Path
    seed: int
    max_examples: int
    declared: dict[str, str]
    findings: list[Finding] = field(default_factory=list)
    observed: Counter = field(default_factory=Counter)
    scenario: str = "skipped: pass --ids-file with disposable session ids to run it"
    generated: int = 0
    phases: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    schemathesis_exit: int | None = None
    schemathesis_ran: bool = False  # it ran and wrote its report

    @property
    def clean(self) -> bool:
        return not self.findings and self.schemathesis_exit == 0

    def by_check(self) -> dict[str, list[Finding]]:
        grouped: dict[str, list[Finding]] = defaultdict(list)
        for finding in self.findings:
            grouped[finding.check].append(finding)
        return dict(grouped)


def declared_responses(spec: Path) -> dict[str, str]:
    document = yaml.safe_load(spec.read_bytes())
    responses = document["paths"][OPERATION_PATH]["delete"]["responses"]
    return {str(status): str(body.get("description", "")) for status, body in responses.items()}


def curl(method: str, url: str, *, with_key: bool) -> str:
    auth = f'-H "Authorization: Bearer {TOKEN_PLACEHOLDER}" ' if with_key else ""
    return f"curl -i -X {method} {auth}{shlex.quote(url)}"


def run_scenario(base_url: str, token: str, session_id: str, report: CheckReport) -> None:
    """The client's view of an erase: it happens once, then the session is gone."""
    url = f"{base_url}{OPERATION_PATH.format(session_id=quote(session_id, safe=''))}"
    steps = [
        ("delete with the key", {"Authorization": f"Bearer {token}"}, 204, True),
        ("delete it again", {"Authorization": f"Bearer {token}"}, 404, True),
        ("delete without a key", {}, 401, False),
    ]
    failed = []
    with httpx.Client(timeout=30) as http:
        for name, headers, expected, with_key in steps:
            response = http.delete(url, headers=headers)
            report.observed[str(response.status_code)] += 1
            problem = None
            if response.status_code != expected:
                problem = f"{name}: expected {expected}, got {response.status_code}"
            elif expected >= 400 and not _is_error_body(response):
                problem = f"{name}: {expected} without an application/json {{detail, error_code}} body"
            elif expected == 204 and response.content:
                problem = f"{name}: 204 with a body"
            if problem:
                failed.append(problem)
                report.findings.append(Finding(SCENARIO, problem, curl("DELETE", url, with_key=with_key)))
    report.scenario = "failed: " + "; ".join(failed) if failed else "passed (3 steps)"


def _is_error_body(response: httpx.Response) -> bool:
    if response.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        return False
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and isinstance(body.get("detail"), str)


def reproducible(command: str, code: str) -> str:
    header = "-H 'Authorization: Bearer not-the-key'" if code.startswith("ST4") else (
        f'-H "Authorization: Bearer {TOKEN_PLACEHOLDER}"'
    )
    return _FILTERED_AUTH.sub(header, command)


def failures_from_junit(path: Path) -> list[Finding]:
    """Each failing test case of a schemathesis JUnit report, one Finding per failed check."""
    findings = []
    for failure in ElementTree.parse(path).iter("failure"):
        for case in re.split(r"(?m)^\d+\. Test Case ID: ", failure.text or ""):
            findings.extend(_case_findings(case))
    return findings


def _case_findings(case: str) -> list[Finding]:
    command = next(
        (line.strip() for line in case.split("Reproduce with:", 1)[-1].splitlines() if line.strip().startswith("curl")),
        None,
    ) if "Reproduce with:" in case else None
    status = re.search(r"(?m)^\[(\d{3})\][^\n]*", case)
    findings = []
    checks = list(re.finditer(r"(?m)^- (ST\d+) ([^\n]+)$", case))
    for index, match in enumerate(checks):
        end = checks[index + 1].start() if index + 1 < len(checks) else (status.start() if status else len(case))
        explanation = " ".join(line.strip() for line in case[match.end() : end].splitlines() if line.strip())
        detail = "; ".join(part for part in (status.group(0).rstrip(":") if status else "", explanation) if part)
        code = match.group(1)
        findings.append(Finding(f"{code} {match.group(2).strip()}", detail, reproducible(command, code) if command else None))
    return findings


def observed_in_har(path: Path) -> Counter:
    entries = json.loads(path.read_text()).get("log", {}).get("entries", [])
    return Counter(str(entry["response"]["status"]) for entry in entries if entry.get("response", {}).get("status"))


class PhaseProgress:
    """Turns schemathesis's console lines into steps of a progress bar."""

    def __init__(self, progress: Progress, task) -> None:
        self.progress = progress
        self.task = task
        self.done: set[str] = set()

    def __call__(self, line: str) -> None:
        if "Loaded specification" in line and "load" not in self.done:
            self._advance("load", "schemathesis: Examples")
            return
        match = re.match(r"^\s*\S+\s+(Examples|Coverage|Fuzzing|Stateful)\b", line)
        if match and match.group(1) not in self.done:
            phase = match.group(1)
            following = PHASES[PHASES.index(phase) + 1] if phase != PHASES[-1] else None
            self._advance(phase, f"schemathesis: {following}" if following else "schemathesis: reporting")

    def _advance(self, step: str, description: str) -> None:
        self.done.add(step)
        self.progress.update(self.task, advance=1, description=description)


def check(
    url: str, token: str, *, spec: Path | None = None, ids: Iterable[str] = (), max_examples: int = 100, seed: int = 1,
    workdir: Path, progress_console: Console | None = None, run: Callable = run_schemathesis,
) -> CheckReport:  # fmt: skip
    spec = spec or contract_path()
    base = url.rstrip("/")
    report = CheckReport(base, spec, seed, max_examples, declared_responses(spec))
    ids = [i for i in ids if i]
    steps = 1 + len(PHASES) + (1 if ids else 0)
    progress = Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=progress_console or Console(stderr=True), transient=True,
    )  # fmt: skip
    with progress:
        task = progress.add_task("scenario" if ids else "schemathesis: loading", total=steps)
        if ids:
            # The first id is the scenario's; the rest feed schemathesis's 204 path.
            run_scenario(base, token, ids[0], report)
            progress.update(task, advance=1, description="schemathesis: loading")
        result = run(
            base, token, workdir, disposable_ids=ids[1:], spec=spec, max_examples=max_examples, seed=seed,
            reports=("junit", "har"), extra_args=["--continue-on-failure"], on_line=PhaseProgress(progress, task),
        )  # fmt: skip
    report.schemathesis_exit = result.returncode
    summary = result.report or {}
    report.schemathesis_ran = result.returncode in (0, 1) and bool(summary)
    report.generated = summary.get("test_cases", {}).get("generated", 0)
    report.phases = {name: state.get("status", "?") for name, state in (summary.get("phases") or {}).items()}
    warnings = summary.get("warnings") or {}
    report.notes.extend(f"{kind}: {', '.join(labels)}" for kind, labels in warnings.items() if labels)
    for error in summary.get("errors") or []:
        report.findings.append(Finding("schemathesis error", f"{error['title']} (×{error['count']})", None))
    reports = result.report_dir
    for junit in sorted(reports.glob("junit-*.xml")) if reports and reports.exists() else []:
        report.findings.extend(failures_from_junit(junit))
    for har in sorted(reports.glob("har-*.json")) if reports and reports.exists() else []:
        report.observed.update(observed_in_har(har))
    if not report.schemathesis_ran:
        tail = "\n".join(result.output.strip().splitlines()[-15:])
        report.findings.append(Finding("schemathesis could not run", tail, None))
    elif result.returncode == 1 and not report.findings:
        report.findings.append(Finding("schemathesis failed", "exit 1 without a parsed finding; see its output", None))
    return report


def render(report: CheckReport, token: str, console: Console) -> None:
    """The report, with the key replaced by $TOKEN wherever it could appear."""

    def safe(text: str) -> str:
        # Defence in depth: nothing printed should hold the key, but if it does, it goes.
        # A very short key would also match inside ordinary words, so it is left alone.
        if token and len(token) >= 8:
            text = text.replace(token, TOKEN_PLACEHOLDER)
        return escape(text)

    console.print(f"[bold]agentos-sessions check[/] {safe(report.url)} against {safe(str(report.spec))}")
    phases = ", ".join(f"{name} {state}" for name, state in report.phases.items()) or "none ran"
    console.print(
        f"schemathesis: {report.generated} cases, seed {report.seed}, max examples {report.max_examples}; "
        f"phases: {safe(phases)}"
    )
    console.print(f"{SCENARIO}: {safe(report.scenario)}")
    for note in report.notes:
        console.print(f"[dim]note: {safe(note)}[/]")

    grouped = report.by_check()
    console.print()
    console.print(f"[bold]Findings by check[/] ({len(report.findings)} in {len(grouped)} checks)")
    if not grouped:
        console.print("  none")
    for check_name, findings in grouped.items():
        console.print(f"[red]✗ {safe(check_name)}[/] — {len(findings)} case{'s' if len(findings) != 1 else ''}")
        console.print(f"    {safe(findings[0].detail)}", soft_wrap=True)
        reproduce = next((f.curl for f in findings if f.curl), None)
        if reproduce:
            # soft_wrap keeps the command on one line, so it can be copied as it is.
            console.print(f"    {safe(reproduce)}", soft_wrap=True)

    console.print()
    table = Table(title="Responses the contract declares", title_justify="left")
    table.add_column("status")
    table.add_column("description")
    table.add_column("observed")
    for status, description in report.declared.items():
        seen = report.observed.get(status, 0)
        table.add_row(status, safe(description), f"[green]yes[/] ({seen})" if seen else "[yellow]not observed[/]")
    console.print(table)
    undeclared = {s: n for s, n in sorted(report.observed.items()) if s not in report.declared}
    if undeclared:
        listed = ", ".join(f"{status} ({count})" for status, count in undeclared.items())
        console.print(f"Also seen, not declared for DELETE: {listed} (e.g. 405 for wrong-method probes)")
    console.print()
    if report.clean:
        console.print("[bold green]CLEAN[/]: no findings (exit 0)")
    else:
        console.print(f"[bold red]NOT CLEAN[/]: {len(report.findings)} findings (exit 1)")


def read_ids(source: str) -> list[str]:
    text = sys.stdin.read() if source == "-" else Path(source).read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def main(args, console: Console | None = None) -> int:
    """The ``check`` command: 0 clean, 1 findings, 2 could not check."""
    console = console or Console(soft_wrap=False)
    if importlib.util.find_spec("schemathesis") is None:
        # Without it every run "fails", which would read as findings against the server.
        console.print(escape("check needs schemathesis, which the check extra installs: pip install 'agentos-sessions[check]'"))
        return 2
    token = args.token or os.environ.get("OS_SECURITY_KEY")
    if not token:
        console.print("check needs the server's bearer key: --token T (or OS_SECURITY_KEY)")
        return 2
    try:
        httpx.get(args.url, timeout=10)
    except httpx.HTTPError as exc:
        console.print(f"cannot reach {escape(args.url)}: {escape(type(exc).__name__)}")
        return 2
    ids = read_ids(args.ids_file) if args.ids_file else []
    spec = Path(args.spec) if args.spec else None
    kept = nullcontext(args.report_dir) if args.report_dir else tempfile.TemporaryDirectory(prefix="agentos-check-")
    with kept as workdir:
        report = check(args.url, token, spec=spec, ids=ids, max_examples=args.max_examples, seed=args.seed,
                       workdir=Path(workdir))  # fmt: skip
    render(report, token, console)
    if not report.schemathesis_ran:
        return 2
    return 0 if report.clean else 1
