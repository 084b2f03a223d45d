"""The documents cannot drift from the code: every setting documented, commands still true."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from agentos_sessions.settings import ENVIRONMENT_VARIABLES, DatabaseSettings, Settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
OPERATING = (ROOT / "docs" / "operating.md").read_text()


def commands_at_the_top() -> list[str]:
    return re.findall(r"```sh\n(.+?)\n```", README.split("\n## ", 1)[0])


def test_every_environment_variable_is_documented():
    missing = [name for name in ENVIRONMENT_VARIABLES if f"`{name}`" not in OPERATING]
    assert missing == []


def test_every_setting_and_database_key_is_documented():
    keys = [f.name for f in dataclasses.fields(Settings) if f.name != "security_key"]
    keys += [f.name for f in dataclasses.fields(DatabaseSettings)]
    missing = [key for key in keys if f"`{key}`" not in OPERATING]
    assert missing == []


def test_readme_opens_with_the_serve_and_test_commands():
    serve, test = commands_at_the_top()
    assert serve.endswith("agentos-sessions serve") and "pip install -e ." in serve
    assert test.endswith("tox")


def test_ci_runs_exactly_the_readme_test_command():
    _, test = commands_at_the_top()
    ci = (ROOT / ".ci" / "run").read_text()
    assert test in ci.splitlines()
    assert "CI=true" in ci and "AGENTOS_TEST_POSTGRES_URL" in ci
