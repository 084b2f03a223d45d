"""One error type and one renderer for every error the service answers.

The contract documents errors as ``application/json`` bodies ``{detail, error_code}``.
Connexion's own problems (401, 400, 404, 405, 415, ...), Starlette's HTTP errors, our
own ``ApiError`` and anything unexpected all leave through ``render_error``.
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus

from connexion.exceptions import ProblemException
from connexion.lifecycle import ConnexionRequest, ConnexionResponse
from starlette.exceptions import HTTPException
from starlette.responses import Response

logger = logging.getLogger("agentos_sessions.errors")

# error_code values named by the spec's examples, and the same style for statuses the
# spec does not list but HTTP still needs (405 for a wrong method, ...).
ERROR_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHENTICATED",
    404: "NOT_FOUND",
    422: "VALIDATION_ERROR",
    500: "INTERNAL_SERVER_ERROR",
}

FAILED_TO_DELETE = "Failed to delete session"


def error_code_for(status: int) -> str:
    if status in ERROR_CODES:
        return ERROR_CODES[status]
    try:
        return HTTPStatus(status).name
    except ValueError:
        return "ERROR"


class ApiError(Exception):
    """An answer the service chose to give: status, spec error_code and a safe detail."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.error_code = error_code_for(status)
        self.headers = headers or {}


def as_api_error(exc: Exception) -> ApiError:
    """Translate any exception into the answer it deserves, never leaking internals."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ProblemException):
        status = exc.status
        if status == 400:
            # Connexion reports malformed parameters as 400; the contract documents
            # request validation failures as 422 ValidationErrorResponse.
            status = 422
        detail = exc.detail or exc.title or HTTPStatus(status).phrase
        if status >= 500:
            detail = FAILED_TO_DELETE
        return ApiError(status, str(detail), dict(exc.headers or {}))
    if isinstance(exc, HTTPException):
        status = exc.status_code
        detail = exc.detail if status < 500 else FAILED_TO_DELETE
        return ApiError(status, str(detail or HTTPStatus(status).phrase), dict(exc.headers or {}))
    return ApiError(500, FAILED_TO_DELETE)


def error_body(error: ApiError) -> bytes:
    return json.dumps({"detail": error.detail, "error_code": error.error_code}).encode()


def _answer(exc: Exception, method: str, path: str) -> tuple[ApiError, dict[str, str]]:
    error = as_api_error(exc)
    if error.status >= 500:
        logger.error("request failed: %s %s", method, path, exc_info=exc)
    headers = dict(error.headers)
    if error.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return error, headers


# A coroutine: Connexion runs a plain function error handler in the threadpool, a hop
# per 404 that a backlog of already-erased ids would pay for every time.
async def render_error(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    error, headers = _answer(exc, request.method, request.url.path)
    return ConnexionResponse(
        status_code=error.status,
        mimetype="application/json",
        content_type="application/json",
        body=error_body(error),
        headers=headers,
    )


def error_response(exc: Exception, method: str, path: str) -> Response:
    """The same answer as ``render_error``, for code that runs outside Connexion's stack."""
    error, headers = _answer(exc, method, path)
    return Response(error_body(error), status_code=error.status, media_type="application/json", headers=headers)


def register_error_renderer(app) -> None:
    for origin in (ApiError, ProblemException, HTTPException, Exception):
        app.add_error_handler(origin, render_error)
