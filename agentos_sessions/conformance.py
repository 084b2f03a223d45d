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
    report: dict


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
) -> RunResult:
    """Run ``schemathesis run`` and return its exit code, console output and JSON report."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / CONFIG_FILENAME
    config_file.write_text(compose_config(list(disposable_ids)))
    report_file = workdir / "report.json"
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config_file), "run", str(spec or contract_path()),
        "--url", url, "--seed", str(seed), "--max-examples", str(max_examples),
        "--report", "json", "--report-json-path", str(report_file), "--no-color", *extra_args,
    ]  # fmt: skip
    env = {**os.environ, TOKEN_ENV: token}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=workdir)
    report = json.loads(report_file.read_text()) if report_file.exists() else {}
    return RunResult(done.returncode, done.stdout + done.stderr, report)
