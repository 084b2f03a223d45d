"""The corpus of real OpenAPI 3.1 documents hosted through ``Contract``: AgentOS 3.1.10's
full document, generated here from the installed agno, and a FastAPI app of ours with the
``Optional``/``Union`` shapes FastAPI emits. For each, the differential proof of
``tests/support.py``; for AgentOS, a schemathesis run against the example's stub-backed app."""

# The shapes are written as FastAPI users write them, Optional and Union included.
# ruff: noqa: UP007, UP045

from __future__ import annotations

import json
from enum import Enum
from typing import Annotated, Literal, Optional, Union

import pytest
import schemathesis
from fastapi import Body, FastAPI, Query
from pydantic import BaseModel, Field
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    negative_data_rejection,
    positive_data_acceptance,
)

from agentos_sessions.contract import Contract
from tests.support import (
    FORM,
    Differential,
    agentos_openapi,
    collect,
    load_example,
    serialize_query,
    stub_client,
)

SCHEMATHESIS_CASES = 3  # per operation and mode: 131 operations, positive and negative


class Kind(str, Enum):
    A = "a"
    B = "b"


class Cat(BaseModel):
    pet: Literal["cat"]
    lives: int = Field(ge=0, le=9)


class Dog(BaseModel):
    pet: Literal["dog"]
    good: bool


class Node(BaseModel):
    value: int
    next: Optional[Node] = None


class Shapes(BaseModel):
    model: Optional[Cat] = None
    kind: Optional[Kind] = None
    pet: Optional[Annotated[Union[Cat, Dog], Field(discriminator="pet")]] = None
    either: Union[str, int, None] = None
    node: Optional[Node] = None


def fastapi_document() -> dict:
    app = FastAPI()

    @app.post("/shapes")
    def shapes(body: Shapes, kind: Optional[Kind] = None, either: Union[int, str, None] = None,
               tags: Annotated[Optional[list[str]], Query()] = None, limit: Annotated[int, Query(ge=1, le=10)] = 5):  # fmt: skip
        return None

    @app.post("/optional-body")
    def optional_body(cat: Annotated[Optional[Cat], Body()] = None):
        return None

    @app.get("/items/{item_id}")
    def item(item_id: int, q: Union[str, None] = None):
        return None

    return app.openapi()


@pytest.fixture(scope="module")
def agentos(tmp_path_factory) -> Contract:
    return Contract(json.dumps(agentos_openapi(tmp_path_factory.mktemp("agno"))).encode())


def test_agentos_document_is_judged_by_its_original_schemas(agentos):
    operations = sum(1 for item in agentos.document["paths"].values() for method in item if method != "parameters")
    assert operations == 131 and len(agentos.document["components"]["schemas"]) == 176
    differential = Differential(agentos, per_operation=4).run()
    print(f"AgentOS: {operations} operations, {differential.schemas} parameter and body schemas, "
          f"{differential.tried} instances, {len(differential.disagreements)} disagreements, "
          f"skipped: {differential.skipped}")  # fmt: skip
    assert differential.disagreements == []
    assert differential.tried > 1000


def test_agentos_sessions_filters_answer_instead_of_crashing(agentos):
    # Connexion alone: 500 KeyError('type') for each (an anyOf of an enum $ref and null).
    client = stub_client(agentos)
    assert client.get("/sessions?type=agent").status_code == 204
    assert client.get("/sessions?sort_order=asc").status_code == 204
    assert client.get("/sessions?type=robot").status_code == 400
    # AgentOS gives two operations the id get_config: each keeps its own parameters.
    assert client.get("/config").status_code == 204
    assert client.get("/components/c/configs/1").status_code == 204
    # An integer path parameter routes by Starlette's int converter: not a number, no route.
    assert client.get("/components/c/configs/x").status_code == 404


def test_fastapi_shapes_are_judged_by_their_original_schemas():
    contract = Contract(json.dumps(fastapi_document()).encode())
    differential = Differential(contract, per_operation=20).run()
    print(f"FastAPI: {differential.schemas} schemas, {differential.tried} instances, "
          f"{len(differential.disagreements)} disagreements")  # fmt: skip
    assert differential.disagreements == []
    client = stub_client(contract)
    nulls = {"model": None, "kind": None, "pet": None, "either": None, "node": {"value": 1, "next": None}}
    assert client.post("/shapes", json=nulls).status_code == 204
    assert client.post("/shapes", json={"pet": {"pet": "dog", "good": True}, "either": 3}).status_code == 204
    assert client.post("/shapes", json={"pet": {"pet": "dog", "lives": 3}}).status_code == 400
    assert client.post("/optional-body").status_code == 204
    assert client.post("/optional-body", json=None).status_code == 204
    assert client.get("/items/3?q=null").status_code == 204
    assert client.get("/items/x").status_code == 404


def test_schemathesis_finds_nothing_in_the_stub_backed_agentos_app(monkeypatch):
    example = load_example()
    monkeypatch.setenv(example.KEY_ENV, "corpus-key")
    app = example.create_app(stub_status=200)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=SchemathesisConfig())
    checks = [not_a_server_error, positive_data_acceptance, negative_data_rejection]
    findings, calls, unsendable, without_cases = [], 0, 0, []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                cases = collect(operation.as_strategy(generation_mode=mode), SCHEMATHESIS_CASES)
            except Exception:  # noqa: BLE001 - no negative case exists for an operation without inputs
                without_cases.append(f"{operation.label} {mode.value}")
                continue
            for case in cases:
                negative = {location.value for location, info in case.meta.components.items() if info.mode == GenerationMode.NEGATIVE}
                if not all(serialize_query(value) for value in (case.query or {}).values()):
                    unsendable += 1  # an object in a query string: sent as some other, valid, string
                    continue
                if "body" in negative and case.media_type in (FORM, "multipart/form-data"):
                    # A form carries strings: a field of the wrong type arrives as a string its
                    # schema may accept. The differential test judges forms by their readings.
                    unsendable += 1
                    continue
                calls += 1
                # The key replaces the generated token, unless the headers are the negative part.
                headers = None if "header" in negative else {"Authorization": "Bearer corpus-key"}
                response = case.call(headers=headers)
                try:
                    case.validate_response(response, checks=checks)
                except Exception as failure:  # noqa: BLE001 - each finding is reported
                    findings.append(f"{operation.label} {mode.value}: {failure}")
    print(f"schemathesis: {calls} calls, {unsendable} cases whose serialization is valid or impossible, "
          f"{len(findings)} findings; no cases for {without_cases}")  # fmt: skip
    assert calls > 500
    assert findings == []
