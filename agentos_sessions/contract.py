"""The OpenAPI contract: the 3.1 document as published, and the 3.0 view Connexion can load.

Connexion 3.3 validates specs against the 3.0 meta-schema and its parsers expect one
``type`` per schema, so 3.1 is refused at load or crashes at request time: Connexion
gets an equivalent 3.0.3 view derived in memory; clients always get the original.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

CONTRACT_FILENAME = "openapi.yaml"

# Schema keywords whose value is a single sub-schema, and those holding lists or maps of them.
_SUBSCHEMA_KEYWORDS = ("items", "not", "additionalProperties", "contains", "propertyNames")
_SUBSCHEMA_LIST_KEYWORDS = ("allOf", "anyOf", "oneOf", "prefixItems")
_SUBSCHEMA_MAP_KEYWORDS = ("properties", "patternProperties", "$defs", "dependentSchemas")


def contract_path() -> Path:
    """The contract shipped with the package (wheel) or beside it (source checkout)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / CONTRACT_FILENAME, here.parent / CONTRACT_FILENAME):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{CONTRACT_FILENAME} not found next to {here}")


class Contract:
    """The published document, kept byte for byte, with its parsed and 3.0 forms."""

    def __init__(self, raw: bytes):
        self.raw = raw
        self.document: dict[str, Any] = yaml.safe_load(raw)
        self.openapi30: dict[str, Any] = downgrade_to_openapi30(self.document)

    @classmethod
    def load(cls, path: Path | None = None) -> "Contract":
        return cls((path or contract_path()).read_bytes())


def downgrade_to_openapi30(document: dict[str, Any]) -> dict[str, Any]:
    """A 3.0.3 copy of a 3.1 document with the same meaning; only what 3.0 cannot say is
    rewritten (``null`` types to ``nullable``, type lists to ``anyOf``, ``const`` to
    ``enum``, ``examples`` to ``example``, numeric exclusive bounds to booleans)."""
    converted = copy.deepcopy(document)
    if str(converted.get("openapi", "")).startswith("3.1"):
        converted["openapi"] = "3.0.3"
    # 3.1-only top-level fields have no 3.0 equivalent and do not affect routing.
    for key in ("jsonSchemaDialect", "webhooks"):
        converted.pop(key, None)
    info = converted.get("info", {})
    info.pop("summary", None)
    info.get("license", {}).pop("identifier", None)
    _convert_schemas_in(converted)
    return converted


def _convert_schemas_in(node: Any) -> None:
    """Find every schema position in an OpenAPI object tree and convert it in place."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "schema" and isinstance(value, dict):
                _convert_schema(value)
            elif key == "schemas" and isinstance(value, dict):
                for schema in value.values():
                    if isinstance(schema, dict):
                        _convert_schema(schema)
            else:
                _convert_schemas_in(value)
    elif isinstance(node, list):
        for item in node:
            _convert_schemas_in(item)


def _convert_schema(schema: dict[str, Any]) -> None:
    if "$ref" in schema:
        # A 3.0 reference object may not carry siblings; 3.1 allows them.
        for key in [k for k in schema if k != "$ref"]:
            del schema[key]
        return

    # Null branches go first, before sub-schemas are rewritten out of recognition.
    for keyword in ("anyOf", "oneOf"):
        _drop_null_branches(schema, keyword)

    for keyword in _SUBSCHEMA_KEYWORDS:
        if isinstance(schema.get(keyword), dict):
            _convert_schema(schema[keyword])
    for keyword in _SUBSCHEMA_LIST_KEYWORDS:
        for sub in schema.get(keyword, []) or []:
            if isinstance(sub, dict):
                _convert_schema(sub)
    for keyword in _SUBSCHEMA_MAP_KEYWORDS:
        for sub in (schema.get(keyword) or {}).values():
            if isinstance(sub, dict):
                _convert_schema(sub)

    if isinstance(schema.get("prefixItems"), list):
        # 3.0 has one schema for all items; a tuple becomes "any of the positions".
        positions = schema.pop("prefixItems")
        schema.setdefault("items", {"anyOf": positions} if positions else {})
    for keyword in ("$defs", "dependentSchemas", "contains", "propertyNames"):
        schema.pop(keyword, None)

    _convert_type(schema)

    if "const" in schema:
        schema["enum"] = [schema.pop("const")]
    if isinstance(schema.get("examples"), list):
        examples = schema.pop("examples")
        if examples and "example" not in schema:
            schema["example"] = examples[0]
    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        value = schema.get(exclusive)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            schema[bound] = value
            schema[exclusive] = True


def _is_null_schema(schema: Any) -> bool:
    return isinstance(schema, dict) and schema.get("type") in ("null", ["null"])


def _convert_type(schema: dict[str, Any]) -> None:
    declared = schema.get("type")
    if declared == "null":
        schema.pop("type")
        schema["nullable"] = True
        schema["enum"] = [None]
        return
    if not isinstance(declared, list):
        return
    types = [t for t in declared if t != "null"]
    if len(types) < len(declared):
        schema["nullable"] = True
    if len(types) == 1:
        schema["type"] = types[0]
    else:
        del schema["type"]
        if types:
            schema["anyOf"] = [{"type": t} for t in types] + schema.get("anyOf", [])


def _drop_null_branches(schema: dict[str, Any], keyword: str) -> None:
    branches = schema.get(keyword)
    if not isinstance(branches, list) or not any(_is_null_schema(b) for b in branches):
        return
    remaining = [b for b in branches if not _is_null_schema(b)]
    schema["nullable"] = True
    if len(remaining) == 1 and "$ref" not in remaining[0] and not set(remaining[0]) & set(schema):
        # The common `anyOf: [X, null]` becomes X itself, which Connexion's parameter
        # parser needs: it reads `type` directly from a parameter's schema.
        del schema[keyword]
        schema.update(remaining[0])
    elif remaining:
        schema[keyword] = remaining
    else:
        del schema[keyword]
        schema["enum"] = [None]
