"""The drift comparison: what a target's own document says differently about
DELETE /sessions/{session_id}, in words a reader can act on, and nothing when it agrees."""

from __future__ import annotations

import copy
import json

import yaml

from agentos_sessions.contract import contract_path
from agentos_sessions.drift import OPERATION_PATH, compare, load_target_document

CONTRACT = yaml.safe_load(contract_path().read_bytes())


def target(change) -> dict:
    document = copy.deepcopy(CONTRACT)
    change(document, document["paths"][OPERATION_PATH]["delete"])
    return document


def details(document: dict) -> list[str]:
    return [f"{d.aspect}: {d.detail}" for d in compare(CONTRACT, document, "t").differences]


def test_the_contract_against_itself_has_no_drift_even_with_other_words():
    def reworded(document, operation):
        operation["description"] = "Something else"
        operation["parameters"][0]["description"] = "another description"
        document["components"]["schemas"]["NotFoundResponse"]["title"] = "Renamed"

    drift = compare(CONTRACT, target(reworded), "t")
    assert drift.compared and drift.differences == [] and drift.target_methods == ["DELETE"]


def test_parameters_added_missing_and_changed():
    def change(document, operation):
        parameters = operation["parameters"]
        parameters.append({"name": "user_id", "in": "query", "schema": {"type": "string"}})
        parameters[:] = [p for p in parameters if p["name"] != "table"]
        next(p for p in parameters if p["name"] == "db_id")["required"] = True

    found = details(target(change))
    assert 'parameters: added by the target: query `user_id` (optional, {"type":"string"})' in found
    assert "parameters: missing from the target: query `table`" in found
    assert any(d.startswith("parameters: changed: query `db_id` is (optional,") and "(required," in d for d in found)


def test_error_schemas_name_their_fields_and_alike_statuses_share_a_line():
    def agentos_errors(document, operation):
        for name in ("BadRequestResponse", "NotFoundResponse"):
            properties = document["components"]["schemas"][name]["properties"]
            properties["error_id"] = properties.pop("error_code")
        del operation["responses"]["500"]
        operation["responses"]["409"] = {"description": "Conflict"}

    found = details(target(agentos_errors))
    assert "responses: 400, 404: application/json body fields only in the target: `error_id`; " \
           "fields only in the contract: `error_code`" in found  # fmt: skip
    assert "responses: 409 declared only by the target" in found
    assert "responses: 500 declared only by the contract" in found


def test_security_and_other_methods_on_the_path():
    def open_and_multi(document, operation):
        operation["security"] = []
        document["paths"][OPERATION_PATH]["patch"] = {"responses": {"200": {"description": "ok"}}}

    drift = compare(CONTRACT, target(open_and_multi), "t")
    assert [d.aspect for d in drift.differences] == ["security"]
    assert drift.differences[0].detail == "the contract requires http bearer, the target nothing"
    assert drift.target_methods == ["DELETE", "PATCH"]


def test_a_document_without_the_operation_says_so():
    document = {"openapi": "3.1.0", "paths": {OPERATION_PATH: {"get": {}}}}
    drift = compare(CONTRACT, document, "t")
    assert [d.detail for d in drift.differences] == [f"the target's document has no DELETE {OPERATION_PATH}"]
    assert drift.target_methods == ["GET"]


def test_a_recursive_schema_is_compared_without_looping():
    def recursive(document, operation):
        schemas = document["components"]["schemas"]
        schemas["NotFoundResponse"]["properties"]["cause"] = {"$ref": "#/components/schemas/NotFoundResponse"}

    assert any("`cause`" in d for d in details(target(recursive)))


def test_the_target_document_from_a_file_or_why_not(tmp_path):
    json_file = tmp_path / "openapi.json"
    json_file.write_text(json.dumps(CONTRACT))
    source, document, problem = load_target_document("http://h", str(json_file), "key")
    assert (source, document, problem) == (str(json_file), CONTRACT, None)
    not_openapi = tmp_path / "x.json"
    not_openapi.write_text("[1, 2]")
    assert load_target_document("http://h", str(not_openapi), "key")[2] == f"cannot read {not_openapi}: ValueError"
    assert load_target_document("http://h", str(tmp_path / "missing.json"), "key")[1] is None


def test_parameters_declared_on_the_path_item_count_as_the_operations():
    def moved_up(document, operation):
        path_level = [p for p in operation["parameters"] if p["in"] == "path"]
        operation["parameters"] = [p for p in operation["parameters"] if p["in"] != "path"]
        document["paths"][OPERATION_PATH]["parameters"] = path_level

    assert details(target(moved_up)) == []


def test_a_json_document_is_read_as_json_escapes_and_tabs_included(tmp_path):
    document = target(lambda _document, operation: operation.update(summary="Delete \U0001f600"))
    json_file = tmp_path / "openapi.json"
    # Tab indentation and a surrogate-pair escape: valid JSON, but not YAML that reads alike.
    json_file.write_text(json.dumps(document, indent="\t"))
    assert load_target_document("http://h", str(json_file), "key")[1] == document
