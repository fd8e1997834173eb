"""Per-key request rate limits for the API, shared by every API process through Redis
(the GCRA script of conveyor.limits), without a Redis round trip per request: each process
takes tokens from the shared bucket in small blocks (a lease) and hands them out locally.

A block is a twentieth of the bucket (at least 1, so small limits stay exact: a 10/min
limit takes one token per request), and lapses after LEASE_SECONDS, so a process never sits
on tokens another needs for longer than that. While one request refills a key's lease, the
others of that key wait for it instead of each taking a block.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from ..coalesce import Coalescer
from ..limits import Limit
from ..storage.limits import Limiter

LEASE_SECONDS = 1.0
BLOCKS_PER_BUCKET = 20


@dataclass
class Lease:
    tokens: int = 0
    expires: float = 0.0
    remaining: int = 0  # what the shared bucket had left after the last block
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class LeasedRateLimits:
    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter
        self.leases: dict[str, Lease] = {}
        self._takes: Coalescer[tuple[Limit, float], tuple[float, int]] = Coalescer(
            lambda items: self.limiter.take_counted(items)
        )

    async def take(self, limit: Limit) -> tuple[float, int]:
        """One request: (0, remaining) when allowed, else (seconds to wait, 0)."""
        lease = self.leases.get(limit.name)
        if lease is None:
            lease = self.leases[limit.name] = Lease()
        if lease.tokens > 0 and lease.expires > time.monotonic():
            lease.tokens -= 1
            return 0.0, lease.remaining + lease.tokens
        async with lease.lock:
            if lease.tokens > 0 and lease.expires > time.monotonic():
                lease.tokens -= 1
                return 0.0, lease.remaining + lease.tokens
            block = max(1, int(limit.capacity // BLOCKS_PER_BUCKET))
            wait, remaining = await self._takes.call((limit, float(block)))
            if wait > 0 and block > 1:  # not a whole block left: one token may still be
                block = 1
                wait, remaining = await self._takes.call((limit, 1.0))
            if wait > 0:
                return wait, 0
            lease.tokens, lease.remaining = block - 1, remaining
            lease.expires = time.monotonic() + LEASE_SECONDS
            return 0.0, remaining + lease.tokens
