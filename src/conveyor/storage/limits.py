"""Shared rate and concurrency limits in Redis, so every worker process draws from the same
budget: the keys of each limit and :class:`Limiter`, which runs their scripts pipelined (one
round trip per call however many limits a step uses).

A rate limit is GCRA (the generic cell rate algorithm, a token bucket kept as one timestamp)
in ``scripts/rate.lua``; a concurrency limit is a sorted set of leased holders in
``scripts/concurrency.lua``. Both read the Redis server's clock, so workers with skewed clocks
still agree. The definitions (:class:`~conveyor.Limit`, rates) are pure and live in
``conveyor/limits.py``.
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import TYPE_CHECKING, Any

from .scripts import ScriptRegistry

if TYPE_CHECKING:
    from ..limits import Limit

__all__ = ["MAX_ENTER_HINT", "Limiter", "concurrency_key", "rate_key"]

# The longest wait hint a refused concurrency 'enter' returns: a slot may free on any leave,
# so waiters look again at least this often rather than sleeping until a lease expires.
MAX_ENTER_HINT = 1.0
# Concurrency keys come from user code (a tenant id, a URL): kept as is when short and plain.
_SAFE_KEY = re.compile(r"^[A-Za-z0-9_.:\-]{1,100}$")
_UNSAFE_CHAR = re.compile(r"[^A-Za-z0-9_.:\-]")


def rate_key(namespace: str, name: str) -> str:
    """Redis key of a shared rate limit (the GCRA state, one string)."""
    return f"{namespace}:rate:{name}"


def concurrency_key(namespace: str, name: str, key: str) -> str:
    """Redis key of one concurrency limit's slots for ``key`` (for example a tenant id).

    ``key`` is any string from user code: it is kept as is when short and plain, otherwise
    replaced by a readable prefix and a hash, so the Redis key stays bounded (under 80
    characters for this part) and free of odd characters. A hashed form holds '~', which a
    kept key cannot, so the two never collide.
    """
    if not _SAFE_KEY.match(key):
        digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
        key = f"{_UNSAFE_CHAR.sub('_', key[:40])}~{digest}"
    return f"{namespace}:concurrency:{name}:{key}"


def _ms(seconds: float) -> int:
    """Whole milliseconds, rounded up, at least 1 (a lease or push of 0 ms means nothing)."""
    return max(1, math.ceil(seconds * 1000.0))


class Limiter:
    """The shared limits of one worker (or client), on its Redis connection.

    Every method takes a batch and runs it as one pipeline: a step with several limits costs
    one round trip, not one per limit. Each item is its own atomic script, so a batch of takes
    is not all-or-nothing: a caller that is refused one should refund what it was granted
    (``charge`` with a negative cost) or simply wait, as its design prefers.
    """

    def __init__(self, redis: Any, namespace: str, scripts: ScriptRegistry) -> None:
        self.redis = redis
        self.namespace = namespace
        self.scripts = scripts

    async def _run(self, calls: list[list[Any]]) -> list[Any]:
        if not calls:
            return []
        results = await self.scripts.call_many(self.redis, calls)
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results

    # -- rate --------------------------------------------------------------------------------

    def _rate(self, mode: str, limit: Limit, cost: float) -> list[Any]:
        argv = [mode, repr(limit.interval_ms), repr(limit.tolerance_ms), repr(float(cost))]
        return self.scripts.args("rate", [rate_key(self.namespace, limit.name)], argv)

    async def take(self, items: list[tuple[Limit, float]]) -> list[float]:
        """Take ``cost`` units of each limit; per item, 0.0 if granted, else the seconds to
        wait before this cost would fit (nothing is taken from a refused limit)."""
        return [wait for wait, _ in await self.take_counted(items)]

    async def take_counted(self, items: list[tuple[Limit, float]]) -> list[tuple[float, int]]:
        """As :meth:`take`, with the units still available right after each take (0 when
        refused): what an HTTP API reports as RateLimit-Remaining."""
        for limit, cost in items:
            if not (math.isfinite(cost) and cost >= 0):
                raise ValueError(f"invalid cost {cost!r} for limit {limit.name!r}")
        results = await self._run([self._rate("take", limit, cost) for limit, cost in items])
        return [(0.0 if r[0] else r[1] / 1000.0, int(r[2]) if len(r) > 2 else 0) for r in results]

    async def charge(self, items: list[tuple[Limit, float]]) -> None:
        """Charge units without refusing: what a step really used, less the estimate taken up
        front (negative to refund). Debt is waited out by the next takes."""
        for limit, cost in items:
            if not math.isfinite(cost):
                raise ValueError(f"invalid charge {cost!r} for limit {limit.name!r}")
        await self._run([self._rate("charge", limit, cost) for limit, cost in items if cost])

    async def push_back(self, limit: Limit, seconds: float) -> None:
        """Let nothing through ``limit`` for ``seconds`` (an outside API's Retry-After), in
        every worker; then one unit passes and the bucket refills at its rate. A push never
        shortens a longer wait already in place."""
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"invalid push back {seconds!r}s for limit {limit.name!r}")
        key = rate_key(self.namespace, limit.name)
        argv = ["push", _ms(seconds), repr(limit.tolerance_ms), repr(limit.interval_ms)]
        await self._run([self.scripts.args("rate", [key], argv)])

    # -- concurrency -------------------------------------------------------------------------

    def _slots(self, mode: str, name: str, key: str, holder: str, *argv: Any) -> list[Any]:
        return self.scripts.args(
            "concurrency", [concurrency_key(self.namespace, name, key)], [mode, holder, *argv]
        )

    async def enter(self, items: list[tuple[str, str, int, str, float]]) -> list[float]:
        """Take a slot per (limit name, key, max holders, holder id, lease seconds); per item,
        0.0 if granted, else a hint of seconds to wait (at most ``MAX_ENTER_HINT``). A holder
        already in is renewed and counts once, so a retried enter is harmless."""
        calls = []
        for name, key, max_holders, holder, lease in items:
            if max_holders < 1:
                raise ValueError(f"concurrency limit {name!r} needs at least 1 holder")
            hint = _ms(MAX_ENTER_HINT)
            calls.append(self._slots("enter", name, key, holder, max_holders, _ms(lease), hint))
        results = await self._run(calls)
        return [0.0 if granted else wait_ms / 1000.0 for granted, wait_ms in results]

    async def leave(self, items: list[tuple[str, str, str]]) -> None:
        """Free the slots of (limit name, key, holder id); leaving twice is harmless."""
        await self._run([self._slots("leave", name, key, holder) for name, key, holder in items])

    async def renew(self, items: list[tuple[str, str, str, float]]) -> list[bool]:
        """Extend the leases of (limit name, key, holder id, lease seconds), from now.

        Returns, per item, whether the slot was still held: False means the lease expired (or
        was left) and another holder may have taken the slot.
        """
        calls = [
            self._slots("renew", name, key, holder, "", _ms(lease))
            for name, key, holder, lease in items
        ]
        return [bool(held) for held, _ in await self._run(calls)]
