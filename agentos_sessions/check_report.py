"""What ``agentos-sessions check`` found, and its three forms: for people (rich), for CI
(JSON and JUnit XML). The key never appears in any of them."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from agentos_sessions.drift import Drift

TOKEN_PLACEHOLDER = "$TOKEN"
SCENARIO = "scenario: delete → 204, delete again → 404, no key → 401"
NOT_EXERCISED = "erase not exercised: pass --ids-file with disposable session ids"
EXIT_CLEAN, EXIT_FINDINGS, EXIT_COULD_NOT_CHECK = 0, 1, 2


@dataclass
class Finding:
    check: str  # "ST101 Server error", or the scenario
    detail: str
    curl: str | None = None
    method: str = "DELETE"
    status: int | None = None
    cases: int = 1
    source: str = "scenario"  # the schemathesis check's name (e.g. not_a_server_error), or the scenario


@dataclass
class Explained:
    """A schemathesis failure the target's own document accounts for, so not a finding."""

    check: str
    method: str
    reason: str


@dataclass
class CheckReport:
    url: str
    spec: Path
    seed: int
    max_examples: int
    declared: dict[str, str]
    strict_drift: bool = False
    findings: list[Finding] = field(default_factory=list)
    explained: list[Explained] = field(default_factory=list)
    # Statuses of DELETE /sessions/{session_id}, and of probes with other methods.
    observed: Counter = field(default_factory=Counter)
    other_methods: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    scenario: str = "skipped"
    scenario_detail: str = NOT_EXERCISED
    generated: int = 0
    checks_run: set[str] = field(default_factory=set)  # schemathesis's check names
    phases: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    schemathesis_version: str | None = None
    schemathesis_exit: int | None = None
    could_not_check: str | None = None  # why, when nothing could be judged
    drift: Drift | None = None
    seconds: float = 0.0

    @property
    def erase_exercised(self) -> bool:
        return self.scenario != "skipped"

    @property
    def strict_drift_failed(self) -> bool:
        return self.strict_drift and self.drift is not None and self.drift.differs

    @property
    def exit_code(self) -> int:
        if self.could_not_check:
            return EXIT_COULD_NOT_CHECK
        return EXIT_FINDINGS if self.findings or self.strict_drift_failed else EXIT_CLEAN

    @property
    def verdict(self) -> str:
        if self.could_not_check:
            return "could_not_check"
        if self.exit_code:
            return "not_clean"
        return "clean" if self.erase_exercised else "erase_not_exercised"

    def by_check(self) -> dict[str, list[Finding]]:
        grouped: dict[str, list[Finding]] = defaultdict(list)
        for finding in self.findings:
            grouped[finding.check].append(finding)
        return dict(grouped)


class Redactor:
    """Defence in depth: nothing reported should hold the key, but if it does, it goes.
    A very short key would also match inside ordinary words, so it is left alone."""

    def __init__(self, token: str):
        self.token = token if token and len(token) >= 8 else None

    def __call__(self, text: str) -> str:
        return text.replace(self.token, TOKEN_PLACEHOLDER) if self.token else text


