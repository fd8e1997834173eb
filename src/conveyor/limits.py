"""Shared rate limits as a workflow defines them: :class:`Rate`, :class:`Limit` (public as
``conveyor.Limit``), :func:`parse_rate`. Pure definitions, no I/O: their keys and the scripts
that enforce them in Redis, for every worker at once, are in ``storage/limits.py``.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import DefinitionError

__all__ = ["Limit", "Rate", "as_limit", "parse_rate"]

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
