"""OpenAPI 3.1 documents hosted through ``Contract``: each JSON Schema 2020-12 keyword that
OpenAPI 3.1 allows, judged by the original schema (the differential proof of
``tests/support.py``), and requests that must never crash."""

from __future__ import annotations

import json

import pytest

from agentos_sessions.contract import Contract, InvalidContract
from tests.support import Differential, stub_client

NODE = {"type": "object", "properties": {"child": {"anyOf": [{"$ref": "#/components/schemas/Node"}, {"type": "null"}]}}}
COMPONENTS = {
    "schemas": {
        "Color": {"type": "string", "enum": ["red", "green"]},
        "Name": {"type": "string", "minLength": 1},
        "WithDefs": {"$defs": {"Small": {"type": "integer", "maximum": 3}},
                     "type": "object", "properties": {"n": {"$ref": "#/components/schemas/WithDefs/$defs/Small"}}},
        "Node": NODE,
    }
}  # fmt: skip
# One operation per keyword: its query parameter and its JSON body have that schema.
KEYWORDS = {
    "type-list": {"type": ["integer", "string"]},
    "null": {"type": ["integer", "null"]},
    "const": {"const": "x"},
    "prefixItems": {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}], "items": False},
    "defs-ref": {"$ref": "#/components/schemas/WithDefs/$defs/Small"},
    "ref-with-siblings": {"$ref": "#/components/schemas/Name", "maxLength": 3},
    "nullable-enum-ref": {"anyOf": [{"$ref": "#/components/schemas/Color"}, {"type": "null"}]},
    "patternProperties": {"type": "object", "patternProperties": {"^n": {"type": "integer"}}, "additionalProperties": False},
    "unevaluatedProperties": {"type": "object", "properties": {"a": {"type": "integer"}},
                              "allOf": [{"properties": {"b": {"type": "string"}}}], "unevaluatedProperties": False},
    "unevaluatedItems": {"type": "array", "prefixItems": [{"type": "integer"}], "unevaluatedItems": {"type": "string"}},
    "dependentRequired": {"type": "object", "dependentRequired": {"a": ["b"]}},
    "dependentSchemas": {"type": "object", "dependentSchemas": {"a": {"required": ["c"]}}},
    "if-then-else": {"type": "object", "if": {"properties": {"kind": {"const": "n"}}, "required": ["kind"]},
                     "then": {"required": ["n"]}, "else": {"required": ["s"]}},
    "content": {"type": "string", "contentMediaType": "application/json", "contentEncoding": "base64"},
    "examples": {"type": "integer", "examples": [1, 2]},
    "exclusive-bounds": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 10},
    "format": {"type": "string", "format": "date"},
    "boolean-schema": {"type": "array", "items": True, "contains": {"const": 1}},
    "recursive": {"$ref": "#/components/schemas/Node"},
}  # fmt: skip


def document(paths: dict, **extra) -> dict:
    return {"openapi": "3.1.0", "info": {"title": "t", "version": "1"}, "paths": paths, **extra}


def operation(schema, *, operation_id: str, required_body: bool = False) -> dict:
    return {
        "operationId": operation_id,
        "parameters": [{"name": "q", "in": "query", "schema": schema}],
        "requestBody": {"required": required_body, "content": {"application/json": {"schema": schema}}},
        "responses": {"204": {"description": "ok"}},
    }


def contract_of(doc: dict) -> Contract:
    return Contract(json.dumps(doc).encode())


KEYWORD_CONTRACT = contract_of(document(
    {f"/{name}": {"post": operation(schema, operation_id=name.replace("-", "_"))} for name, schema in KEYWORDS.items()},
    components=COMPONENTS,
))  # fmt: skip


def test_every_keyword_is_judged_by_its_original_schema():
    differential = Differential(KEYWORD_CONTRACT, per_operation=8).run()
    print(f"keywords: {differential.schemas} schemas, {differential.tried} instances, "
          f"{len(differential.disagreements)} disagreements")  # fmt: skip
    assert differential.disagreements == []
    assert differential.schemas == 2 * len(KEYWORDS)
    assert differential.tried > 20 * len(KEYWORDS)


