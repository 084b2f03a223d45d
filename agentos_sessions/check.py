"""``agentos-sessions check``: judge any server that claims this contract, and show why.

The judging is the live contract test's suite (``schemathesis_run.py``): schemathesis
with every check, set by ``schemathesis.toml`` alone, plus, given disposable ids, the
scenario a client relies on (delete → 204, again → 404, no key → 401). Schemathesis's
verdict is read from its structured reports, never from its console text. The target's own OpenAPI document, when it serves one, gives the drift section
and says which other methods on the path are its own (``drift.py``); the report goes
out for people and, on request, as JSON and JUnit XML (``check_report.py``)."""

from __future__ import annotations

import os
import shlex
import sys
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path
from urllib.parse import quote

import httpx
import yaml
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from agentos_sessions.check_report import (
    EXIT_COULD_NOT_CHECK,
    SCENARIO,
    TOKEN_PLACEHOLDER,
    CheckReport,
    Explained,
    Finding,
    render,
    write_json,
    write_junit,
)
from agentos_sessions.contract import contract_path
from agentos_sessions.drift import OPERATION_PATH, Drift, compare, load_target_document
from agentos_sessions.schemathesis_run import RunResult, run_schemathesis

PHASES = ("examples", "coverage", "fuzzing", "stateful")
REPORT_FORMATS = ("json", "junit")
# Schemathesis's checks that send a wrong key on purpose: their curl keeps a wrong one.
AUTH_CHECKS = frozenset({"ignored_auth"})


class PhaseProgress:
    """Turns schemathesis's phase events into steps of a progress bar."""

    def __init__(self, progress: Progress, task) -> None:
        self.progress, self.task = progress, task

    def __call__(self, event: dict) -> None:
        finished = event.get("PhaseFinished") or {}
        name = (finished.get("phase") or {}).get("name")
        if name in PHASES:
            following = PHASES.index(name) + 1
            description = f"schemathesis: {PHASES[following]}" if following < len(PHASES) else "schemathesis: reporting"
            self.progress.update(self.task, advance=1, description=description)


def declared_responses(document: dict) -> dict[str, str]:
    responses = document["paths"][OPERATION_PATH]["delete"]["responses"]
    return {str(status): str(body.get("description", "")) for status, body in responses.items()}


def curl(method: str, url: str, *, with_key: bool) -> str:
    auth = f'-H "Authorization: Bearer {TOKEN_PLACEHOLDER}" ' if with_key else ""
    return f"curl -i -X {method} {auth}{shlex.quote(url)}"


def curl_for(request: dict, check: str) -> str:
    """The request as schemathesis recorded it, runnable: the key it filtered out goes
    back in as ``$TOKEN``, except for a check that sent a wrong key on purpose."""
    parts = ["curl", "-X", shlex.quote(request.get("method", "GET"))]
    for name, values in (request.get("headers") or {}).items():
        for value in values if isinstance(values, list) else [values]:
            if name.lower() == "authorization" and value == "[Filtered]":
                parts.append("-H 'Authorization: Bearer not-the-key'" if check in AUTH_CHECKS
                             else f'-H "Authorization: Bearer {TOKEN_PLACEHOLDER}"')  # fmt: skip
            else:
                parts += ["-H", shlex.quote(f"{name}: {value}")]
    parts.append(shlex.quote(request.get("uri", "")))
    return " ".join(parts)


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
                report.findings.append(
                    Finding(SCENARIO, problem, curl("DELETE", url, with_key=with_key), status=response.status_code)
                )
    report.scenario, report.scenario_detail = ("failed", "; ".join(failed)) if failed else ("passed", "3 steps")


def _is_error_body(response: httpx.Response) -> bool:
    if response.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        return False
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and isinstance(body.get("detail"), str)


