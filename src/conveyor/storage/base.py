"""What every role of the store shares: one Redis client, the settings, the key builder, the
script registry and the replica confirmation (see store.py for the roles)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ..settings import Settings
from .connection import is_cluster
from .durability import Confirmation
from .keys import Keys
from .scripts import ScriptRegistry


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(slots=True, eq=False)
class Backend:
    """The parts each role object copies at construction (the hot paths then read their own
    attributes, not this object's)."""

    # redis-py's command annotations are unions of sync and async results: type the client
    # loosely here and keep the roles' own signatures precise instead
    redis: Any
    settings: Settings
    keys: Keys
    scripts: ScriptRegistry
    #: WAIT for replicas after writes (durability "replicated"), else None
    confirm: Confirmation | None
    cluster: bool

    @classmethod
    def build(cls, redis: Any, settings: Settings, scripts: ScriptRegistry | None) -> Backend:
        confirm = (
            Confirmation(settings.durability_replicas, int(settings.durability_timeout * 1000))
            if settings.durability == "replicated"
            else None
        )
        keys = Keys(settings.namespace, settings.partitions)
        return cls(redis, settings, keys, scripts or ScriptRegistry(), confirm, is_cluster(redis))


class Role:
    """Base of the role objects: the shared parts as plain attributes."""

    def __init__(self, backend: Backend) -> None:
        self.redis: Any = backend.redis
        self.settings = backend.settings
        self.keys = backend.keys
        self.scripts = backend.scripts
        self.confirm = backend.confirm
        self.cluster = backend.cluster
        self._retention = int(backend.settings.retention)
