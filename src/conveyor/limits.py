"""Shared rate and concurrency limits, enforced in Redis so every worker process draws from
the same budget.

A rate limit is GCRA (the generic cell rate algorithm, a token bucket kept as one timestamp)
in ``storage/scripts/rate.lua``; a concurrency limit is a sorted set of leased holders in
``storage/scripts/concurrency.lua``. Both read the Redis server's clock, so workers with
skewed clocks still agree. This module holds the pure definitions (:class:`Rate`,
:class:`Limit`, :func:`parse_rate`), the two key builders, and :class:`Limiter`, which runs
the scripts pipelined: one round trip per call however many limits a step uses.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import DefinitionError

if TYPE_CHECKING:  # workflow.definition imports this module: keep the import graph one way
    from .storage.scripts import ScriptRegistry

__all__ = [
    "Limit",
    "Limiter",
    "Rate",
    "as_limit",
    "concurrency_key",
    "parse_rate",
    "rate_key",
]

_UNITS: dict[str, float] = {
    "s": 1.0, "sec": 1.0, "second": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0,
    "h": 3600.0, "hour": 3600.0,
    "d": 86400.0, "day": 86400.0,
}  # fmt: skip
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_RATE = re.compile(rf"^\s*(?P<units>{_NUMBER})\s*/\s*(?P<count>{_NUMBER})?\s*(?P<unit>[a-z]+)\s*$")
_RATE_FORM = (
    "'<units>/<period>', e.g. '100/s', '90000/min', '5/hour', '1000/d' or '10/2s' "
    "(period: s, sec, second, m, min, minute, h, hour, d, day)"
)
# The longest wait hint a refused concurrency 'enter' returns: a slot may free on any leave,
# so waiters look again at least this often rather than sleeping until a lease expires.
MAX_ENTER_HINT = 1.0
# Concurrency keys come from user code (a tenant id, a URL): kept as is when short and plain.
_SAFE_KEY = re.compile(r"^[A-Za-z0-9_.:\-]{1,100}$")
_UNSAFE_CHAR = re.compile(r"[^A-Za-z0-9_.:\-]")


@dataclass(frozen=True, slots=True)
class Rate:
    """``units`` per ``period`` seconds, e.g. ``Rate(90000, 60)`` for "90000/min"."""

    units: float
    period: float

    def __post_init__(self) -> None:
        for value in (self.units, self.period):
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise DefinitionError(
                    f"invalid rate {self.units!r}/{self.period!r}s: units and period must be "
                    "positive numbers"
                )

    @property
    def interval(self) -> float:
        """Seconds one unit takes to refill (the GCRA emission interval)."""
        return self.period / self.units

    def __str__(self) -> str:
        return f"{self.units:g}/{self.period:g}s"


def parse_rate(text: str) -> Rate:
    """Parse "100/s", "90000/min", "5/hour", "1000/d", "10/2s" or "2.5/s" into a :class:`Rate`.

    Rates are written as strings in step decorators, so a typo must fail at definition time
    with the accepted form rather than silently mean something else.
    """
    match = _RATE.match(text) if isinstance(text, str) else None
    if match is None or match["unit"] not in _UNITS:
        raise DefinitionError(f"invalid rate {text!r}: use {_RATE_FORM}")
    units = float(match["units"])
    period = float(match["count"] or 1) * _UNITS[match["unit"]]
    if units <= 0 or period <= 0:
        raise DefinitionError(
            f"invalid rate {text!r}: units and period must be more than zero; use {_RATE_FORM}"
        )
    return Rate(units, period)


@dataclass(frozen=True)
class Limit:
    """A shared rate limit: every step using a Limit of the same ``name`` draws from one
    budget, across all workers.

    ``rate``  "90000/min" or a :class:`Rate`; parsed at construction (see ``parsed``).
    ``cost``  units one run takes, computed from the step's input (default: 1 per run), e.g.
              an estimate of the tokens an LLM call will use.
    ``burst`` units that may pass at once when the limit has been idle; defaults to one
              period's worth (``rate.units``): "90000/min" lets 90000 units through at once,
              then refills at 1500/s. A single cost above ``burst`` could never fit, so it is
              capped to ``burst``: such a run passes when the bucket is full, rather than never.

    ``capacity`` is the effective burst (``burst`` or its default).
    """

    name: str
    rate: str | Rate
    cost: Callable[[Any], float] | None = None
    burst: float | None = None
    parsed: Rate = field(init=False, repr=False, compare=False)
    capacity: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        from .workflow.definition import check_name  # it imports this module: import late

        check_name("limit", self.name)
        parsed = self.rate if isinstance(self.rate, Rate) else parse_rate(self.rate)
        capacity = parsed.units if self.burst is None else self.burst
        if not (isinstance(capacity, int | float) and math.isfinite(capacity) and capacity > 0):
            raise DefinitionError(
                f"invalid burst {self.burst!r} of limit {self.name!r}: use a positive number"
            )
        if self.cost is not None and not callable(self.cost):
            raise DefinitionError(f"cost of limit {self.name!r} must be a function of the input")
        object.__setattr__(self, "parsed", parsed)
        object.__setattr__(self, "capacity", float(capacity))

    @property
    def interval_ms(self) -> float:
        """Milliseconds one unit takes to refill (the GCRA emission interval)."""
        return self.parsed.interval * 1000.0

    @property
    def tolerance_ms(self) -> float:
        """Milliseconds of refill the bucket holds when full (burst * interval)."""
        return self.capacity * self.interval_ms

    def cost_of(self, input: Any) -> float:
        """Units one run with ``input`` takes.

        A broken cost function must not silently take nothing (or refund) from a shared
        budget, so it fails loudly, naming the limit.
        """
        if self.cost is None:
            return 1.0
        try:
            value = self.cost(input)
        except Exception as exc:
            raise ValueError(
                f"cost function of limit {self.name!r} raised {type(exc).__name__}: {exc}"
            ) from exc
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(
                f"cost function of limit {self.name!r} returned {value!r}, not a number"
            )
        cost = float(value)
        if not math.isfinite(cost) or cost < 0:
            raise ValueError(
                f"cost function of limit {self.name!r} returned {value!r}: use a finite number >= 0"
            )
        return cost


def as_limit(rate_limit: str | Rate | Limit, default_name: str) -> Limit:
    """A :class:`Limit` from a step option: a plain rate ("100/s") becomes a limit named
    ``default_name`` (typically the step's own name), a Limit is kept as it is."""
    if isinstance(rate_limit, Limit):
        return rate_limit
    if isinstance(rate_limit, str | Rate):
        return Limit(default_name, rate_limit)
    raise DefinitionError(
        f"invalid rate limit {rate_limit!r}: use a rate such as '100/s' or a Limit(...)"
    )


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