def render(report: CheckReport, token: str, console: Console) -> None:
    redact = Redactor(token)

    def say(text: str = "", **options) -> None:
        console.print(escape(redact(text)), **options)

    console.print(f"[bold]agentos-sessions check[/] {escape(redact(report.url))} against {escape(str(report.spec))}")
    phases = ", ".join(f"{name} {state}" for name, state in report.phases.items()) or "none ran"
    say(f"schemathesis {report.schemathesis_version or '?'}: {report.generated} cases, seed {report.seed}, "
        f"max examples {report.max_examples}; phases: {phases}")  # fmt: skip
    say(f"{SCENARIO}: {report.scenario}" + (f": {report.scenario_detail}" if report.scenario_detail else ""))
    for note in report.notes:
        console.print(f"[dim]note: {escape(redact(note))}[/]")

    grouped = report.by_check()
    console.print()
    console.print(f"[bold]Findings by check[/] ({len(report.findings)} in {len(grouped)} checks)")
    if not grouped:
        console.print("  none")
    for check_name, findings in grouped.items():
        cases = sum(f.cases for f in findings)
        console.print(f"[red]✗ {escape(check_name)}[/] — {cases} case{'s' if cases != 1 else ''}")
        say(f"    {findings[0].detail}")
        reproduce = next((f.curl for f in findings if f.curl), None)
        if reproduce:
            say(f"    {reproduce}")
    for item in report.explained:
        say(f"  not counted: {item.check} on {item.method}: {item.reason}")

    console.print()
    table = Table(title="Responses the contract declares for DELETE /sessions/{session_id}", title_justify="left")
    for column in ("status", "description", "observed"):
        table.add_column(column)
    for status, description in report.declared.items():
        seen = report.observed.get(status, 0)
        table.add_row(status, escape(description), f"[green]yes[/] ({seen})" if seen else "[yellow]not observed[/]")
    console.print(table)
    undeclared = {s: n for s, n in sorted(report.observed.items()) if s not in report.declared}
    if undeclared:
        say("Also answered to DELETE, not declared: " + ", ".join(f"{s} ({n})" for s, n in undeclared.items()))
    if report.other_methods:
        say("Probes of other methods (not counted above): " + "; ".join(
            f"{method} " + ", ".join(f"{s} ({n})" for s, n in sorted(statuses.items()))
            for method, statuses in sorted(report.other_methods.items())
        ))  # fmt: skip

    _render_drift(report, say, console)
    console.print()
    console.print(_verdict_line(report))


def _render_drift(report: CheckReport, say, console: Console) -> None:
    drift = report.drift
    if drift is None:
        return
    console.print()
    weight = "counts as findings (--strict-drift)" if report.strict_drift else "informative"
    console.print(f"[bold]Drift[/] from the target's own document ({escape(drift.source)}; {weight})")
    if not drift.compared:
        say(f"  not compared: {drift.problem}")
        return
    if not drift.differences:
        console.print("  none: it describes DELETE /sessions/{session_id} as the contract does")
    for difference in drift.differences:
        say(f"  {difference.aspect}: {difference.detail}")
    others = [m for m in drift.target_methods if m != "DELETE"]
    if others:
        affected = ", ".join(f"{e.check.split()[0]} on {e.method}" for e in report.explained) or "no finding"
        say(f"  methods: the target also declares {', '.join(others)} on this path, the contract only DELETE; "
            f"probes of those reach the target's own operations, so they are not unexpected methods "
            f"(this affects: {affected})")  # fmt: skip


def _verdict_line(report: CheckReport) -> str:
    code = report.exit_code
    if report.could_not_check:
        return f"[bold red]COULD NOT CHECK[/]: {escape(report.could_not_check)} (exit {code})"
    reasons = []
    if report.findings:
        reasons.append(f"{len(report.findings)} finding{'s' if len(report.findings) != 1 else ''}")
    if report.strict_drift_failed:
        reasons.append(f"{len(report.drift.differences)} drift differences (--strict-drift)")
    if not report.erase_exercised:
        reasons.append(NOT_EXERCISED)
    if code:
        return f"[bold red]NOT CLEAN[/]: {'; '.join(reasons)} (exit {code})"
    if not report.erase_exercised:
        return f"[bold yellow]NO FINDINGS, {NOT_EXERCISED}[/] (exit {code})"
    return f"[bold green]CLEAN[/]: no findings (exit {code})"


