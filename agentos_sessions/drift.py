"""How a target's own OpenAPI document describes ``DELETE /sessions/{session_id}``
differently from the contract: parameters, responses and their schemas, security, and
the other methods it declares on the path (which ``check`` must not blame on it)."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import yaml

from agentos_sessions.contract import parse_document

OPERATION_PATH = "/sessions/{session_id}"
METHOD = "delete"
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
DEFAULT_DOCUMENT = "/openapi.json"
# Words for people and tools, not for the wire: they never make a schema differ.
ANNOTATIONS = frozenset({"title", "description", "example", "examples", "deprecated", "externalDocs"})


@dataclass
class Difference:
    aspect: str  # "parameters", "responses", "security", "operation"
    detail: str


@dataclass
class Drift:
    source: str
    # None when the document could not be had; then ``problem`` says why.
    differences: list[Difference] | None = None
    problem: str | None = None
    # Methods the target declares on the path, upper case, DELETE included if it does.
    target_methods: list[str] = field(default_factory=list)

    @property
    def compared(self) -> bool:
        return self.differences is not None

    @property
    def differs(self) -> bool:
        return bool(self.differences)


def load_target_document(base_url: str, source: str | None, token: str) -> tuple[str, dict | None, str | None]:
    """The target's document from a URL (``/openapi.json`` of the target by default) or a
    file: (where from, the document or None, why not)."""
    if source and not source.startswith(("http://", "https://")):
        try:
            return source, _parse(Path(source).read_bytes()), None
        except (OSError, ValueError, yaml.YAMLError) as exc:
            return source, None, f"cannot read {source}: {type(exc).__name__}"
    url = source or urljoin(base_url.rstrip("/") + "/", DEFAULT_DOCUMENT.lstrip("/"))
    # The key goes only where it is already sent: the target itself.
    same_origin = urlsplit(url)[:2] == urlsplit(base_url)[:2]
    headers = {"Authorization": f"Bearer {token}"} if same_origin else {}
    try:
        response = httpx.get(url, headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        return url, None, f"cannot fetch it: {type(exc).__name__}"
    if response.status_code != 200:
        return url, None, f"the target answered {response.status_code}"
    try:
        return url, _parse(response.content), None
    except (ValueError, yaml.YAMLError):
        return url, None, "not an OpenAPI document"


def _parse(raw: bytes) -> dict:
    document = parse_document(raw)
    if not isinstance(document, dict) or "paths" not in document:
        raise ValueError("not an OpenAPI document")
    return document


def compare(contract: dict, target: dict, source: str) -> Drift:
    path_item = (target.get("paths") or {}).get(OPERATION_PATH) or {}
    drift = Drift(source, target_methods=sorted(m.upper() for m in path_item if m in HTTP_METHODS))
    operation = path_item.get(METHOD)
    if operation is None:
        drift.differences = [Difference("operation", f"the target's document has no DELETE {OPERATION_PATH}")]
        return drift
    ours = contract["paths"][OPERATION_PATH][METHOD]
    drift.differences = [
        *_parameters(Resolver(contract), _parameters_of(contract["paths"][OPERATION_PATH], ours),
                     Resolver(target), _parameters_of(path_item, operation)),
        *_responses(Resolver(contract), ours, Resolver(target), operation),
        *_security(contract, ours, target, operation),
    ]
    return drift


class Resolver:
    """A document's schemas with every local ``$ref`` replaced and annotations dropped."""

    def __init__(self, document: dict):
        self.document = document

    def resolve(self, node, seen: frozenset = frozenset()):
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/"):
                if ref in seen:  # a recursive schema: its name stands for it
                    return {"$ref": ref.rsplit("/", 1)[-1]}
                return self.resolve(self._at(ref), seen | {ref})
            return {key: self.resolve(value, seen) for key, value in node.items() if key not in ANNOTATIONS}
        if isinstance(node, list):
            return [self.resolve(item, seen) for item in node]
        return node

    def _at(self, ref: str):
        node = self.document
        for part in ref[2:].split("/"):
            node = node.get(part.replace("~1", "/").replace("~0", "~"), {}) if isinstance(node, dict) else {}
        return node


def _parameters_of(path_item: dict, operation: dict) -> list:
    """The path item's parameters, then the operation's, which override them by name and place."""
    return [*(path_item.get("parameters") or []), *(operation.get("parameters") or [])]


def _parameters(ours_doc: Resolver, ours: list, theirs_doc: Resolver, theirs: list) -> list[Difference]:
    def keyed(resolver: Resolver, parameters: list) -> dict[tuple[str, str], dict]:
        resolved = (resolver.resolve(p) for p in parameters)
        return {(p.get("in", "?"), p.get("name", "?")): p for p in resolved}

    contract, target = keyed(ours_doc, ours), keyed(theirs_doc, theirs)
    found = []
    for key in target.keys() - contract.keys():
        found.append(Difference("parameters", f"added by the target: {_name(key)} {_describe(target[key])}"))
    for key in contract.keys() - target.keys():
        found.append(Difference("parameters", f"missing from the target: {_name(key)}"))
    for key in contract.keys() & target.keys():
        if contract[key] != target[key]:
            found.append(Difference(
                "parameters", f"changed: {_name(key)} is {_describe(contract[key])} in the contract, "
                f"{_describe(target[key])} in the target",
            ))  # fmt: skip
    return sorted(found, key=lambda d: d.detail)


