"""The exceptions of the HTTP client beyond the engine's own (which it raises too)."""

from __future__ import annotations

from typing import Any

from ..errors import BackPressureError, ConveyorError


class InputError(ConveyorError):
    """The API refused the request's data (422): the workflow's input failed its pydantic
    model, or a parameter is out of range. ``errors`` holds each field error as the server
    reported it (``loc``, ``msg``, ``type``), so a caller can point at the faulty field."""

    def __init__(self, message: str, errors: list[dict[str, Any]], problem: dict[str, Any]):
        super().__init__(message)
        self.errors = errors
        self.problem = problem


class AuthError(ConveyorError):
    """The API key is missing or wrong (401), or lacks the scope the call needs (403).
    Retrying will not help: fix the key or its scopes."""

    def __init__(self, message: str, status: int, problem: dict[str, Any]):
        super().__init__(message)
        self.status = status
        self.problem = problem


class ApiUnavailableError(ConveyorError):
    """The API cannot serve now: it answered 503 (its Redis is down) or could not be reached
    at all. Unlike the other errors this one may pass: ``retry_after`` is the server's hint in
    seconds, when it gave one."""

    def __init__(
        self, message: str, retry_after: float | None = None, problem: dict[str, Any] | None = None
    ):
        super().__init__(message)
        self.retry_after = retry_after
        self.problem = problem


class ApiError(ConveyorError):
    """Any other error answer; ``status`` and ``problem`` (the RFC 9457 body) say what."""

    def __init__(self, message: str, status: int, problem: dict[str, Any]):
        super().__init__(message)
        self.status = status
        self.problem = problem


class PartialBatchError(BackPressureError):
    """``start_many`` met back-pressure: ``accepted`` holds the ids of the inputs that did
    start (maybe none). Resending the batch with the same idempotency key starts only the
    rest, which is why the client retries a partly accepted batch only when it has a key."""

    def __init__(self, message: str, retry_after: float, accepted: list[str]):
        super().__init__(message, retry_after)
        self.accepted = accepted
