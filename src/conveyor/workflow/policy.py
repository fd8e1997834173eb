"""Retry policy and backoff: pure data and a pure function, no I/O."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a failing step is retried.

    Attributes:
        retries: retries after the first attempt (0 = fail at the first error).
        backoff: delay in seconds before the first retry.
        multiplier: growth of the delay per further retry (exponential backoff).
        max_backoff: upper bound of any delay, in seconds.
        jitter: fraction of the delay that is randomised, 0..1, so that a burst of
            failures does not retry in lock step.
    """

    retries: int = 0
    backoff: float = 1.0
    multiplier: float = 2.0
    max_backoff: float = 300.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError("retries must be >= 0")
        if self.backoff < 0 or self.max_backoff < 0:
            raise ValueError("backoff and max_backoff must be >= 0")
        if self.multiplier < 1:
            raise ValueError("multiplier must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be between 0 and 1")

    @property
    def max_attempts(self) -> int:
        return self.retries + 1


def compute_backoff(policy: RetryPolicy, attempt: int, rand: float | None = None) -> float:
    """Seconds to wait before running attempt ``attempt + 1`` after attempt ``attempt`` failed.

    ``rand`` in [0, 1) makes the result deterministic for tests; by default it is random.
    """
    if attempt < 1:
        raise ValueError("attempt counts from 1")
    delay = min(policy.max_backoff, policy.backoff * policy.multiplier ** (attempt - 1))
    r = random.random() if rand is None else rand
    return delay * (1.0 - policy.jitter * r)
