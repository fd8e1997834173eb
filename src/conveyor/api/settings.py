"""Settings of the HTTP API: API keys and scopes, limits on requests. From the environment
(``CONVEYOR_API_*``) or given in code."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass, field

from ..errors import ConfigurationError
from ..limits import parse_rate
from ..settings import ApiEnvironment

SCOPES = ("submit", "read", "admin")
_KEY_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
TOKEN_PREFIX = "cvk_"


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A configured key: its name (logs, rate-limit identity), the SHA-256 of its token (the
    token itself is never stored) and its scopes. ``admin`` implies the others."""

    name: str
    sha256: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random API token (what `conveyor api-key` prints)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def parse_key(line: str) -> ApiKey:
    """``name:sha256-hex:scope,scope`` (the form `conveyor api-key` prints)."""
    parts = line.strip().split(":")
    if len(parts) != 3:
        raise ConfigurationError(
            f"invalid API key entry {line.strip()!r}: expected name:sha256:scopes "
            "(run `conveyor api-key` to make one)"
        )
    name, digest, scopes = (p.strip() for p in parts)
    if not _KEY_NAME.match(name):
        raise ConfigurationError(
            f"invalid API key name {name!r}: use 1 to 64 letters, digits, '_', '-' or '.'"
        )
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest.lower()):
        raise ConfigurationError(
            f"API key {name!r}: the second field must be the token's SHA-256 in hex, never "
            "the token itself"
        )
    chosen = frozenset(s.strip() for s in scopes.split(",") if s.strip())
    unknown = chosen - set(SCOPES)
    if not chosen or unknown:
        raise ConfigurationError(
            f"API key {name!r}: scopes must be some of {', '.join(SCOPES)}"
            + (f" (unknown: {', '.join(sorted(unknown))})" if unknown else "")
        )
    return ApiKey(name, digest.lower(), chosen)


def parse_keys(text: str) -> list[ApiKey]:
    """Entries separated by newlines or ';'; blank lines and '#' comments are skipped."""
    entries = [e for line in text.splitlines() for e in line.split(";")]
    return [parse_key(e) for e in entries if e.strip() and not e.strip().startswith("#")]


@dataclass(frozen=True)
class ApiSettings:
    """Args:
    auth: require API keys (turn off only on purpose: the server logs a warning).
    keys: the accepted keys.
    rate_limit: requests per key, shared by every API process through Redis ("" = none).
    max_body: largest request body, bytes (413 beyond).
    max_depth: deepest JSON nesting accepted (400 beyond).
    max_batch: most inputs in one batch request.
    max_wait: longest long-poll of /result, seconds.
    """

    auth: bool = True
    keys: tuple[ApiKey, ...] = ()
    rate_limit: str = "1000/s"
    max_body: int = 1 << 20
    max_depth: int = 32
    max_batch: int = 10_000
    max_wait: float = 60.0
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rate_limit:
            parse_rate(self.rate_limit)
        if self.auth and not self.keys:
            raise ConfigurationError(
                "the API needs keys: set CONVEYOR_API_KEYS or CONVEYOR_API_KEYS_FILE (make one "
                "with `conveyor api-key`), or turn auth off on purpose with --no-auth"
            )

    @classmethod
    def from_env(cls, *, auth: bool | None = None) -> ApiSettings:
        """``auth`` (an argument) above the ``CONVEYOR_API_*`` variables (see
        :class:`conveyor.settings.ApiEnvironment`), above their defaults."""
        env = ApiEnvironment.read(auth=auth)
        keys = parse_keys(env.keys)
        if env.keys_file is not None:
            try:
                keys += parse_keys(env.keys_file.read_text())
            except OSError as exc:
                raise ConfigurationError(f"cannot read CONVEYOR_API_KEYS_FILE: {exc}") from exc
        return cls(
            auth=env.auth,
            keys=tuple(keys),
            rate_limit=env.rate_limit,
            max_body=env.max_body,
            max_batch=env.max_batch,
        )
