"""One renderer for every error the service answers.

Connexion's problems, Starlette's HTTP errors, ``ApiError`` (raised by the handlers, the
fast lane and the HTTP guard) and anything unexpected leave as ``{detail, error_code}``.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from connexion.exceptions import ProblemException
from connexion.lifecycle import ConnexionRequest, ConnexionResponse
from starlette.exceptions import HTTPException

from handlers.errors import FAILED_TO_DELETE, ApiError

logger = logging.getLogger("agentos_sessions.errors")


def as_api_error(exc: Exception) -> ApiError:
    """Translate any exception into the answer it deserves, never leaking internals."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ProblemException):
        # Connexion reports malformed parameters as 400; the contract documents request
        # validation failures as 422 ValidationErrorResponse.
        status = 422 if exc.status == 400 else exc.status
        detail = exc.detail or exc.title or HTTPStatus(status).phrase
        return ApiError(status, str(detail) if status < 500 else FAILED_TO_DELETE, dict(exc.headers or {}))
    if isinstance(exc, HTTPException):
        status = exc.status_code
        detail = str(exc.detail or HTTPStatus(status).phrase) if status < 500 else FAILED_TO_DELETE
        return ApiError(status, detail, dict(exc.headers or {}))
    return ApiError(500, FAILED_TO_DELETE)


# A coroutine: Connexion runs a plain function error handler in the threadpool, a hop
# per 404 that a backlog of already-erased ids would pay for every time.
async def render_error(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    error = as_api_error(exc)
    if error.status >= 500:
        logger.error("request failed: %s %s", request.method, request.url.path, exc_info=exc)
    headers = dict(error.headers)
    if error.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return ConnexionResponse(status_code=error.status, mimetype="application/json", body=error.body(), headers=headers)


def register_error_renderer(app) -> None:
    for origin in (ApiError, ProblemException, HTTPException, Exception):
        app.add_error_handler(origin, render_error)
