"""The 3.0 view of a 3.1 document: what Connexion 3.3 needs to load it, route and read parameters.

Connexion validates specs against the 3.0 meta-schema and its parsers expect one ``type``
per schema, so a 3.1 document is refused at load or crashes at request time. The view is
an in-memory 3.0.3 copy with the same operations, parameters and security; it never
validates a request (the original 3.1 schemas do, ``openapi31.py``), so where 3.0 cannot
say what 3.1 says, the view keeps what Connexion reads and drops the rest.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

# Every schema position in the view carries the JSON pointer of its original 3.1 schema.
POINTER_KEY = "x-contract-pointer"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

# Schema keywords whose value is a single sub-schema, and those holding lists or maps of them.
_SUBSCHEMA_KEYWORDS = ("items", "not", "additionalProperties")
_SUBSCHEMA_LIST_KEYWORDS = ("allOf", "anyOf", "oneOf", "prefixItems")
_SUBSCHEMA_MAP_KEYWORDS = ("properties",)
# The 3.0 Schema Object's fields; any other keyword (besides x-) is refused by its meta-schema.
_OPENAPI30_SCHEMA_FIELDS = frozenset((
    "title", "multipleOf", "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum", "maxLength",
    "minLength", "pattern", "maxItems", "minItems", "uniqueItems", "maxProperties", "minProperties",
    "required", "enum", "type", "not", "allOf", "oneOf", "anyOf", "items", "properties",
    "additionalProperties", "description", "format", "default", "nullable", "discriminator", "readOnly",
    "writeOnly", "example", "externalDocs", "deprecated", "xml", "$ref",
))  # fmt: skip
# Free-form values, where a "schema" or "$ref" key is data, not a schema or reference.
_FREE_FORM = ("example", "examples")


def downgrade_to_openapi30(document: dict[str, Any], *, pointers: bool = False) -> dict[str, Any]:
    """A 3.0.3 copy of a 3.1 document with the same operations; only what 3.0 cannot say is
    rewritten (``null`` types to ``nullable``, type lists to ``anyOf``, ``const`` to
    ``enum``, ``examples`` to ``example``, numeric exclusive bounds to booleans) or dropped
    (keywords 3.0 lacks, webhooks, ``components.pathItems`` once inlined). With ``pointers``,
    each schema position also names its original in ``x-contract-pointer``."""
    converted = copy.deepcopy(document)
    if pointers:
        _tag_schema_positions(converted, "")
    if str(converted.get("openapi", "")).startswith("3.1"):
        converted["openapi"] = "3.0.3"
    # 3.1-only top-level fields have no 3.0 equivalent and do not affect routing.
    for key in ("jsonSchemaDialect", "webhooks"):
        converted.pop(key, None)
    info = converted.get("info", {})
    info.pop("summary", None)
    info.get("license", {}).pop("identifier", None)
    _inline_path_items(converted)
    _make_operation_ids_unique(converted)
    _convert_schemas_in(converted)
    _drop_dangling_refs(converted, converted, document)
    return converted


def _tag_schema_positions(node: Any, pointer: str) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _FREE_FORM or key.startswith("x-") or key == "schemas":
                continue
            here = f"{pointer}/{_escape(key)}"
            if key == "schema" and isinstance(value, dict):
                value[POINTER_KEY] = here
            elif key == "schema" and isinstance(value, bool):
                node[key] = {POINTER_KEY: here}
            else:
                _tag_schema_positions(value, here)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            _tag_schema_positions(item, f"{pointer}/{index}")


def _escape(token: Any) -> str:
    return str(token).replace("~", "~0").replace("/", "~1")


def _inline_path_items(document: dict[str, Any]) -> None:
    """3.0 has no ``components.pathItems``: a path that refers to one gets a copy of it; 3.1
    makes ``paths`` optional and ``responses`` too, 3.0 requires both."""
    path_items = document.get("components", {}).pop("pathItems", {})
    paths = document.setdefault("paths", {})
    for template, item in list(paths.items()):
        ref = item.get("$ref", "") if isinstance(item, dict) else ""
        name = ref.removeprefix("#/components/pathItems/")
        if name != ref and name in path_items:
            paths[template] = {**copy.deepcopy(path_items[name]), **{k: v for k, v in item.items() if k != "$ref"}}
        for method in METHODS:
            operation = paths[template].get(method)
            if isinstance(operation, dict) and not operation.get("responses"):
                operation["responses"] = {"default": {"description": "Not described"}}


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for template, item in (document.get("paths") or {}).items():
        for method in METHODS:
            if isinstance(item, dict) and isinstance(item.get(method), dict):
                yield template, method, item[method]


def _make_operation_ids_unique(document: dict[str, Any]) -> None:
    """Connexion keys operations by id, so a duplicate would be validated as the first
    operation of that id: the second becomes ``<id>_2`` (its handler's name too)."""
    seen: set[str] = set()
    for _template, _method, operation in operations(document):
        operation_id = operation.get("operationId")
        if operation_id is None:
            continue
        unique, n = operation_id, 1
        while unique in seen:
            n += 1
            unique = f"{operation_id}_{n}"
        operation["operationId"] = unique
        seen.add(unique)


def parameters(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every parameter object: those of path items, operations and components."""
    lists = [item.get("parameters") for item in (document.get("paths") or {}).values() if isinstance(item, dict)]
    lists += [operation.get("parameters") for _t, _m, operation in operations(document)]
    lists.append(list((document.get("components", {}).get("parameters") or {}).values()))
    for listed in lists:
        yield from (p for p in listed or [] if isinstance(p, dict) and "$ref" not in p)


def _convert_schemas_in(node: Any) -> None:
    """Find every schema position in an OpenAPI object tree and convert it in place."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _FREE_FORM or key.startswith("x-"):
                continue
            if key == "schema" and isinstance(value, (dict, bool)):
                node[key] = _convert_subschema(value)
            elif key == "schemas" and isinstance(value, dict):
                for name, schema in value.items():
                    value[name] = _convert_subschema(schema)
            else:
                _convert_schemas_in(value)
    elif isinstance(node, list):
        for item in node:
            _convert_schemas_in(item)


def _convert_subschema(schema: Any) -> Any:
    """3.1 allows a boolean anywhere a schema goes; 3.0 only for additionalProperties."""
    if schema is True:
        return {}
    if schema is False:
        return {"not": {}}
    if isinstance(schema, dict):
        _convert_schema(schema)
    return schema


def _convert_schema(schema: dict[str, Any]) -> None:
    if "$ref" in schema:
        # A 3.0 reference object may not carry siblings; 3.1 allows them.
        for key in [k for k in schema if k != "$ref" and not k.startswith("x-")]:
            del schema[key]
        return

    # Null branches go first, before sub-schemas are rewritten out of recognition.
    for keyword in ("anyOf", "oneOf"):
        _drop_null_branches(schema, keyword)

    for keyword in _SUBSCHEMA_KEYWORDS:
        value = schema.get(keyword)
        if isinstance(value, dict) or (isinstance(value, bool) and keyword != "additionalProperties"):
            schema[keyword] = _convert_subschema(value)
    for keyword in _SUBSCHEMA_LIST_KEYWORDS:
        if isinstance(schema.get(keyword), list):
            schema[keyword] = [_convert_subschema(sub) for sub in schema[keyword]]
    for keyword in _SUBSCHEMA_MAP_KEYWORDS:
        if isinstance(schema.get(keyword), dict):
            schema[keyword] = {name: _convert_subschema(sub) for name, sub in schema[keyword].items()}

    if isinstance(schema.get("prefixItems"), list):
        # 3.0 has one schema for all items; a tuple becomes "any of the positions".
        positions = schema.pop("prefixItems")
        schema.setdefault("items", {"anyOf": positions} if positions else {})

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
    if "contentMediaType" in schema and schema.get("type") == "string":
        # How 3.0 says "a file": Connexion then hands form uploads over as files.
        schema.setdefault("format", "binary")
    if schema.get("required") == []:
        del schema["required"]  # 3.0 wants at least one name
    for key in [k for k in schema if k not in _OPENAPI30_SCHEMA_FIELDS and not k.startswith("x-")]:
        del schema[key]


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
    if len(remaining) == 1 and isinstance(remaining[0], dict) and "$ref" not in remaining[0] and not set(remaining[0]) & set(schema):
        # The common `anyOf: [X, null]` becomes X itself, which Connexion's parameter
        # parser needs: it reads `type` directly from a parameter's schema.
        del schema[keyword]
        schema.update(remaining[0])
    elif remaining:
        schema[keyword] = remaining
    else:
        del schema[keyword]
        schema["enum"] = [None]


def _drop_dangling_refs(node: Any, view: dict[str, Any], original: dict[str, Any]) -> None:
    """A reference into what the view dropped (``$defs``, ``pathItems``) becomes "anything":
    Connexion would fail to resolve it at load, and the 3.1 schema validates anyway."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and not _resolves(view, ref) and _resolves(original, ref):
            del node["$ref"]
        for key, value in node.items():
            if key not in _FREE_FORM:
                _drop_dangling_refs(value, view, original)
    elif isinstance(node, list):
        for item in node:
            _drop_dangling_refs(item, view, original)


def _resolves(view: dict[str, Any], ref: str) -> bool:
    # As Connexion resolves local references: plain path segments, no unescaping.
    if not ref.startswith("#/"):
        return False
    target: Any = view
    for segment in ref[2:].split("/"):
        if not isinstance(target, dict) or segment not in target:
            return False
        target = target[segment]
    return True
