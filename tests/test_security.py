"""HTTPBearer against one key: the header read strictly, the key compared in constant time."""

from __future__ import annotations

import pytest
from connexion.exceptions import OAuthProblem
from starlette.datastructures import Headers

from agentos_sessions.security import bearer_token, generate_key, key_fingerprint, token_matches, verify_bearer

KEY = "k3y-for-tests"


def headers(*values: str) -> Headers:
    return Headers(raw=[(b"authorization", v.encode("latin-1")) for v in values])


@pytest.mark.parametrize("values, expected", [
    ((), (None, None)),
    ((f"Bearer {KEY}",), ("bearer", KEY)),
    ((f"bEaReR {KEY}",), ("bearer", KEY)),
    ((f" \t Bearer {KEY} \t",), ("bearer", KEY)),
    (("Basic YTpi",), ("basic", "YTpi")),
])  # fmt: skip
def test_the_one_header_is_read_as_scheme_and_token(values, expected):
    assert bearer_token(headers(*values)) == expected


@pytest.mark.parametrize("values", [
    (f"Bearer {KEY}", f"Bearer {KEY}"), ("Bearer",), ("Bearer ",), (f"Bearer  {KEY}",), (f"Bearer\t{KEY}",),
    (f"Bearer {KEY} extra",), (KEY,), ("",),
])  # fmt: skip
def test_anything_else_is_refused(values):
    with pytest.raises(OAuthProblem):
        bearer_token(headers(*values))


class Request:
    def __init__(self, *values: str):
        self.headers = headers(*values)
        self.state = type("State", (), {"security_key": KEY})()


def test_the_bearer_check_accepts_the_key_only():
    assert verify_bearer(KEY, Request(f"Bearer {KEY}")) == {"sub": key_fingerprint(KEY)}
    assert verify_bearer("wrong", Request("Bearer wrong")) is None
    assert verify_bearer(KEY[:-1], Request(f"Bearer {KEY[:-1]}")) is None
    with pytest.raises(OAuthProblem, match="Only one Authorization header"):
        verify_bearer(KEY, Request(f"Bearer {KEY}", "Bearer wrong"))


def test_keys_are_compared_whole_and_never_shown():
    assert token_matches(KEY, KEY) and not token_matches(KEY + "x", KEY) and not token_matches("", KEY)
    fingerprint = key_fingerprint(KEY)
    assert len(fingerprint) == 12 and KEY not in fingerprint
    assert generate_key() != generate_key() and len(generate_key()) >= 40
