"""The store: the one door to Redis for the worker, the clients, the API and the CLI.

It is a thin facade over role objects, one module each, that share one client, the settings,
the key builder (keys.py) and the script registry (base.py):

- ``namespace`` (namespace.py): partition count, consumer groups, workflow registry, scripts;
- ``starts`` (starts.py): starting workflows, batched per partition;
- ``streams`` (streams.py): reading, reclaim, leases, promote, trim, backlog;
- ``commits`` (commits.py): committing the transitions that transitions.py builds;
- ``control`` (control.py): reading one workflow, cancel, signal, wait timers, stopped sets,
  pub/sub subscriptions;
- ``dead`` (deadletters.py): listing, replaying and dropping dead letters;
- ``workers`` (workers.py): heartbeats, emitted events, the step-result cache;
- ``limiter`` (limits.py): shared rate and concurrency limits.

Read-only listings for the API and operators are in queries.py and snapshot.py, built on a
Store. Callers may use a role object (``store.streams.read``) or the same method on the
store (``store.read``): the store's methods *are* the role objects' bound methods, set once
here, so going through the facade costs nothing on the hot path. Transitions are Lua scripts;
no module outside ``storage/`` builds a key argument list, calls a script or holds a Redis
client for commands (tests/storage/test_boundary.py checks it).
"""

from __future__ import annotations

from typing import Any

from ..settings import Settings
from .base import Backend, now_ms
from .commits import COMMIT_BATCH, Commits
from .connection import RedisClient
from .control import Control, Subscription
from .deadletters import DeadLetters
from .limits import Limiter
from .namespace import Namespace
from .scripts import ScriptRegistry
from .starts import (
    START_BATCH,
    StartRequest,
    Starts,
    idempotent_workflow_id,
    new_workflow_id,
)
from .streams import CLUSTER_POLL_MS, Streams
from .transitions import Transition, Transitions
from .workers import Workers

__all__ = [
    "CLUSTER_POLL_MS",
    "COMMIT_BATCH",
    "START_BATCH",
    "StartRequest",
    "Store",
    "Subscription",
    "Transition",
    "idempotent_workflow_id",
    "new_workflow_id",
    "now_ms",
]


class Store:
    """Semantic operations on one namespace of one Redis deployment.

    ``scripts`` shares another store's script registry (see :meth:`with_client`)."""

    def __init__(
        self, redis: RedisClient, settings: Settings, *, scripts: ScriptRegistry | None = None
    ) -> None:
        backend = Backend.build(redis, settings, scripts)
        self.redis: Any = redis  # for storage modules (queries, snapshot) and tests only
        self.settings = settings
        self.keys = backend.keys
        self.scripts = backend.scripts
        self.cluster = backend.cluster
        self.confirm = backend.confirm
        self.transitions = Transitions(self.keys, settings)
        self.namespace = n = Namespace(backend)
        self.starts = s = Starts(backend)
        self.streams = r = Streams(backend)
        self.commits = Commits(backend)
        self.control = c = Control(backend)
        self.dead = d = DeadLetters(backend)
        self.workers = Workers(backend)
        self.limiter = Limiter(redis, settings.namespace, self.scripts)
        # the facade's methods: the role objects' own bound methods (no extra call)
        self.check_partitions, self.ensure_groups = n.check_partitions, n.ensure_groups
        self.register, self.lookup, self.load_scripts = n.register, n.lookup, n.load_scripts
        self.start_request, self.start, self.start_many = s.start_request, s.start, s.start_many
        self.stream_info, self.parse_entry, self.read = r.stream_info, r.parse_entry, r.read
        self.reclaim, self.heartbeat, self.hand_back = r.reclaim, r.heartbeat, r.hand_back
        self.promote, self.trim, self.backlog = r.promote, r.trim, r.backlog
        self.commit = self.commits.commit
        self.get, self.get_status = c.get, c.get_status
        self.cancel, self.signal = c.cancel, c.signal
        self.stopped_since, self.claim_timers = c.stopped_since, c.claim_timers
        self.subscription = c.subscription
        self.dead_letters, self.dead_letter = d.dead_letters, d.dead_letter
        self.replay, self.drop_dead_letter = d.replay, d.drop_dead_letter

    def with_client(self, redis: RedisClient) -> Store:
        """A store of the same namespace on another client (a separate pool, e.g. for
        blocking reads), sharing this one's script registry."""
        return Store(redis, self.settings, scripts=self.scripts)

    async def close(self) -> None:
        """Close the client (for a store that owns it: whoever created the client)."""
        await self.redis.aclose()