def read_run(result: RunResult, report: CheckReport) -> None:
    """Schemathesis's verdict into the report: the summary from its JSON run report; each
    failure, with the request that showed it, and every response from its NDJSON events."""
    summary = result.report
    report.schemathesis_exit = result.returncode
    if result.returncode not in (0, 1) or not summary or not summary.get("complete"):
        tail = "\n".join(result.output.strip().splitlines()[-15:])
        report.could_not_check = f"schemathesis did not complete a run (exit {result.returncode})\n{tail}".strip()
        return
    report.schemathesis_version = summary.get("schemathesis_version")
    report.generated = (summary.get("test_cases") or {}).get("generated", 0)
    report.phases = {name: state.get("status", "?") for name, state in (summary.get("phases") or {}).items()}
    warnings = summary.get("warnings") or {}
    report.notes.extend(f"{kind}: {', '.join(labels)}" for kind, labels in warnings.items() if labels)
    for error in summary.get("errors") or []:
        report.findings.append(Finding("schemathesis error", f"{error.get('title')} (×{error.get('count')})"))
    # By check and method: a probe of a method the target declares is explained away alone.
    grouped: dict[tuple[str, str], Finding] = {}
    for check, failure, request, response in _failures_and_responses(result.events(), report):
        label = f"{failure.get('code', '?')} {failure.get('title', check)}"
        method = (request or {}).get("method", "?")
        if (label, method) in grouped:
            grouped[label, method].cases += 1
            continue
        status = response.get("status_code")
        detail = f"[{status}] {failure.get('message', '')}".strip() if status else failure.get("message", "")
        grouped[label, method] = Finding(label, " ".join(detail.split()), curl_for(request, check) if request else None,
                                         method=method, status=status, source=check)  # fmt: skip
    report.findings.extend(grouped.values())
    if result.returncode == 1 and not report.findings:
        report.findings.append(Finding("schemathesis failed", "exit 1 without a failure in its reports"))


def _failures_and_responses(events: Iterable[dict], report: CheckReport) -> Iterator[tuple[str, dict, dict, dict]]:
    """Counts every recorded response (this operation's, or a probe of another method)
    and yields each failed check with its request and response."""
    for event in events:
        recorder = (event.get("ScenarioFinished") or {}).get("recorder") or {}
        interactions = recorder.get("interactions") or {}
        cases = recorder.get("cases") or {}
        for case_id, interaction in interactions.items():
            method = (interaction.get("request") or {}).get("method", "?").upper()
            path = ((cases.get(case_id) or {}).get("value") or {}).get("path")
            status = str((interaction.get("response") or {}).get("status_code", "no response"))
            if method == "DELETE" and path == OPERATION_PATH:
                report.observed[status] += 1
            else:
                report.other_methods[method][status] += 1
        for case_id, checks in (recorder.get("checks") or {}).items():
            interaction = interactions.get(case_id) or {}
            report.checks_run.update(check.get("name", "?") for check in checks)
            for check in checks:
                failure = (check.get("failure_info") or {}).get("failure")
                if check.get("status") == "failure" and failure:
                    yield check.get("name", "?"), failure, interaction.get("request"), interaction.get("response") or {}


def explain_by_target(report: CheckReport, drift: Drift) -> None:
    """A probe of a method the target's own document declares on the path (AgentOS's
    PATCH) is that operation answering, not an unexpected method: not a finding."""
    declared = set(drift.target_methods)
    kept = []
    for finding in report.findings:
        probe = finding.source != "scenario" and finding.method not in ("DELETE", "?")
        if probe and finding.method in declared:
            report.explained.append(Explained(
                finding.check, finding.method,
                f"the target's document declares {finding.method} {OPERATION_PATH}, which the contract does not have",
            ))  # fmt: skip
            continue
        if probe and declared - {"DELETE"}:
            # Still a finding, but judged knowing what the target says the path has.
            finding.detail += f" (the target's document declares {', '.join(sorted(declared))} on this path)"
        kept.append(finding)
    report.findings = kept


