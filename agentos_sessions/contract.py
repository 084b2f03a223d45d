"""The OpenAPI contract: any 3.1 document as published, hosted by Connexion 3.3.

``Contract(raw)`` (or ``Contract.load(path)``, JSON or YAML) checks the document with
openapi-spec-validator's 3.1 validator, derives the 3.0 view Connexion can load
(``openapi30_view.py``) and compiles every schema for 2020-12 validation
(``openapi31.py``); ``contract.add_api(app, **kwargs)`` hands both to Connexion's
``add_api``. Clients always get the original document.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml
from starlette.requests import Request
from starlette.responses import Response

from agentos_sessions.openapi30_view import POINTER_KEY, downgrade_to_openapi30
from agentos_sessions.openapi31 import (
    CompiledSchemas,
    InvalidContract,
    check_document,
    give_parameters_a_type,
    validator_map,
)

__all__ = ["Contract", "InvalidContract", "contract_path", "downgrade_to_openapi30"]

CONTRACT_FILENAME = "openapi.yaml"


def is_json(raw: bytes) -> bool:
    return raw.lstrip()[:1] == b"{"


def parse_document(raw: bytes) -> Any:
    """An OpenAPI document's text, JSON or YAML: JSON is YAML too, but not every JSON
    string escape is a YAML one, so JSON is read as JSON."""
    return json.loads(raw) if is_json(raw) else yaml.safe_load(raw)


def contract_path() -> Path:
    """The contract shipped with the package (wheel) or beside it (source checkout)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / CONTRACT_FILENAME, here.parent / CONTRACT_FILENAME):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{CONTRACT_FILENAME} not found next to {here}")


class Contract:
    """The published document, kept byte for byte, parsed, and compiled for Connexion."""

    def __init__(self, raw: bytes):
        self.raw = raw
        try:
            self.document: dict[str, Any] = parse_document(raw)
        except (ValueError, yaml.YAMLError) as exc:
            raise InvalidContract(f"/: not JSON or YAML: {exc}") from None
        check_document(self.document)
        self._view = downgrade_to_openapi30(self.document, pointers=True)
        self._schemas = CompiledSchemas(self.document, list(_pointers(self._view)))
        give_parameters_a_type(self._view, self._schemas)

    @classmethod
    def load(cls, path: Path | str | None = None) -> Contract:
        return cls(Path(path or contract_path()).read_bytes())

    def add_api(self, app, *, bearer_info_func: str | None = None, **kwargs):
        """Connexion's ``add_api`` on the 3.0 view, with the 3.1 validators (a ``validator_map``
        given here overrides them per kind); ``bearer_info_func`` (a dotted name) checks the
        tokens of every HTTP bearer scheme, which a published document never names."""
        view = copy.deepcopy(self._view)
        for scheme in view.get("components", {}).get("securitySchemes", {}).values():
            if bearer_info_func and scheme.get("type") == "http" and str(scheme.get("scheme", "")).lower() == "bearer":
                scheme["x-bearerInfoFunc"] = bearer_info_func
        wiring = validator_map(self._schemas)
        wiring["validator_map"].update(kwargs.pop("validator_map", None) or {})
        wiring.update(kwargs)
        return app.add_api(view, **wiring)

    def add_document_routes(self, app) -> None:
        """``GET /openapi.json`` and ``/openapi.yaml``: the original, never the view."""
        as_json = json.dumps(self.document, indent=2).encode()
        as_yaml = yaml.safe_dump(self.document, sort_keys=False).encode() if is_json(self.raw) else self.raw

        def openapi_json(_request: Request) -> Response:
            return Response(as_json, media_type="application/json")

        def openapi_yaml(_request: Request) -> Response:
            return Response(as_yaml, media_type="application/yaml")

        app.add_url_rule("/openapi.json", "openapi_json", openapi_json, methods=["GET"])
        app.add_url_rule("/openapi.yaml", "openapi_yaml", openapi_yaml, methods=["GET"])


def _pointers(node: Any):
    if isinstance(node, dict):
        if isinstance(node.get(POINTER_KEY), str):
            yield node[POINTER_KEY]
        for value in node.values():
            yield from _pointers(value)
    elif isinstance(node, list):
        for item in node:
            yield from _pointers(item)
