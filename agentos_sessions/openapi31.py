"""Requests judged by the original OpenAPI 3.1 schemas, with JSON Schema 2020-12 semantics.

Connexion routes by the 3.0 view (``openapi30_view.py``); through its public extension
points (``validator_map`` and ``uri_parser_class``) every parameter, body and response is
read and validated here by jsonschema's ``Draft202012Validator`` on the schema the view's
``x-contract-pointer`` names, compiled once when the contract loads. A parameter's strings
are read as the first JSON value its schema accepts: the string itself, then arrays of
its parts, then the JSON literal it spells (``5``, ``true``, ``null``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

from connexion.datastructures import MediaTypeDict
from connexion.exceptions import BadRequestProblem
from connexion.uri_parsing import OpenAPIURIParser
from connexion.validators import (
    FormDataValidator,
    JSONRequestBodyValidator,
    JSONResponseBodyValidator,
    MultiPartFormDataValidator,
    ParameterValidator,
    TextResponseBodyValidator,
)
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from openapi_spec_validator import OpenAPIV31SpecValidator
from openapi_spec_validator.validation.exceptions import DuplicateOperationIDError
from referencing import Registry
from referencing.jsonschema import DRAFT202012
from starlette.datastructures import Headers
from starlette.formparsers import MultiPartException

from agentos_sessions.openapi30_view import POINTER_KEY, _escape, parameters

BASE_URI = "urn:contract"
ALL_TYPES = frozenset({"null", "boolean", "object", "array", "number", "integer", "string"})
FORM_MEDIA_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
_JSON_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_LITERALS = {"true": True, "false": False, "null": None}
_NOT_A_LITERAL = object()
# What a request without a body parses to, so a JSON ``null`` body is judged by the schema.
NO_BODY = object()
_DELIMITERS = {"spaceDelimited": " ", "pipeDelimited": "|"}
_DEFAULT_STYLES = {"query": "form", "cookie": "form", "path": "simple", "header": "simple"}


class InvalidContract(ValueError):
    """The document is not valid OpenAPI 3.1; the message starts with the JSON pointer."""


def check_document(document: Any) -> None:
    if not isinstance(document, dict) or not str(document.get("openapi", "")).startswith("3.1"):
        raise InvalidContract("/openapi: an OpenAPI 3.1 document is required")
    for error in OpenAPIV31SpecValidator(document).iter_errors():
        # The only rule the view enforces itself: it gives duplicates distinct ids.
        if not isinstance(error, DuplicateOperationIDError):
            raise InvalidContract(f"{_locate(document, list(error.absolute_path), error.instance)}: {error.message}")


def _locate(document: dict, path: list, instance: Any) -> str:
    """The JSON pointer of an error. A schema's errors come with paths inside that schema,
    so the schema holding ``instance`` at that path is looked for."""
    roots = [[]] if path and path[0] in document else list(_schema_positions(document, []))
    found = next((root for root in roots if _at(document, root + path) == instance), [])
    return "".join("/" + _escape(t) for t in found + path) or "/"


def _at(node: Any, tokens: list) -> Any:
    for token in tokens:
        try:
            node = node[int(token)] if isinstance(node, list) else node[token]
        except (KeyError, IndexError, TypeError, ValueError):
            return _NOT_A_LITERAL
    return node


def _schema_positions(node: Any, path: list) -> Iterator[list]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "schema" or path[-2:] == ["components", "schemas"]:
                yield [*path, key]
            elif not key.startswith("x-") and key not in ("example", "examples"):
                yield from _schema_positions(value, [*path, key])
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _schema_positions(item, [*path, index])


# Marks, in the view, a parameter whose value is a JSON text (``content: application/json``).
JSON_CONTENT = "x-contract-json-content"


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return "integer"
    return {float: "number", str: "string", list: "array", dict: "object"}.get(type(value), "object")


def json_literal(text: Any) -> Any:
    if not isinstance(text, str):
        return _NOT_A_LITERAL  # already typed, by a path converter
    if text in _LITERALS:
        return _LITERALS[text]
    if _JSON_NUMBER.fullmatch(text):
        try:
            number = int(text) if text.lstrip("-").isdigit() else float(text)
        except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
            return _NOT_A_LITERAL
        return number if math.isfinite(number) else _NOT_A_LITERAL
    return _NOT_A_LITERAL


class Reader:
    """One parameter's schema: reads its strings as a JSON value, and validates values."""

    def __init__(self, validator: Draft202012Validator, types: frozenset[str]):
        self.validator = validator
        self.types = types

    def read(self, values: list, definition: dict, location: str) -> tuple[Any, bool]:
        """(the value, whether the schema accepts it); if none is accepted, the reading to
        report, so the error names what was sent."""
        if len(values) > 1 and "array" not in self.types:
            return list(values), False  # a repeated value that is not an array is refused as the list
        fallback = _NOT_A_LITERAL
        for candidate in self._candidates(values, definition, location):
            if json_type(candidate) in self.types:
                if self.validator.is_valid(candidate):
                    return candidate, True
                if fallback is _NOT_A_LITERAL:
                    fallback = candidate
        return (values[-1] if fallback is _NOT_A_LITERAL else fallback), False

    def _candidates(self, values: list, definition: dict, location: str) -> Iterator[Any]:
        last = values[-1]
        if isinstance(last, dict):  # a deepObject, as Connexion assembled it
            yield last
            yield {k: _literal_or_text(v) for k, v in last.items()}
            return
        yield last
        if "array" in self.types:
            style = definition.get("style", _DEFAULT_STYLES.get(location, "form"))
            # A cookie cannot repeat: only a query (or a form field) explodes into occurrences.
            if style == "form" and definition.get("explode", True) and location == "query":
                parts = list(values)
            else:
                parts = last.split(_DELIMITERS.get(style, ","))
            yield parts
            yield [_literal_or_text(part) for part in parts]
        literal = json_literal(last)
        if literal is not _NOT_A_LITERAL:
            yield literal
        if definition.get(JSON_CONTENT) and isinstance(last, str):
            try:
                yield json.loads(last)
            except ValueError:
                pass

    def error(self, value: Any) -> str | None:
        error = best_match(self.validator.iter_errors(value))
        if error is None:
            return None
        where = "".join(f"[{p!r}]" for p in error.absolute_path)
        return f"{error.message}{' at ' + where if where else ''}"