def check(
    url: str, token: str, *, spec: Path | None = None, ids: Iterable[str] = (), max_examples: int = 100, seed: int = 1,
    workdir: Path, target_spec: str | None = None, strict_drift: bool = False,
) -> CheckReport:  # fmt: skip
    started = time.monotonic()
    spec = spec or contract_path()
    contract = yaml.safe_load(spec.read_bytes())
    base = url.rstrip("/")
    report = CheckReport(base, spec, seed, max_examples, declared_responses(contract), strict_drift=strict_drift)
    ids = [i for i in ids if i]
    progress = Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True), transient=True,
    )  # fmt: skip
    with progress:
        task = progress.add_task("scenario" if ids else "schemathesis: examples", total=len(PHASES) + (1 if ids else 0))
        if ids:
            # The first id is the scenario's; the rest feed schemathesis's 204 path.
            run_scenario(base, token, ids[0], report)
            progress.update(task, advance=1, description="schemathesis: examples")
        try:
            result = run_schemathesis(
                base, token, workdir, disposable_ids=ids[1:], spec=spec, max_examples=max_examples, seed=seed,
                extra_args=["--continue-on-failure"], on_event=PhaseProgress(progress, task),
            )  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            result = None
            report.could_not_check = f"schemathesis did not finish within {exc.timeout:.0f} s"
    if result is not None:
        read_run(result, report)
    source, document, problem = load_target_document(base, target_spec, token)
    report.drift = compare(contract, document, source) if document is not None else Drift(source, problem=problem)
    explain_by_target(report, report.drift)
    if strict_drift and not report.drift.compared and not report.could_not_check:
        report.could_not_check = f"--strict-drift, but the target's document could not be had: {problem}"
    report.seconds = time.monotonic() - started
    return report


def read_ids(source: str) -> list[str]:
    text = sys.stdin.read() if source == "-" else Path(source).read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def parse_report_options(values: Sequence[str]) -> list[tuple[str, Path]]:
    """``--report FORMAT=FILE`` values, e.g. ``junit=check.xml``; ValueError names a bad one."""
    parsed = []
    for value in values:
        kind, separator, file = value.partition("=")
        if not separator or kind not in REPORT_FORMATS or not file:
            raise ValueError(f"--report {value}: expected {' or '.join(f'{k}=FILE' for k in REPORT_FORMATS)}")
        parsed.append((kind, Path(file)))
    return parsed


WRITERS = {"json": write_json, "junit": write_junit}


def main(args, console: Console | None = None) -> int:
    """The ``check`` command: 0 clean, 1 findings (or drift with --strict-drift), 2 could not check."""
    # Never wrapped: outside a terminal rich would break lines at 80 columns, mid-curl.
    console = console or Console(soft_wrap=True)
    try:
        reports = parse_report_options(args.report or [])
    except ValueError as exc:
        console.print(escape(str(exc)))
        return EXIT_COULD_NOT_CHECK
    token = args.token or os.environ.get("OS_SECURITY_KEY")
    if not token:
        console.print("check needs the server's bearer key: --token T (or OS_SECURITY_KEY)")
        return EXIT_COULD_NOT_CHECK
    try:
        httpx.get(args.url, timeout=10)
    except httpx.HTTPError as exc:
        console.print(f"cannot reach {escape(args.url)}: {escape(type(exc).__name__)}")
        return EXIT_COULD_NOT_CHECK
    ids = read_ids(args.ids_file) if args.ids_file else []
    spec = Path(args.spec) if args.spec else None
    kept = nullcontext(args.report_dir) if args.report_dir else tempfile.TemporaryDirectory(prefix="agentos-check-")
    with kept as workdir:
        report = check(
            args.url, token, spec=spec, ids=ids, max_examples=args.max_examples, seed=args.seed,
            workdir=Path(workdir).resolve(), target_spec=args.target_spec, strict_drift=args.strict_drift,
        )  # fmt: skip
    render(report, token, console)
    for kind, path in reports:
        WRITERS[kind](report, path, token)
        console.print(f"{kind} report: {escape(str(path))}")
    return report.exit_code
