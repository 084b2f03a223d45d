"""HTTPBearer, as the contract declares it, checked against one key in constant time.

The spec's scheme names no ``x-bearerInfoFunc``, so Connexion would refuse every call;
the app adds ``verify_bearer`` to the 3.0 view it gives Connexion, never to the contract.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from connexion.exceptions import OAuthProblem

BEARER_INFO_FUNC = f"{__name__}.verify_bearer"
# Where the lifespan state keeps the key the app was built with.
STATE_KEY = "security_key"


def generate_key() -> str:
    return secrets.token_urlsafe(32)


def key_fingerprint(key: str) -> str:
    """A short, non-reversible name for a key, safe to log."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def token_matches(token: str, key: str) -> bool:
    return hmac.compare_digest(token.encode(), key.encode())


def bearer_token(headers) -> tuple[str | None, str | None]:
    """(scheme, token) from the one Authorization header, or (None, None): stricter than
    Connexion, exactly "<scheme> <token>" with one space (scheme case-insensitive, RFC 7235)."""
    values = headers.getlist("Authorization")
    if not values:
        return None, None
    if len(values) > 1:
        raise OAuthProblem(detail="Only one Authorization header is allowed")
    # Whitespace around a field value is not part of it (RFC 9112, section 5).
    parts = values[0].strip(" \t").split(" ")
    if len(parts) != 2 or not parts[1]:
        raise OAuthProblem(detail="Invalid authorization header")
    return parts[0].lower(), parts[1]


def presents_key(headers, key: str) -> bool:
    """The one Authorization header is ``Bearer <key>`` (scheme case-insensitive)."""
    scheme, token = bearer_token(headers)
    return scheme == "bearer" and token_matches(token, key)


def verify_bearer(token: str, request) -> dict | None:
    """Connexion's bearer check: the token of the one well-formed header, or 401."""
    key = getattr(request.state, STATE_KEY)
    return {"sub": key_fingerprint(key)} if presents_key(request.headers, key) else None