def _name(key: tuple[str, str]) -> str:
    return f"{key[0]} `{key[1]}`"


def _describe(parameter: dict) -> str:
    schema = parameter.get("schema")
    required = "required" if parameter.get("required") else "optional"
    return f"({required}, {_compact(schema)})"


def _compact(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _responses(ours_doc: Resolver, ours: dict, theirs_doc: Resolver, theirs: dict) -> list[Difference]:
    contract = {str(k): ours_doc.resolve(v) for k, v in (ours.get("responses") or {}).items()}
    target = {str(k): theirs_doc.resolve(v) for k, v in (theirs.get("responses") or {}).items()}
    found = []
    for status in sorted(target.keys() - contract.keys()):
        found.append(Difference("responses", f"{status} declared only by the target"))
    for status in sorted(contract.keys() - target.keys()):
        found.append(Difference("responses", f"{status} declared only by the contract"))
    # Error responses usually differ alike; one line names every status it is true of.
    alike: dict[str, list[str]] = defaultdict(list)
    for status in sorted(contract.keys() & target.keys()):
        for text in _content_differences(contract[status].get("content") or {}, target[status].get("content") or {}):
            alike[text].append(status)
    found += [Difference("responses", f"{', '.join(statuses)}: {text}") for text, statuses in alike.items()]
    return found


def _content_differences(contract: dict, target: dict) -> list[str]:
    found = [f"media type {m} only in the target" for m in sorted(target.keys() - contract.keys())]
    found += [f"media type {m} only in the contract" for m in sorted(contract.keys() - target.keys())]
    for media_type in sorted(contract.keys() & target.keys()):
        ours, theirs = contract[media_type].get("schema") or {}, target[media_type].get("schema") or {}
        if ours != theirs:
            found.append(f"{media_type} body {_schema_difference(ours, theirs)}")
    return found


def _schema_difference(ours: dict, theirs: dict) -> str:
    """Properties added, missing or changed when both are objects; else both schemas."""
    mine, yours = ours.get("properties"), theirs.get("properties")
    if not isinstance(mine, dict) or not isinstance(yours, dict):
        return f"schema differs: contract {_compact(ours)}, target {_compact(theirs)}"
    parts = []
    if only := sorted(yours.keys() - mine.keys()):
        parts.append("fields only in the target: " + ", ".join(f"`{p}`" for p in only))
    if only := sorted(mine.keys() - yours.keys()):
        parts.append("fields only in the contract: " + ", ".join(f"`{p}`" for p in only))
    if changed := sorted(p for p in mine.keys() & yours.keys() if mine[p] != yours[p]):
        parts.append("fields that differ: " + ", ".join(f"`{p}` ({_compact(mine[p])} vs {_compact(yours[p])})" for p in changed))
    if set(ours.get("required") or []) != set(theirs.get("required") or []):
        parts.append(f"required {sorted(ours.get('required') or [])} vs {sorted(theirs.get('required') or [])}")
    rest = {k: v for k, v in ours.items() if k not in ("properties", "required")}
    if rest != {k: v for k, v in theirs.items() if k not in ("properties", "required")}:
        parts.append("other keywords differ")
    return "; ".join(parts)


def _security(contract: dict, ours: dict, target: dict, theirs: dict) -> list[Difference]:
    mine, yours = _effective_security(contract, ours), _effective_security(target, theirs)
    if mine == yours:
        return []
    return [Difference("security", f"the contract requires {_requirements(mine)}, the target {_requirements(yours)}")]


def _effective_security(document: dict, operation: dict) -> list:
    """Each alternative as the schemes it needs, by what they are, not what they are called."""
    requirements = operation.get("security", document.get("security") or [])
    schemes = (document.get("components") or {}).get("securitySchemes") or {}
    resolver = Resolver(document)
    return sorted(
        sorted((_scheme(resolver.resolve(schemes.get(name, {}))), tuple(scopes)) for name, scopes in requirement.items())
        for requirement in requirements
    )


def _scheme(scheme: dict) -> str:
    kind = scheme.get("type", "an undefined scheme")
    detail = scheme.get("scheme") or scheme.get("name") or ""
    return f"{kind} {detail}".strip()


def _requirements(alternatives: list) -> str:
    if not alternatives or alternatives == [[]]:
        return "nothing"
    return " or ".join(" and ".join(scheme for scheme, _ in needs) or "nothing" for needs in alternatives)
