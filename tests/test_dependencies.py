"""The project uses its frameworks' public APIs, and pins them no tighter than the next major."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORKS = ("uvicorn", "starlette", "connexion")


def imported_names(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield from (f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def test_no_module_imports_a_private_name_of_a_framework():
    private = [
        f"{path.relative_to(ROOT)}: {name}"
        for package in ("agentos_sessions", "handlers", "storage")
        for path in sorted((ROOT / package).glob("*.py"))
        for name in imported_names(path)
        if name.split(".")[0] in FRAMEWORKS and any(part.startswith("_") for part in name.split("."))
    ]
    assert private == []


def test_pins_allow_every_release_up_to_the_next_major():
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for name in ("uvicorn", "starlette", "SQLAlchemy", "connexion"):
        (spec,) = [d for d in dependencies if re.match(rf"{name}\b", d, re.IGNORECASE)]
        upper = re.search(r"<\s*([\d.]+)", spec)
        assert upper and re.fullmatch(r"\d+", upper.group(1)), f"{spec}: the upper bound must be a major version"
        assert "==" not in spec and "~=" not in spec, spec