def _literal_or_text(text: Any) -> Any:
    literal = json_literal(text) if isinstance(text, str) else _NOT_A_LITERAL
    return text if literal is _NOT_A_LITERAL else literal


class CompiledSchemas:
    """Every schema position of a document (the pointers the view names), compiled once."""

    ANYTHING = Reader(Draft202012Validator({}), ALL_TYPES)

    def __init__(self, document: dict[str, Any], pointers: list[str]):
        # Local references made absolute, so each schema compiles as itself, with no
        # reference to look up per request, and still resolves what it refers to.
        self.document = _absolute_refs(document)
        self.registry = Registry().with_resource(BASE_URI, DRAFT202012.create_resource(self.document))
        self.resolver = self.registry.resolver()
        self.readers = {pointer: self._reader(pointer) for pointer in pointers}
        # A form body's fields, each read by its own property schema.
        self.form_fields = {pointer: self._field_readers(pointer) for pointer in pointers if "/content/" in pointer}

    def _reader(self, pointer: str) -> Reader:
        schema = _at(self.document, _tokens(pointer))
        validator = Draft202012Validator(schema, registry=self.registry, format_checker=Draft202012Validator.FORMAT_CHECKER)
        return Reader(validator, self._types(schema, self.resolver, 0))

    def _types(self, schema: Any, resolver, depth: int) -> frozenset[str]:
        """The JSON types a schema can accept, from ``type``, ``const``, ``enum``, the
        applicators and references (all types where it does not say)."""
        if schema is False:
            return frozenset()
        if not isinstance(schema, dict) or depth > 32:
            return ALL_TYPES
        declared = schema.get("type", ALL_TYPES)
        types = frozenset([declared] if isinstance(declared, str) else declared)
        if "number" in types:
            types |= {"integer"}
        if "const" in schema:
            types &= {json_type(schema["const"])}
        if isinstance(schema.get("enum"), list):
            types &= {json_type(value) for value in schema["enum"]}
        for keyword in ("anyOf", "oneOf"):
            if isinstance(schema.get(keyword), list):
                types &= frozenset().union(*(self._types(s, resolver, depth + 1) for s in schema[keyword]))
        for sub in schema.get("allOf", []) if isinstance(schema.get("allOf"), list) else []:
            types &= self._types(sub, resolver, depth + 1)
        if isinstance(schema.get("$ref"), str):
            resolved = resolver.lookup(schema["$ref"])
            types &= self._types(resolved.contents, resolved.resolver, depth + 1)
        return types

    def _field_readers(self, pointer: str) -> dict[str, Reader]:
        """The readers of a body's top-level properties, following a ``$ref`` body to its target."""
        media_type = _tokens(pointer)[-2]
        if media_type.split(";")[0].strip().lower() not in FORM_MEDIA_TYPES:
            return {}
        target = _at(self.document, _tokens(pointer))
        for _ in range(8):
            ref = target.get("$ref") if isinstance(target, dict) else None
            if not (isinstance(ref, str) and ref.startswith(f"{BASE_URI}#/")):
                break
            pointer = unquote(ref.split("#", 1)[1])
            target = _at(self.document, _tokens(pointer))
        properties = target.get("properties", {}) if isinstance(target, dict) else {}
        return {name: self._reader(f"{pointer}/properties/{_escape(name)}") for name in properties}

    def reader_for(self, schema: dict | None) -> Reader:
        return self.readers.get((schema or {}).get(POINTER_KEY), self.ANYTHING)


