"""The Kubernetes HorizontalPodAutoscaler's algorithm (``autoscaling/v2``), for one metric.

One implementation serves three users, so that what a user tunes in one place behaves the
same in the others: ``conveyor worker --autoscale`` (processes on one machine),
``conveyor autoscale-sim`` (a simulated cluster), and the Helm chart's HPA, whose defaults
(``deploy/helm/conveyor/values*.yaml``) a test keeps equal to :data:`DEFAULT_BEHAVIOR`.

The steps follow the controller (pkg/controller/podautoscaler in Kubernetes), per sync:

1. **Raw recommendation.** For an ``AverageValue`` target, ``ceil(metric / target)``;
   unless the ratio ``metric / (target * current)`` is within the tolerance (10%) of 1,
   which keeps ``current``.
2. **Stabilization.** Each raw recommendation is remembered. The result may rise no
   higher than the lowest recommendation of the scale-up window, and fall no lower than
   the highest of the scale-down window: one dip in the backlog does not remove workers
   that the next burst needs again (the scale-down delay).
3. **Rate limits.** Per direction, policies bound the change within a sliding period
   (``Pods``: that many; ``Percent``: that share of the replicas at the period's start);
   ``select="Max"`` takes the policy allowing the larger change, ``"Min"`` the smaller.
4. **Bounds.** ``min_replicas <= result <= max_replicas``.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Literal

from ..errors import ConfigurationError

__all__ = [
    "DEFAULT_BEHAVIOR",
    "Autoscaler",
    "Behavior",
    "ScalingPolicy",
    "ScalingRules",
    "default_target",
    "raw_recommendation",
]

#: The controller's tolerance: no change while metric/target is within 10% of the replicas.
TOLERANCE = 0.1


@dataclass(frozen=True)
class ScalingPolicy:
    """At most ``value`` pods (``type="Pods"``) or ``value`` percent of the replicas at the
    period's start (``type="Percent"``) added or removed within ``period`` seconds."""

    type: Literal["Pods", "Percent"]
    value: int
    period: float

    def __post_init__(self) -> None:
        if self.type not in ("Pods", "Percent"):
            raise ConfigurationError(f"scaling policy type must be Pods or Percent: {self.type}")
        if self.value < 1 or self.period <= 0:
            raise ConfigurationError("a scaling policy needs value >= 1 and period > 0")


@dataclass(frozen=True)
class ScalingRules:
    """One direction's rules: its stabilization window and rate policies."""

    stabilization_window: float
    policies: tuple[ScalingPolicy, ...]
    select: Literal["Max", "Min"] = "Max"

    def __post_init__(self) -> None:
        if self.stabilization_window < 0:
            raise ConfigurationError("a stabilization window cannot be negative")
        if not self.policies:
            raise ConfigurationError("scaling rules need at least one policy")
        if self.select not in ("Max", "Min"):
            raise ConfigurationError(f"select must be Max or Min: {self.select}")

    @property
    def longest_period(self) -> float:
        return max(p.period for p in self.policies)


@dataclass(frozen=True)
class Behavior:
    """The HPA's ``spec.behavior``; :data:`DEFAULT_BEHAVIOR` is what Conveyor ships."""

    scale_up: ScalingRules
    scale_down: ScalingRules

    def with_windows(self, scale_up: float, scale_down: float) -> Behavior:
        """The same rate policies with other stabilization windows (seconds)."""
        return Behavior(
            scale_up=replace(self.scale_up, stabilization_window=scale_up),
            scale_down=replace(self.scale_down, stabilization_window=scale_down),
        )


#: Up at once (double, or +4, whichever is more, every 15 s); down only after the backlog
#: has stayed low for 5 minutes, by at most half every minute: a burst that comes back
#: finds its workers still there, and a drained queue does not thrash the replica count.
DEFAULT_BEHAVIOR = Behavior(
    scale_up=ScalingRules(
        stabilization_window=0,
        policies=(ScalingPolicy("Percent", 100, 15), ScalingPolicy("Pods", 4, 15)),
    ),
    scale_down=ScalingRules(
        stabilization_window=300,
        policies=(ScalingPolicy("Percent", 50, 60),),
    ),
)