def as_json(report: CheckReport) -> dict:
    drift = report.drift
    return {
        "verdict": report.verdict,
        "exit_code": report.exit_code,
        "could_not_check": report.could_not_check,
        "url": report.url,
        "contract": str(report.spec),
        "seed": report.seed,
        "max_examples": report.max_examples,
        "seconds": round(report.seconds, 2),
        "erase_exercised": report.erase_exercised,
        "scenario": {"status": report.scenario, "detail": report.scenario_detail},
        "schemathesis": {"version": report.schemathesis_version, "exit_code": report.schemathesis_exit,
                         "cases": report.generated, "phases": report.phases},
        "findings": [
            {"check": f.check, "detail": f.detail, "method": f.method, "status": f.status, "cases": f.cases, "curl": f.curl}
            for f in report.findings
        ],
        "explained": [{"check": e.check, "method": e.method, "reason": e.reason} for e in report.explained],
        "responses": {
            "declared": {status: report.observed.get(status, 0) for status in report.declared},
            "undeclared": {s: n for s, n in sorted(report.observed.items()) if s not in report.declared},
            "other_methods": {m: dict(sorted(c.items())) for m, c in sorted(report.other_methods.items())},
        },
        "drift": None if drift is None else {
            "source": drift.source,
            "compared": drift.compared,
            "problem": drift.problem,
            "strict": report.strict_drift,
            "target_methods": drift.target_methods,
            "differences": [{"aspect": d.aspect, "detail": d.detail} for d in drift.differences or []],
        },
        "notes": report.notes,
    }


def write_json(report: CheckReport, path: Path, token: str) -> None:
    path.write_text(Redactor(token)(json.dumps(as_json(report), indent=2, ensure_ascii=False)) + "\n")


def write_junit(report: CheckReport, path: Path, token: str) -> None:
    """One test case per thing judged: the scenario, each check that found something,
    the rest of schemathesis's run, and the drift."""
    root = ElementTree.Element("testsuites")
    suite = ElementTree.SubElement(root, "testsuite", name="agentos-sessions check", time=f"{report.seconds:.2f}")

    def case(name: str, *, failure: str | None = None, skipped: str | None = None, out: str | None = None) -> None:
        element = ElementTree.SubElement(suite, "testcase", classname="agentos-sessions check", name=name)
        if failure is not None:
            ElementTree.SubElement(element, "failure", message=failure.splitlines()[0][:200]).text = failure
        if skipped is not None:
            ElementTree.SubElement(element, "skipped", message=skipped)
        if out:
            ElementTree.SubElement(element, "system-out").text = out

    if report.could_not_check:
        case("check", failure=report.could_not_check)
    grouped = report.by_check()
    scenario = grouped.pop(SCENARIO, None)
    if scenario:
        case(SCENARIO, failure="\n".join(f"{f.detail}\n{f.curl or ''}" for f in scenario))
    else:
        case(SCENARIO, skipped=NOT_EXERCISED if not report.erase_exercised else None)
    by_source: dict[str, list[Finding]] = defaultdict(list)
    for findings in grouped.values():
        for finding in findings:
            by_source[finding.source].append(finding)
    for name in sorted(report.checks_run | by_source.keys()):
        failed = by_source.get(name)
        text = "\n\n".join(f"{f.check} ({f.method}): {f.detail}\n{f.curl or ''}".strip() for f in failed or [])
        case(f"schemathesis {name}", failure=text or None)
    if report.explained:
        case("not counted: explained by the target's document",
             out="\n".join(f"{e.check} on {e.method}: {e.reason}" for e in report.explained))  # fmt: skip
    drift = report.drift
    if drift is not None:
        text = "\n".join(f"{d.aspect}: {d.detail}" for d in drift.differences or []) or drift.problem or "none"
        if report.strict_drift_failed:
            case("drift from the target's own document", failure=text)
        else:
            case("drift from the target's own document", out=text)
    suite.set("tests", str(len(suite)))
    suite.set("failures", str(sum(1 for c in suite if c.find("failure") is not None)))
    suite.set("skipped", str(sum(1 for c in suite if c.find("skipped") is not None)))
    document = ElementTree.tostring(root, encoding="unicode")
    path.write_text('<?xml version="1.0" encoding="utf-8"?>\n' + Redactor(token)(document) + "\n")