@pytest.mark.parametrize(
    "path, query, body, status",
    [
        ("/type-list", "q=5", 7, 204),
        ("/type-list", "q=abc", "abc", 204),
        ("/type-list", "q=true", True, 400),
        ("/null", "q=null", None, 204),
        ("/nullable-enum-ref", "q=red", "green", 204),
        ("/nullable-enum-ref", "q=blue", "blue", 400),
        ("/defs-ref", "q=4", 4, 400),
        ("/ref-with-siblings", "q=abcd", "abcd", 400),
        ("/patternProperties", None, {"n1": 1, "n2": "x"}, 400),
        ("/unevaluatedProperties", None, {"a": 1, "b": "x", "c": 0}, 400),
        ("/dependentRequired", None, {"a": 1, "b": 2}, 204),
        ("/dependentRequired", None, {"a": 1}, 400),
        ("/if-then-else", None, {"kind": "n", "s": 1}, 400),
        ("/if-then-else", None, {"kind": "s", "s": 1}, 204),
        ("/exclusive-bounds", "q=0", 10, 400),
        ("/format", "q=2026-02-30", "2026-12-02", 400),
        ("/recursive", None, {"child": {"child": None}}, 204),
        ("/recursive", None, {"child": {"child": 5}}, 400),
    ],
)
def test_what_each_keyword_decides(path, query, body, status):
    client = stub_client(KEYWORD_CONTRACT)
    url = f"{path}?{query}" if query else path
    response = client.post(url, content=json.dumps(body), headers={"content-type": "application/json"})
    assert response.status_code == status, response.text


def test_headers_and_cookies_are_read_by_their_3_1_types():
    parameters = [{"name": "X-N", "in": "header", "schema": {"type": ["integer", "null"], "minimum": 2}},
                  {"name": "c", "in": "cookie", "schema": {"type": "array", "items": {"type": "integer"}}}]  # fmt: skip
    client = stub_client(contract_of(document({"/h": {"get": {"operationId": "h", "parameters": parameters,
                                                             "responses": {"204": {"description": "ok"}}}}})))  # fmt: skip
    assert client.get("/h", headers={"X-N": "3", "Cookie": "c=1,2"}).status_code == 204
    assert client.get("/h", headers={"X-N": "null"}).status_code == 204
    assert client.get("/h", headers={"X-N": "1"}).status_code == 400
    assert client.get("/h", headers={"Cookie": "c=1,x"}).status_code == 400


