"""Engine settings: one frozen dataclass, filled from arguments or ``CONVEYOR_*`` variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from typing import Any

from .errors import ConfigurationError

DEFAULT_REDIS_URL = "redis://localhost:6379/0"


@dataclass(frozen=True, slots=True)
class Settings:
    """Attributes (environment variable in brackets):

    redis_url: where Redis is [REDIS_URL].
    namespace: prefix of every key, so several apps can share one Redis [CONVEYOR_NAMESPACE].
    partitions: stream partitions per queue; a workflow's keys and tasks live in one
        partition (one hash slot). Must be the same for every client and worker
        [CONVEYOR_PARTITIONS].
    max_backlog: total tasks allowed to wait in a queue's streams before a start is refused
        with back-pressure; enforced per partition as ``ceil(max_backlog / partitions)``
        [CONVEYOR_MAX_BACKLOG].
    retention: seconds a finished workflow's state is kept [CONVEYOR_RETENTION].
    visibility_timeout: seconds an entry may stay unacknowledged without a heartbeat before
        another worker takes it over [CONVEYOR_VISIBILITY_TIMEOUT].
    max_deliveries: deliveries of one entry (crashes included) before it is dead-lettered
        [CONVEYOR_MAX_DELIVERIES].
    group: the consumer group that workers read with [CONVEYOR_GROUP].
    events: record each workflow's event stream (step attempts, ``ctx.emit``, its end), what
        the HTTP API's SSE route serves; off saves three Redis commands per single-step
        workflow (measured: ~12 µs of Redis CPU of ~47, 5-10% of its throughput)
        [CONVEYOR_EVENTS].
    durability: ``fast`` counts a write as done when the Redis master answers;
        ``replicated`` also waits until ``durability_replicas`` replicas confirm it (WAIT),
        for at most ``durability_timeout`` seconds, and fails the write (API: 503) when they
        do not. See docs/guarantees.md for what each mode can lose [CONVEYOR_DURABILITY].
    durability_replicas: replicas that must confirm a write in ``replicated`` mode
        [CONVEYOR_DURABILITY_REPLICAS].
    durability_timeout: longest wait for them, seconds [CONVEYOR_DURABILITY_TIMEOUT].
    """

    redis_url: str = DEFAULT_REDIS_URL
    namespace: str = "conveyor"
    partitions: int = 16
    max_backlog: int = 1_000_000
    retention: float = 7 * 24 * 3600.0
    visibility_timeout: float = 30.0
    max_deliveries: int = 5
    group: str = "agents"
    events: bool = True
    durability: str = "fast"
    durability_replicas: int = 1
    durability_timeout: float = 1.0

    def __post_init__(self) -> None:
        if self.partitions < 1 or self.partitions > 16384:
            raise ConfigurationError("partitions must be between 1 and 16384")
        if self.max_backlog < 1:
            raise ConfigurationError("max_backlog must be >= 1")
        if self.retention < 1:
            raise ConfigurationError("retention must be >= 1 second")
        if self.visibility_timeout < 1:
            raise ConfigurationError("visibility_timeout must be >= 1 second")
        if self.max_deliveries < 1:
            raise ConfigurationError("max_deliveries must be >= 1")
        if self.durability not in ("fast", "replicated"):
            raise ConfigurationError(
                f"durability must be 'fast' or 'replicated', not {self.durability!r}"
            )
        if self.durability_replicas < 1:
            raise ConfigurationError("durability_replicas must be >= 1")
        if not 0 < self.durability_timeout <= 60:
            raise ConfigurationError("durability_timeout must be between 0 and 60 seconds")
        if not self.namespace or any(c in self.namespace for c in "{} \n"):
            raise ConfigurationError(f"invalid namespace {self.namespace!r}")

    @property
    def backlog_per_partition(self) -> int:
        return -(-self.max_backlog // self.partitions)

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Defaults, then environment variables, then ``overrides`` that are not None."""
        env: dict[str, Any] = {}
        for f in fields(cls):
            var = "REDIS_URL" if f.name == "redis_url" else f"CONVEYOR_{f.name.upper()}"
            raw = os.environ.get(var)
            if raw is None or raw == "":
                continue
            kind = type(getattr(cls(), f.name))
            if kind is bool:
                env[f.name] = raw.strip().lower() in ("1", "true", "yes", "on")
                continue
            try:
                env[f.name] = kind(raw)
            except ValueError as exc:
                raise ConfigurationError(f"{var}={raw!r} is not a valid {kind.__name__}") from exc
        env.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**env)

    def replace(self, **changes: Any) -> Settings:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})