def default_target(slots: int) -> int:
    """The backlog to aim at per worker that runs ``slots`` tasks at once: 80% of them.

    The backlog counts running tasks too, so a target at or above what a busy worker holds
    reads a drained queue as one worker too many, and the count cycles (docs/autoscaling.md
    shows it). The Helm chart computes the same (``conveyor.workerTarget``)."""
    return max(1, slots * 4 // 5)


def raw_recommendation(metric: float, target: float, current: int) -> int:
    """Step 1: the replicas an ``AverageValue`` target asks for, before any window."""
    if current > 0 and abs(metric / (target * current) - 1) <= TOLERANCE:
        return current
    return math.ceil(metric / target)


@dataclass
class Autoscaler:
    """The HPA loop's state for one scaled target: feed it the metric each sync.

    Args:
        min_replicas, max_replicas: the bounds (``--autoscale MIN:MAX``).
        target: the metric's target per replica (an ``AverageValue``): for Conveyor, tasks
            waiting or running per worker.
        behavior: windows and rate policies (default: :data:`DEFAULT_BEHAVIOR`).
    """

    min_replicas: int
    max_replicas: int
    target: float
    behavior: Behavior = DEFAULT_BEHAVIOR
    _recommendations: deque[tuple[float, int]] = field(default_factory=deque, repr=False)
    _events: deque[tuple[float, int]] = field(default_factory=deque, repr=False)

    def __post_init__(self) -> None:
        if self.min_replicas < 1 or self.max_replicas < self.min_replicas:
            raise ConfigurationError(
                f"autoscaling needs 1 <= min <= max, got {self.min_replicas}:{self.max_replicas}"
            )
        if self.target <= 0:
            raise ConfigurationError("the autoscaling target must be above 0")

    def desired(self, now: float, current: int, metric: float) -> int:
        """The replicas to run after a sync at ``now`` (seconds, any monotonic clock) with
        ``current`` running and ``metric`` summed over them. Records the change, if any,
        against the rate policies: call it once per sync."""
        raw = raw_recommendation(metric, self.target, current)
        stabilized = self._stabilize(now, current, raw)
        limited = self._limit_rate(now, current, stabilized)
        result = max(self.min_replicas, min(self.max_replicas, limited))
        if result != current:
            self._events.append((now, result - current))
        return result

    def _stabilize(self, now: float, current: int, raw: int) -> int:
        up_cutoff = now - self.behavior.scale_up.stabilization_window
        down_cutoff = now - self.behavior.scale_down.stabilization_window
        up = down = raw
        for at, recommended in self._recommendations:
            if at > up_cutoff:
                up = min(up, recommended)
            if at > down_cutoff:
                down = max(down, recommended)
        self._recommendations.append((now, raw))
        horizon = now - max(
            self.behavior.scale_up.stabilization_window,
            self.behavior.scale_down.stabilization_window,
        )
        while self._recommendations and self._recommendations[0][0] <= horizon:
            self._recommendations.popleft()
        return min(max(current, up), down)

    def _limit_rate(self, now: float, current: int, desired: int) -> int:
        longest = max(
            self.behavior.scale_up.longest_period, self.behavior.scale_down.longest_period
        )
        while self._events and self._events[0][0] <= now - longest:
            self._events.popleft()
        # a limit never turns the direction around: a period that began above (below) the
        # current count allows no scale-up (scale-down) until its changes age out
        if desired > current:
            return min(desired, max(current, self._limit(now, current, up=True)))
        if desired < current:
            return max(desired, min(current, self._limit(now, current, up=False)))
        return desired

    def _start_of_period(self, now: float, current: int, period: float) -> int:
        """The replicas when the policy's period began: the net of the changes since, both
        directions, taken back (as the controller does)."""
        return current - sum(d for at, d in self._events if at > now - period)

    def _limit(self, now: float, current: int, *, up: bool) -> int:
        """The most (``up``) or fewest replicas the direction's policies allow now."""
        rules = self.behavior.scale_up if up else self.behavior.scale_down
        limits = []
        for policy in rules.policies:
            start = self._start_of_period(now, current, policy.period)
            if policy.type == "Pods":
                limits.append(start + policy.value if up else start - policy.value)
            elif up:
                limits.append(math.ceil(start * (1 + policy.value / 100)))
            else:
                limits.append(int(start * (1 - policy.value / 100)))
        # "Max" selects the policy that allows the larger change, "Min" the smaller
        larger, smaller = (max, min) if up else (min, max)
        return larger(limits) if rules.select == "Max" else smaller(limits)