def _tokens(pointer: str) -> list[str]:
    return [token.replace("~1", "/").replace("~0", "~") for token in pointer.split("/")[1:]]


def _absolute_refs(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: f"{BASE_URI}{v}" if k == "$ref" and isinstance(v, str) and v.startswith("#") else _absolute_refs(v)
                for k, v in node.items()}  # fmt: skip
    if isinstance(node, list):
        return [_absolute_refs(item) for item in node]
    return node


def validator_map(schemas: CompiledSchemas) -> dict:
    """Connexion's ``validator_map`` and ``uri_parser_class`` for a document's schemas."""
    bound = {"schemas": schemas}
    return {
        "validator_map": {
            "parameter": type("Parameters31", (Parameters31,), bound),
            "body": MediaTypeDict(
                {
                    "*/*json": type("JSONBody31", (JSONBody31,), bound),
                    "application/x-www-form-urlencoded": type("FormBody31", (FormBody31,), bound),
                    "multipart/form-data": type("MultiPartBody31", (MultiPartBody31,), bound),
                }
            ),
            "response": MediaTypeDict(
                {
                    "*/*json": type("JSONResponse31", (JSONResponse31,), bound),
                    "text/plain": type("TextResponse31", (TextResponse31,), bound),
                }
            ),
        },
        "uri_parser_class": type("URIParser31", (URIParser31,), bound),
    }


class URIParser31(OpenAPIURIParser):
    """Query, path and form values read by their 3.1 schemas, never by a 3.0 ``type``.
    Connexion hands the same parser to the parameter validator, which then need not
    validate again what a reading already found valid."""

    schemas: CompiledSchemas

    def __init__(self, param_defns, body_defn):
        super().__init__(param_defns, body_defn)
        self.accepted: set[tuple[str, str]] = set()

    def resolve_params(self, params, _in):
        resolved = {}
        for name, values in params.items():
            definition = self.param_defns.get(name)
            values = [values] if _in == "path" else values
            if definition is None:
                resolved[name] = values if _in != "path" else values[-1]
                continue
            resolved[name], valid = self.schemas.reader_for(definition.get("schema")).read(values, definition, _in)
            if valid:
                self.accepted.add((_in, name))
        return resolved

    def resolve_form(self, form_data):
        fields = self.schemas.form_fields.get((self._body_schema or {}).get(POINTER_KEY), {})
        resolved = {}
        for name, values in form_data.items():
            encoding = self._body_encoding.get(name, {})
            reader = fields.get(name)
            if reader is None:
                resolved[name] = values[-1] if len(values) == 1 else values
            else:
                resolved[name] = reader.read(values, encoding, "query")[0]
        return resolved


