"""One renderer for every origin of error: the contract's {detail, error_code}, nothing leaked."""

from __future__ import annotations

import asyncio
import json

import pytest
from connexion.exceptions import BadRequestProblem, OAuthProblem, ProblemException
from starlette.exceptions import HTTPException

from agentos_sessions.errors import as_api_error, render_error
from handlers.errors import FAILED_TO_DELETE, ApiError, error_code_for


class Request:
    method, url = "DELETE", type("URL", (), {"path": "/sessions/x"})()


def rendered(exc: Exception) -> tuple[int, dict, dict]:
    response = asyncio.run(render_error(Request(), exc))
    return response.status_code, json.loads(response.body), dict(response.headers or {})


@pytest.mark.parametrize("exc, status, code, detail", [
    (ApiError(404, "Session not found"), 404, "NOT_FOUND", "Session not found"),
    (BadRequestProblem(detail="'x' is not valid"), 422, "VALIDATION_ERROR", "'x' is not valid"),
    (OAuthProblem(detail="No authorization token provided"), 401, "UNAUTHENTICATED", "No authorization token provided"),
    (ProblemException(status=415, title="Unsupported Media Type"), 415, "UNSUPPORTED_MEDIA_TYPE", "Unsupported Media Type"),
    (HTTPException(405, headers={"Allow": "DELETE"}), 405, "METHOD_NOT_ALLOWED", "Method Not Allowed"),
    (HTTPException(503, detail="pool at /var/run/secret.sock exhausted"), 503, "SERVICE_UNAVAILABLE", FAILED_TO_DELETE),
    (RuntimeError("password=hunter2 in /etc/app.conf"), 500, "INTERNAL_SERVER_ERROR", FAILED_TO_DELETE),
])  # fmt: skip
def test_every_origin_of_error_leaves_in_the_contracts_shape(exc, status, code, detail):
    got_status, body, _headers = rendered(exc)
    assert (got_status, body) == (status, {"detail": detail, "error_code": code})


def test_a_401_says_how_to_authenticate_and_a_405_what_is_allowed():
    assert rendered(OAuthProblem(detail="Provided token is not valid"))[2]["WWW-Authenticate"] == "Bearer"
    assert rendered(HTTPException(405, headers={"Allow": "DELETE"}))[2]["Allow"] == "DELETE"


def test_server_errors_never_show_their_text_and_are_logged(caplog):
    _, body, _ = rendered(RuntimeError("the database password is hunter2"))
    assert "hunter2" not in json.dumps(body)
    assert "request failed: DELETE /sessions/x" in caplog.text


def test_error_codes_follow_the_spec_then_http():
    assert [error_code_for(s) for s in (400, 401, 404, 422, 500)] == [
        "BAD_REQUEST", "UNAUTHENTICATED", "NOT_FOUND", "VALIDATION_ERROR", "INTERNAL_SERVER_ERROR",
    ]  # fmt: skip
    assert error_code_for(431) == "REQUEST_HEADER_FIELDS_TOO_LARGE" and error_code_for(599) == "ERROR"
    assert as_api_error(ApiError(400, "x")).error_code == "BAD_REQUEST"
