"""Running schemathesis against a live server with the project's contract configuration.

Shared by the live contract test and the ``check`` command, so both judge a server by
the same rules: the published openapi.yaml, every check on, ``schemathesis.toml``
as the only place where a check is tuned.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

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
    url: str,
    token: str,
    workdir: Path,
    *,
    disposable_ids: list[str] = (),
    spec: Path | None = None,
    max_examples: int = 100,
    seed: int = 1,
    extra_args: list[str] = (),
    timeout: float = 900,
    reports: Sequence[str] = (),
    on_line: Callable[[str], None] | None = None,
) -> RunResult:
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
    env = {**os.environ, TOKEN_ENV: token}
    if on_line is None:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=workdir)
        returncode, output = done.returncode, done.stdout + done.stderr
    else:
        returncode, output = _streamed(command, env, workdir, timeout, on_line)
    report = json.loads(report_file.read_text()) if report_file.exists() else {}
    return RunResult(returncode, output, report, report_dir)


def _streamed(command: list[str], env: dict, cwd: Path, timeout: float, on_line: Callable[[str], None]):
    lines: list[str] = []
    # Piped, Python would hold the output back until exit; progress needs it line by line.
    env = {**env, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(
        command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as process:
        timed_out = threading.Event()

        def stop() -> None:
            timed_out.set()
            process.kill()

        # The same bound as the captured run: past it, the run is stopped, not waited for.
        deadline = threading.Timer(timeout, stop)
        deadline.start()
        try:
            for line in process.stdout:
                lines.append(line)
                on_line(line.rstrip("\n"))
        finally:
            deadline.cancel()
        process.wait()
    if timed_out.is_set():
        raise subprocess.TimeoutExpired(command, timeout, output="".join(lines))
    return process.returncode, "".join(lines)
