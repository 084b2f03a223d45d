"""HTTPBearer, as the contract declares it, checked against one key in constant time.

The spec's ``HTTPBearer`` scheme carries no ``x-bearerInfoFunc``, so Connexion would
drop it and refuse every call. Instead of editing the contract, each app gets a
bearer handler bound to its own key through Connexion's ``security_map``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from connexion.exceptions import OAuthProblem
from connexion.security import BearerSecurityHandler


def generate_key() -> str:
    return secrets.token_urlsafe(32)


def key_fingerprint(key: str) -> str:
    """A short, non-reversible name for a key, safe to log."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def token_matches(token: str, key: str) -> bool:
    return hmac.compare_digest(token.encode(), key.encode())


def bearer_token(request) -> tuple[str | None, str | None]:
    """(scheme, token) from the one Authorization header, or (None, None) without one.

    Stricter than Connexion's default: one header, exactly "Bearer <token>" (scheme
    case-insensitive, per RFC 7235), no spaces inside the token.
    """
    values = request.headers.getlist("Authorization")
    if not values:
        return None, None
    if len(values) > 1:
        raise OAuthProblem(detail="Only one Authorization header is allowed")
    # Whitespace around a field value is not part of it (RFC 9112, section 5); uvicorn's
    # httptools parser keeps trailing whitespace, so it is dropped here.
    parts = values[0].strip(" \t").split(" ")
    if len(parts) != 2 or not parts[1]:
        raise OAuthProblem(detail="Invalid authorization header")
    return parts[0].lower(), parts[1]


def bearer_handler_for(key: str) -> type[BearerSecurityHandler]:
    def verify_bearer(token: str) -> dict | None:
        if token_matches(token, key):
            return {"sub": key_fingerprint(key)}
        return None

    class KeyBearerHandler(BearerSecurityHandler):
        def _resolve_func(self, security_scheme):
            return verify_bearer

        get_auth_header_value = staticmethod(bearer_token)

    return KeyBearerHandler