def test_parameters_that_fail_to_read_are_400_never_500():
    def get(path: str, parameters: list) -> dict:
        return {path: {"get": {"operationId": path.strip("/").split("/")[0], "parameters": parameters,
                               "responses": {"204": {"description": "ok"}}}}}  # fmt: skip

    paths = {
        **get("/i/{n}", [{"name": "n", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 3}}]),
        **get("/big", [{"name": "n", "in": "query", "schema": {"type": "integer"}}]),
        **get("/content", [{"name": "f", "in": "query", "content": {"application/json": {"schema": {
            "type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}}}]),
    }  # fmt: skip
    client = stub_client(contract_of(document(paths)))
    # A path converter hands over an int; a number past Python's digit limit is no number.
    assert client.get("/i/5").status_code == 204 and client.get("/i/1").status_code == 400
    assert client.get("/big", params={"n": "9" * 5000}).status_code == 400
    assert client.get("/big", params={"n": "12"}).status_code == 204
    # A parameter described by content is its media type's value: here a JSON text.
    assert client.get("/content", params={"f": '{"a": 1}'}).status_code == 204
    assert client.get("/content", params={"f": '{"a": "x"}'}).status_code == 400
    assert client.get("/content", params={"f": "not json"}).status_code == 400


def test_bodies_that_cannot_be_read_are_400_never_500():
    client = stub_client(KEYWORD_CONTRACT)
    for content, content_type in [(b"\xff\xfe", "application/json"), (b"{", "application/json"),
                                  (b"[" * 100_000, "application/json")]:  # fmt: skip
        response = client.post("/type-list", content=content, headers={"content-type": content_type})
        assert response.status_code == 400, (content[:10], response.text)


def test_a_missing_optional_body_is_no_body_and_a_json_null_is_judged_by_the_schema():
    form = {"type": "object", "properties": {"f": {"type": "string", "contentMediaType": "application/octet-stream"}}}
    paths = {
        "/json": {"post": operation({"type": "object"}, operation_id="json")},
        "/nullable": {"post": operation({"type": ["object", "null"]}, operation_id="nullable")},
        "/form": {"post": {"operationId": "form", "requestBody": {"content": {"multipart/form-data": {"schema": form}}},
                           "responses": {"204": {"description": "ok"}}}},
        "/required": {"post": operation({"type": "object"}, operation_id="required", required_body=True)},
    }  # fmt: skip
    client = stub_client(contract_of(document(paths)))
    # Connexion alone: 400 "Request body must not be empty", and 500 KeyError 'Content-Type'.
    assert client.post("/json").status_code == 204
    assert client.post("/form").status_code == 204
    assert client.post("/form", files={"f": (None, "x")}).status_code == 204
    assert client.post("/required").status_code == 400
    null = {"content": "null", "headers": {"content-type": "application/json"}}
    assert client.post("/json", **null).status_code == 400
    assert client.post("/nullable", **null).status_code == 204


def test_duplicate_operation_ids_each_keep_their_own_validation():
    required_q = [{"name": "q", "in": "query", "required": True, "schema": {"type": "integer"}}]
    paths = {"/a": {"get": {"operationId": "same", "parameters": required_q, "responses": {"204": {"description": "ok"}}}},
             "/b": {"get": {"operationId": "same", "responses": {"204": {"description": "ok"}}}}}  # fmt: skip
    client = stub_client(contract_of(document(paths)))
    # Connexion alone validates /a as /b (the last operation registered under that id): 204.
    assert client.get("/a").status_code == 400
    assert client.get("/b").status_code == 204
    assert client.get("/a?q=1").status_code == 204


def test_webhooks_only_and_path_items_in_components_load():
    hook = {"post": {"requestBody": {"content": {"application/json": {"schema": {"type": "integer"}}}},
                     "responses": {"200": {"description": "ok"}}}}  # fmt: skip
    webhooks_only = contract_of({"openapi": "3.1.0", "info": {"title": "t", "version": "1"}, "webhooks": {"new": hook}})
    assert stub_client(webhooks_only).get("/anything").status_code == 404
    item = {"get": {"operationId": "shared", "parameters": [{"name": "n", "in": "query", "schema": {"type": "integer"}}],
                    "responses": {"204": {"description": "ok"}}}}  # fmt: skip
    shared = contract_of(document({"/shared": {"$ref": "#/components/pathItems/Shared"}}, components={"pathItems": {"Shared": item}}))
    client = stub_client(shared)
    assert client.get("/shared?n=1").status_code == 204
    assert client.get("/shared?n=x").status_code == 400


@pytest.mark.parametrize(
    "doc, pointer",
    [
        (document({"/x": {"get": {"parameters": [{"name": "q", "in": "querry"}], "responses": {}}}}), "/paths/~1x/get/parameters/0"),
        (document({}, components={"schemas": {"S": {"type": "strin"}}}), "/components/schemas/S/type"),
        ({"openapi": "3.0.3", "info": {"title": "t", "version": "1"}, "paths": {}}, "/openapi"),
    ],
)
def test_an_invalid_document_is_refused_naming_where(doc, pointer):
    with pytest.raises(InvalidContract) as refused:
        contract_of(doc)
    assert str(refused.value).startswith(pointer), refused.value


def test_a_yaml_or_json_document_loads_from_a_path(tmp_path):
    doc = document({"/y": {"get": {"operationId": "y", "responses": {"204": {"description": "ok"}}}}})
    (tmp_path / "a.json").write_text(json.dumps(doc))
    (tmp_path / "a.yaml").write_text("openapi: 3.1.0\ninfo: {title: t, version: '1'}\npaths: {}\n")
    assert Contract.load(tmp_path / "a.json").document == doc
    assert Contract.load(tmp_path / "a.yaml").document["paths"] == {}
