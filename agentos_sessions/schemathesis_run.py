"""Running ``schemathesis run`` as this project's contract suite: the shared
``schemathesis.toml`` plus disposable session ids, and its results as structured
reports (the JSON run report and the NDJSON events), never its console text. Used by
``agentos-sessions check`` and the live contract tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

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
    report: dict  # schemathesis's JSON run report, {} if it wrote none
    # Where its reports were written: the NDJSON events, and any format asked for.
    report_dir: Path | None = None

    def events(self) -> Iterator[dict]:
        yield from read_events(self.report_dir / "events.ndjson") if self.report_dir else ()


def run_schemathesis(
    url: str, token: str, workdir: Path, *, disposable_ids: list[str] = (), spec: Path | None = None,
    max_examples: int = 100, seed: int = 1, extra_args: list[str] = (), timeout: float = 900,
    on_event: Callable[[dict], None] | None = None,
) -> RunResult:  # fmt: skip
    """Run ``schemathesis run``: its exit code, console output and JSON run report;
    ``on_event`` receives each NDJSON event while it runs, for a progress display."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / CONFIG_FILENAME
    config_file.write_text(compose_config(list(disposable_ids)))
    report_dir = workdir / "reports"
    report_file, events_file = report_dir / "report.json", report_dir / "events.ndjson"
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config_file), "run", str(spec or contract_path()),
        "--url", url, "--seed", str(seed), "--max-examples", str(max_examples),
        "--report", "json,ndjson", "--report-dir", str(report_dir),
        "--report-json-path", str(report_file), "--report-ndjson-path", str(events_file), "--no-color", *extra_args,
    ]  # fmt: skip
    env = {**os.environ, TOKEN_ENV: token}
    with subprocess.Popen(
        command, env=env, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        # The console output is kept only to show when schemathesis could not run at all.
        output: list[str] = []
        reader = threading.Thread(target=lambda: output.extend(process.stdout), daemon=True)
        reader.start()
        follower = EventFollower(events_file, on_event)
        deadline = time.monotonic() + timeout
        while process.poll() is None:
            if time.monotonic() > deadline:
                # Past the bound the run is stopped, not waited for.
                process.kill()
                process.wait()
                reader.join(timeout=10)
                raise subprocess.TimeoutExpired(command, timeout, output="".join(output))
            follower.poll()
            time.sleep(0.1)
        reader.join(timeout=30)
        follower.poll()
    report = json.loads(report_file.read_text()) if report_file.exists() else {}
    return RunResult(process.returncode, "".join(output), report, report_dir)


def read_events(path: Path) -> Iterator[dict]:
    """Schemathesis's NDJSON events, each ``{EventName: payload}``; a torn last line is skipped."""
    if not path.exists():
        return
    with path.open() as lines:
        for line in lines:
            try:
                yield json.loads(line)
            except ValueError:
                continue


class EventFollower:
    """Hands each complete new NDJSON line to ``on_event`` as the file grows."""

    def __init__(self, path: Path, on_event: Callable[[dict], None] | None):
        self.path, self.on_event, self.offset = path, on_event, 0

    def poll(self) -> None:
        if self.on_event is None or not self.path.exists():
            return
        with self.path.open("rb") as stream:
            stream.seek(self.offset)
            chunk = stream.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        for line in complete.splitlines():
            try:
                self.on_event(json.loads(line))
            except ValueError:
                continue
