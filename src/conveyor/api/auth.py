"""API keys as bearer tokens: 401 without a key or with a bad one, 403 without the scope.
Tokens are compared by their SHA-256 in constant time against every configured key."""

from __future__ import annotations

import hmac

from .problems import Problem
from .settings import ApiKey, ApiSettings, hash_token

#: who is calling when auth is off (rate limits then apply per client address)
ANONYMOUS = ApiKey("anonymous", "", frozenset({"admin"}))


class Authenticator:
    def __init__(self, settings: ApiSettings) -> None:
        self.enabled = settings.auth
        self.keys = settings.keys

    def authenticate(self, authorization: str | None) -> ApiKey:
        if not self.enabled:
            return ANONYMOUS
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Problem(
                401, "missing API key: send 'Authorization: Bearer <key>'",
                kind="unauthorized", headers={"WWW-Authenticate": "Bearer"},
            )  # fmt: skip
        digest = hash_token(token.strip()).encode()
        found = None
        for key in self.keys:  # no early exit: the time does not depend on which matched
            if hmac.compare_digest(digest, key.sha256.encode()):
                found = key
        if found is None:
            raise Problem(
                401, "invalid API key", kind="unauthorized",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )  # fmt: skip
        return found

    @staticmethod
    def require(key: ApiKey, scope: str) -> None:
        if not key.allows(scope):
            raise Problem(403, f"API key {key.name!r} lacks the {scope!r} scope", kind="forbidden")