class Parameters31(ParameterValidator):
    schemas: CompiledSchemas

    def validate_query_parameter(self, param, request):
        # A query value read as null is there, not missing.
        if param["name"] in request.query_params:
            return self._error("query", request.query_params[param["name"]], param)
        return self.validate_parameter("query", None, param)

    def validate_parameter(self, parameter_type, value, param, _param_name=None):
        if value is None:
            return f"Missing {parameter_type} parameter '{param['name']}'" if param.get("required") else None
        if parameter_type in ("header", "cookie"):
            value, valid = self.schemas.reader_for(param.get("schema")).read([value], param, parameter_type)
            return None if valid else self._error(parameter_type, value, param)
        return self._error(parameter_type, value, param)

    def _error(self, location: str, value, param) -> str | None:
        if (location, param["name"]) in self.uri_parser.accepted:
            return None
        return self.schemas.reader_for(param.get("schema")).error(value)


async def _read_all(stream) -> bytes:
    return b"".join([chunk async for chunk in stream])


async def _replay(body: bytes):
    yield body


class Body31:
    """The body's schema decides, a missing optional body is no body, and a body that cannot
    be decoded or parsed is a 400, never a crash."""

    schemas: CompiledSchemas

    def _validate(self, body):
        if body is NO_BODY:
            return
        try:
            error = self.schemas.reader_for(self._schema).error(body)
        except RecursionError:
            error = "The body is nested too deeply"
        if error:
            raise BadRequestProblem(detail=error)


class JSONBody31(Body31, JSONRequestBodyValidator):
    async def _parse(self, stream, scope):
        body = await _read_all(stream)
        if not body:
            return NO_BODY
        try:
            return json.loads(body.decode(self._encoding))
        except (ValueError, LookupError, RecursionError) as exc:
            raise BadRequestProblem(detail=f"The body is not JSON: {exc}") from None


class FormBody31(Body31, FormDataValidator):
    async def _parse(self, stream, scope):
        body = await _read_all(stream)
        if not body:
            return NO_BODY
        if "content-type" not in Headers(scope=scope):
            raise BadRequestProblem(detail="A form body needs a Content-Type header")
        try:
            return await super()._parse(_replay(body), scope)
        except (MultiPartException, ValueError, KeyError) as exc:
            raise BadRequestProblem(detail=f"The form cannot be read: {exc}") from None

    def _validate(self, body):
        # The schema alone decides, as for JSON: fields it does not name are refused only by
        # its additionalProperties, never by strict_validation (which the 3.1 keywords say better).
        if body is not NO_BODY and not isinstance(body, dict):
            raise BadRequestProblem("Parsed body must be a mapping")
        return super()._validate(body)


class MultiPartBody31(FormBody31, MultiPartFormDataValidator):
    pass


class JSONResponse31(JSONResponseBodyValidator):
    schemas: CompiledSchemas

    @property
    def validator(self):
        return self.schemas.reader_for(self._schema).validator


class TextResponse31(JSONResponse31, TextResponseBodyValidator):
    pass


def give_parameters_a_type(view: dict[str, Any], schemas: CompiledSchemas) -> None:
    """Connexion's argument passing reads ``schema["type"]`` (and ``items["type"]``) of every
    parameter; where the 3.1 schema has no single type, the view names the one it can. A
    parameter described by ``content`` is given its media type's schema (read as JSON if
    the media type is), as Connexion knows only ``schema``."""
    for parameter in parameters(view):
        if isinstance(parameter.get("content"), dict) and "schema" not in parameter:
            media_type, media = next(iter(parameter.pop("content").items()), ("", {}))
            parameter["schema"] = (media or {}).get("schema", {})
            parameter[JSON_CONTENT] = media_type.split(";")[0].strip().endswith(("/json", "+json"))
        schema = parameter.get("schema")
        if not isinstance(schema, dict):
            continue
        if "type" not in schema:
            types = schemas.reader_for(schema).types
            if "null" in types:
                schema["nullable"] = True
            candidates = sorted(types - {"null", "integer"} if "number" in types else types - {"null"})
            schema["type"] = candidates[0] if len(candidates) == 1 else "string"
        if schema["type"] == "array" and "type" not in (schema.get("items") or {}):
            schema["items"] = {"type": "string"}
