"""The fast lane: plain delete requests answered without Connexion's generic per-request work,
which costs more CPU than SQLite spends erasing a session (``bench/README.md``).

It takes only what Connexion would certainly route to the operation and pass through
security and validation: ``DELETE <prefix>/<id>`` with an unreserved id, the operation's
own query parameters at most once each with unreserved values, exactly one
``Authorization: Bearer <key>``, no body; anything else goes through Connexion. It calls
the handler's answer function, given at install; errors go to the same renderer. The
route is compiled from the contract (one string path parameter, optional string query
parameters, no body, HTTP bearer), else there is no lane. ``tests/test_fast_lane.py``
compares the answers with and without it byte for byte.
"""

from __future__ import annotations

import inspect
import re
from typing import Any, Awaitable, Callable

from connexion.middleware import MiddlewarePosition
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from agentos_sessions.security import token_matches

Answer = Callable[..., Awaitable[Response]]

_UNRESERVED = re.compile(rb"[A-Za-z0-9_~-][A-Za-z0-9._~-]*")
_BODY_HEADERS = (b"content-type", b"transfer-encoding")
# Schema keywords that only describe a value; anything else would constrain it.
_ANNOTATIONS = {"description", "title"}
_STRING, _NULL = {"type": "string"}, {"type": "null"}


def _is_plain_string(schema: Any, *, nullable: bool) -> bool:
    """True for a schema every string satisfies (optionally also null), and nothing more."""
    if not isinstance(schema, dict):
        return False
    if schema.keys() - _ANNOTATIONS == {"type"}:
        return schema["type"] == "string"
    if nullable and schema.keys() - _ANNOTATIONS == {"anyOf"}:
        return schema["anyOf"] in ([_STRING, _NULL], [_NULL, _STRING])
    return False


class Route:
    """The delete operation's route, compiled from the contract."""

    def __init__(self, prefix: bytes, query_names: frozenset[bytes]):
        self.prefix = prefix
        self.query_names = query_names

    @classmethod
    def from_contract(cls, document: dict[str, Any], operation_id: str, answer: Answer) -> "Route | None":
        """The operation's route, or None when it asks for more than the lane checks; its
        query parameters must be ones ``answer`` takes, so a new one is never passed blindly."""
        handled = set(inspect.signature(answer).parameters) - {"storage", "session_id"}
        schemes = document.get("components", {}).get("securitySchemes", {})
        for template, path_item in document.get("paths", {}).items():
            operation = path_item.get("delete") if isinstance(path_item, dict) else None
            if not isinstance(operation, dict) or operation.get("operationId") != operation_id:
                continue
            prefix, _, last = template.rpartition("/")
            path_names = re.findall(r"\{([^}]*)\}", template)
            if "{" in prefix or len(path_names) != 1 or last != "{" + path_names[0] + "}":
                return None
            if "requestBody" in operation or "parameters" in path_item:
                return None
            query_names = set()
            for parameter in operation.get("parameters", []):
                where, name = parameter.get("in"), parameter.get("name")
                if where == "path" and name == path_names[0]:
                    if not _is_plain_string(parameter.get("schema"), nullable=False):
                        return None
                elif where == "query" and not parameter.get("required", False):
                    if name not in handled or not _is_plain_string(parameter.get("schema"), nullable=True):
                        return None
                    query_names.add(name.encode())
                else:
                    return None
            security = operation.get("security", document.get("security"))
            if not security or len(security) != 1 or len(security[0]) != 1:
                return None
            scheme = schemes.get(next(iter(security[0])), {})
            if scheme.get("type") != "http" or str(scheme.get("scheme", "")).lower() != "bearer":
                return None
            return cls((prefix + "/").encode(), frozenset(query_names))
        return None

    def match(self, scope: Scope, key: bytes) -> tuple[str, dict[str, str]] | None:
        """(session_id, query arguments) if the request is one the lane may answer."""
        if scope["method"] != "DELETE" or scope.get("root_path"):
            return None
        raw_path = scope["raw_path"]
        if not raw_path.startswith(self.prefix):
            return None
        session_id = raw_path[len(self.prefix) :]
        if not _UNRESERVED.fullmatch(session_id):
            return None
        arguments = self._query_arguments(scope.get("query_string", b""))
        if arguments is None or not _plain_bearer_request(scope["headers"], key):
            return None
        return session_id.decode(), arguments

    def _query_arguments(self, query: bytes) -> dict[str, str] | None:
        arguments: dict[str, str] = {}
        for pair in query.split(b"&") if query else ():
            name, equals, value = pair.partition(b"=")
            if not equals or name not in self.query_names or not _UNRESERVED.fullmatch(value):
                return None
            if name.decode() in arguments:
                return None
            arguments[name.decode()] = value.decode()
        return arguments


def _plain_bearer_request(headers, key: bytes) -> bool:
    authorization = None
    for name, value in headers:
        if name == b"authorization":
            if authorization is not None:
                return False
            authorization = value
        elif name in _BODY_HEADERS or (name == b"content-length" and value != b"0"):
            return False
    return authorization is not None and authorization.startswith(b"Bearer ") and token_matches(
        authorization[7:].decode("latin-1"), key.decode()
    )


def keeps_keys_plain(key: str) -> bool:
    """Connexion splits the header on spaces and reads it as latin-1; the lane compares
    bytes. For a key of visible ASCII the two agree, so only then is there a lane."""
    return re.fullmatch(r"[!-~]+", key) is not None


def install(app, document: dict[str, Any], *, operation_id: str, answer: Answer, storage, security_key: str) -> bool:
    """Add the lane in front of Connexion's routing, if the contract and key allow one."""
    route = Route.from_contract(document, operation_id, answer)
    if route is None or not keeps_keys_plain(security_key):
        return False
    app.add_middleware(
        FastLane, position=MiddlewarePosition.BEFORE_SWAGGER, route=route, answer=answer, storage=storage,
        security_key=security_key,
    )  # fmt: skip
    return True


class FastLane:
    """ASGI middleware: answers the requests ``Route.match`` accepts, passes on the rest."""

    def __init__(self, app: ASGIApp, *, route: Route, answer: Answer, storage, security_key: str) -> None:
        self.app = app
        self.route = route
        self.answer = answer
        self.storage = storage
        self.key = security_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        matched = self.route.match(scope, self.key) if scope["type"] == "http" else None
        if matched is None:
            await self.app(scope, receive, send)
            return
        session_id, arguments = matched
        response = await self.answer(self.storage, session_id, **arguments)
        await response(scope, receive, send)
