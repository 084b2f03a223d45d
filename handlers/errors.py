"""The one error type: an answer the service chose to give, in the contract's shape.

The contract documents errors as ``application/json`` bodies ``{detail, error_code}``;
``agentos_sessions.errors`` renders every error, whatever raised it, through this.
"""

from __future__ import annotations

import json
from http import HTTPStatus

# error_code values named by the spec's examples, and the same style for statuses the
# spec does not list but HTTP still needs (405 for a wrong method, ...).
ERROR_CODES = {400: "BAD_REQUEST", 401: "UNAUTHENTICATED", 404: "NOT_FOUND", 422: "VALIDATION_ERROR",
               500: "INTERNAL_SERVER_ERROR"}  # fmt: skip

FAILED_TO_DELETE = "Failed to delete session"


def error_code_for(status: int) -> str:
    if status in ERROR_CODES:
        return ERROR_CODES[status]
    try:
        return HTTPStatus(status).name
    except ValueError:
        return "ERROR"


class ApiError(Exception):
    """Status, the spec's error_code for it, and a detail that is safe to show."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.error_code = error_code_for(status)
        self.headers = headers or {}

    def body(self) -> bytes:
        return json.dumps({"detail": self.detail, "error_code": self.error_code}).encode()
