"""The 3.1 → 3.0 view Connexion loads, and the original that clients get."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from connexion import AsyncApp

from agentos_sessions.contract import Contract, contract_path, downgrade_to_openapi30

SEED = Path(__file__).resolve().parents[2] / "shared" / "seed" / "openapi.yaml"


def walk(node):
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


def operations(document):
    return {
        (path, method, op.get("operationId"))
        for path, item in document["paths"].items()
        for method, op in item.items()
        if isinstance(op, dict)
    }


def test_contract_is_the_seed_byte_for_byte():
    if not SEED.exists():
        pytest.skip(f"seed spec not found at {SEED}")
    assert contract_path().read_bytes() == SEED.read_bytes()


def test_seed_view_has_no_null_types_and_the_same_operations():
    contract = Contract.load()
    view = downgrade_to_openapi30(contract.document)
    assert view["openapi"] == "3.0.3"
    assert not any(isinstance(n, dict) and n.get("type") in ("null", ["null"]) for n in walk(view))
    assert not any(isinstance(n, dict) and isinstance(n.get("type"), list) for n in walk(view))
    assert operations(view) == operations(contract.document) == {("/sessions/{session_id}", "delete", "delete_session")}
    params = {p["name"]: p["schema"] for p in view["paths"]["/sessions/{session_id}"]["delete"]["parameters"]}
    assert params["db_id"]["type"] == "string" and params["db_id"]["nullable"] is True
    assert params["table"]["title"] == "Table"
    error_code = view["components"]["schemas"]["NotFoundResponse"]["properties"]["error_code"]
    assert error_code == {"type": "string", "nullable": True, "title": "Error Code",
                          "description": "Error code for categorization"}  # fmt: skip


def test_connexion_accepts_the_view_and_rejects_the_original():
    contract = Contract.load()
    AsyncApp(__name__).add_api(downgrade_to_openapi30(contract.document), resolver_error=501)
    with pytest.raises(Exception, match="3.1.0"):
        AsyncApp(__name__).add_api(copy.deepcopy(contract.document), resolver_error=501)


def test_original_document_is_never_modified():
    contract = Contract.load()
    before = json.dumps(contract.document, sort_keys=True)
    downgrade_to_openapi30(contract.document)
    assert json.dumps(contract.document, sort_keys=True) == before
    assert contract.raw == contract_path().read_bytes()


def convert_schema(schema: dict) -> dict:
    document = {"openapi": "3.1.0", "info": {"title": "t", "version": "1"}, "paths": {},
                "components": {"schemas": {"S": schema}}}  # fmt: skip
    return downgrade_to_openapi30(document)["components"]["schemas"]["S"]


@pytest.mark.parametrize(
    "schema, expected",
    [
        ({"type": ["string", "null"]}, {"type": "string", "nullable": True}),
        ({"type": ["null", "integer"], "minimum": 1}, {"type": "integer", "nullable": True, "minimum": 1}),
        ({"type": ["string", "integer"]}, {"anyOf": [{"type": "string"}, {"type": "integer"}]}),
        ({"type": ["string", "integer", "null"]},
         {"nullable": True, "anyOf": [{"type": "string"}, {"type": "integer"}]}),
        ({"type": "null"}, {"nullable": True, "enum": [None]}),
        ({"anyOf": [{"type": "string"}, {"type": "null"}], "title": "T"}, {"type": "string", "nullable": True, "title": "T"}),
        ({"oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/X"}]},
         {"nullable": True, "oneOf": [{"$ref": "#/components/schemas/X"}]}),
        ({"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]},
         {"nullable": True, "anyOf": [{"type": "string"}, {"type": "integer"}]}),
        ({"const": "x"}, {"enum": ["x"]}),
        ({"type": "integer", "exclusiveMinimum": 0}, {"type": "integer", "minimum": 0, "exclusiveMinimum": True}),
        ({"type": "string", "examples": ["a", "b"]}, {"type": "string", "example": "a"}),
        ({"$ref": "#/components/schemas/X", "description": "3.1 allows siblings"}, {"$ref": "#/components/schemas/X"}),
    ],
)
def test_schema_conversions(schema, expected):
    assert convert_schema(schema) == expected


def test_nested_schemas_are_converted_everywhere():
    converted = convert_schema({
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"type": ["string", "null"]}},
            "meta": {"type": "object", "additionalProperties": {"anyOf": [{"type": "integer"}, {"type": "null"}]}},
            "type": {"type": ["boolean", "null"]},
        },
        "allOf": [{"properties": {"x": {"type": ["number", "null"]}}}],
    })  # fmt: skip
    assert converted["properties"]["tags"]["items"] == {"type": "string", "nullable": True}
    assert converted["properties"]["meta"]["additionalProperties"] == {"type": "integer", "nullable": True}
    # A property that happens to be called "type" is a schema, not a keyword.
    assert converted["properties"]["type"] == {"type": "boolean", "nullable": True}
    assert converted["allOf"][0]["properties"]["x"] == {"type": "number", "nullable": True}


def test_schemas_in_parameters_bodies_and_headers_are_converted():
    nullable = {"type": ["string", "null"]}
    document = {
        "openapi": "3.1.0",
        "info": {"title": "t", "version": "1", "summary": "3.1 only"},
        "webhooks": {"w": {}},
        "paths": {"/x": {"post": {
            "parameters": [{"name": "q", "in": "query", "schema": dict(nullable)}],
            "requestBody": {"content": {"application/json": {"schema": dict(nullable)}}},
            "responses": {"200": {"description": "ok",
                                  "headers": {"H": {"schema": dict(nullable)}},
                                  "content": {"application/json": {"schema": dict(nullable)}}}},
        }}},
    }  # fmt: skip
    view = downgrade_to_openapi30(document)
    operation = view["paths"]["/x"]["post"]
    expected = {"type": "string", "nullable": True}
    assert operation["parameters"][0]["schema"] == expected
    assert operation["requestBody"]["content"]["application/json"]["schema"] == expected
    assert operation["responses"]["200"]["headers"]["H"]["schema"] == expected
    assert operation["responses"]["200"]["content"]["application/json"]["schema"] == expected
    assert "webhooks" not in view and "summary" not in view["info"]


def test_what_3_0_cannot_say_is_dropped_and_what_connexion_reads_is_kept():
    converted = convert_schema({
        "type": "object",
        "properties": {"file": {"type": "string", "contentMediaType": "application/octet-stream"},
                       "n": {"$ref": "#/components/schemas/S/$defs/N"}, "any": True, "none": False},
        "$defs": {"N": {"type": "integer"}}, "patternProperties": {"^x": {}}, "unevaluatedProperties": False,
        "dependentRequired": {"a": ["b"]}, "if": {}, "then": {}, "else": {}, "required": [],
    })  # fmt: skip
    assert converted == {"type": "object", "properties": {
        "file": {"type": "string", "format": "binary"}, "n": {}, "any": {}, "none": {"not": {}}}}  # fmt: skip


def test_duplicate_operation_ids_become_distinct_and_path_items_are_inlined():
    item = {"get": {"operationId": "same", "responses": {"200": {"description": "ok"}}}}
    document = {"openapi": "3.1.0", "info": {"title": "t", "version": "1"},
                "paths": {"/a": copy.deepcopy(item), "/b": {"$ref": "#/components/pathItems/B"}},
                "components": {"pathItems": {"B": item}}}  # fmt: skip
    view = downgrade_to_openapi30(document)
    assert view["paths"]["/a"]["get"]["operationId"] == "same"
    assert view["paths"]["/b"]["get"]["operationId"] == "same_2"
    assert "pathItems" not in view["components"]
    AsyncApp(__name__).add_api(view, resolver_error=501)
