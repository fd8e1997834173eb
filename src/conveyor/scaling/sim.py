"""A simulated queue served by workers that the HPA scales on the backlog.

``conveyor autoscale-sim`` runs it so that a target and windows can be tried against a load
before they are deployed. The scaling decisions come from :class:`.hpa.Autoscaler`, the same
code as ``conveyor worker --autoscale``; everything around it is a model, second by second
(1 s ticks), deterministic (no randomness):

- **Arrivals.** The profile gives a rate in tasks/s at the start of each second; that many
  whole tasks arrive, and the fraction left over carries to the next second (0.5 tasks/s is
  one task every other second). Tasks arriving in the same second form one FIFO cohort.
- **Workers.** Each ready worker starts ``worker_rate`` tasks/s, oldest first (a fraction
  carries over while tasks are waiting; idle capacity is not saved up). A task runs
  ``service_time`` seconds, so a busy worker holds ``worker_rate * service_time`` tasks: its
  slots. A task's latency is its wait in whole seconds plus ``service_time`` (1 s
  resolution).
- **Backlog** = tasks waiting + tasks running (the stream's lag + pending, which is what
  ``conveyor_queue_backlog`` counts), sampled at the end of each second. The starts of a
  second are spread over it, so a busy worker adds ``worker_rate * service_time`` running
  tasks to the backlog on average, also when a task runs for less than a second.
- **The HPA.** It aims at ``target`` tasks of backlog per worker, by default
  :func:`.hpa.default_target` of the slots (80%, as the Helm chart and
  ``conveyor worker --autoscale`` do). Every ``sync_period`` seconds, from t = 0, it reads
  the backlog as it was ``metric_delay`` seconds earlier (the age of the last scrape: up to
  Prometheus' scrape interval), with ``current`` = the replicas it last asked for, ready or
  not (Kubernetes counts the pods that exist, not the ready ones).
- **Pods.** A requested worker is ready ``startup`` seconds after the request (scheduling,
  image pull, process start). A scale-down first cancels workers that are not ready yet,
  newest first (a ReplicaSet deletes unready pods first), then stops ready ones: they take no
  new task at once, and the tasks they were running finish (Conveyor drains on SIGTERM and
  commits them); nothing runs twice. The model has no read-ahead, so no task is handed back.
- **Cost** (worker-seconds) sums the replicas asked for, starting or ready, over the seconds;
  a stopping worker's drain time is not counted.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..errors import ConfigurationError
from .hpa import DEFAULT_BEHAVIOR, Autoscaler, Behavior, default_target

__all__ = [
    "PROFILES",
    "Profile",
    "Result",
    "SimConfig",
    "Sine",
    "Spike",
    "Steady",
    "Summary",
    "clock",
    "make_profile",
    "simulate",
]

#: The longest run simulated: a day of 1 s ticks.
MAX_DURATION = 86_400

# float sums of rates such as 0.1 must still reach a whole task
_EPSILON = 1e-9


def clock(seconds: float) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour on."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _check_rates(**rates: float) -> None:
    for name, value in rates.items():
        if not math.isfinite(value) or value < 0:
            raise ConfigurationError(f"the {name} must be a rate of 0 tasks/s or more: {value:g}")


@dataclass(frozen=True)
class Steady:
    """``rate`` tasks/s all along."""

    rate: float

    def __post_init__(self) -> None:
        _check_rates(rate=self.rate)

    def rate_at(self, t: float) -> float:
        return self.rate

    def describe(self) -> str:
        return f"steady {self.rate:g}/s"


@dataclass(frozen=True)
class Spike:
    """``rate`` tasks/s, and ``peak`` tasks/s for ``length`` seconds from ``start``."""

    rate: float
    peak: float
    start: float
    length: float

    def __post_init__(self) -> None:
        _check_rates(rate=self.rate, peak=self.peak)
        if self.start < 0 or self.length < 0:
            raise ConfigurationError("a spike's start and length cannot be negative")

    def rate_at(self, t: float) -> float:
        return self.peak if self.start <= t < self.start + self.length else self.rate

    def describe(self) -> str:
        return (
            f"spike {self.rate:g}/s, {self.peak:g}/s from {clock(self.start)} for {self.length:g} s"
        )


@dataclass(frozen=True)
class Sine:
    """From ``rate`` (at t = 0) up to ``peak`` (at half the period) and back, every
    ``period`` seconds."""

    rate: float
    peak: float
    period: float

    def __post_init__(self) -> None:
        _check_rates(rate=self.rate, peak=self.peak)
        if not self.period > 0:
            raise ConfigurationError("a sine's period must be above 0 s")

    def rate_at(self, t: float) -> float:
        swing = (1 - math.cos(2 * math.pi * t / self.period)) / 2
        return self.rate + (self.peak - self.rate) * swing

    def describe(self) -> str:
        return f"sine {self.rate:g}/s to {self.peak:g}/s, period {self.period:g} s"


Profile = Steady | Spike | Sine

#: The profiles by the name ``--profile`` takes.
PROFILES = ("steady", "spike", "sine")


def make_profile(
    name: str, rate: float, peak: float, start: float, length: float, period: float
) -> Profile:
    """The profile called ``name``, taking the parameters it uses."""
    if name == "steady":
        return Steady(rate)
    if name == "spike":
        return Spike(rate, peak, start, length)
    if name == "sine":
        return Sine(rate, peak, period)
    raise ConfigurationError(f"unknown profile {name!r}: use {', '.join(PROFILES)}")


@dataclass(frozen=True)
class SimConfig:
    """One simulated run. The defaults are the Helm chart's: its default worker pod (1
    process x concurrency 64, modelled as 64 tasks/s of 1 s each, I/O-bound steps that fill
    its 64 slots: measure your own), 3 to 30 workers, a target of
    :func:`.hpa.default_target` of the slots, a 15 s sync and :data:`.hpa.DEFAULT_BEHAVIOR`.
    ``target=None`` is that default (:attr:`effective_target`)."""

    profile: Profile
    worker_rate: float = 64.0
    service_time: float = 1.0
    duration: int = 1800
    min_replicas: int = 3
    max_replicas: int = 30
    target: float | None = None
    sync_period: int = 15
    metric_delay: int = 30
    startup: int = 20
    behavior: Behavior = DEFAULT_BEHAVIOR

    def __post_init__(self) -> None:
        if not (math.isfinite(self.worker_rate) and self.worker_rate > 0):
            raise ConfigurationError(f"the worker rate must be above 0/s: {self.worker_rate:g}")
        if not (math.isfinite(self.service_time) and self.service_time >= 0):
            raise ConfigurationError(f"the service time cannot be negative: {self.service_time:g}")
        if not 1 <= self.duration <= MAX_DURATION:
            raise ConfigurationError(f"the duration must be 1 to {MAX_DURATION} s: {self.duration}")
        if self.sync_period < 1:
            raise ConfigurationError(f"the sync period must be 1 s or more: {self.sync_period}")
        if self.metric_delay < 0 or self.startup < 0:
            raise ConfigurationError("the metric delay and the startup time cannot be negative")
        if self.target is not None and not (math.isfinite(self.target) and self.target > 0):
            raise ConfigurationError(f"the target must be above 0 tasks a worker: {self.target:g}")

    @property
    def slots(self) -> int:
        """The tasks a busy worker holds: ``worker_rate * service_time``, rounded."""
        return round(self.worker_rate * self.service_time)

    @property
    def effective_target(self) -> float:
        """``target``, or when it is None :func:`.hpa.default_target` of the slots."""
        return float(default_target(self.slots)) if self.target is None else self.target

    def parameters(self) -> dict[str, Any]:
        """Everything the run depends on, as plain JSON values (``target``: the effective
        one)."""
        plain = {f.name: getattr(self, f.name) for f in fields(self)}
        del plain["profile"], plain["behavior"]
        plain["target"] = self.effective_target
        return {
            "profile": type(self.profile).__name__.lower(),
            **asdict(self.profile),
            **plain,
            "scale_up_window": self.behavior.scale_up.stabilization_window,
            "scale_down_window": self.behavior.scale_down.stabilization_window,
        }


@dataclass(frozen=True)
class Summary:
    """The whole run in numbers. Latencies are over completed tasks (``None`` if none)."""

    arrived: int
    completed: int
    left: int  # in the backlog at the end, waiting or running
    peak_backlog: int
    latency_p50: float | None
    latency_p99: float | None
    latency_max: float | None
    worker_seconds: int
    max_replicas: int
    scale_ups: int
    scale_downs: int

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class Result:
    """Per-second series (index = second) and the run's summary.

    ``desired`` is what the HPA asked for after that second's sync (``spec.replicas``),
    ``ready`` the workers serving; ``backlog`` is taken at the end of the second;
    ``metric`` is the backlog the HPA read, at sync seconds only; ``p50``/``p99`` are over
    the tasks completed in that second (``None`` if none).
    """

    config: SimConfig
    rate: list[float] = field(default_factory=list)
    arrived: list[int] = field(default_factory=list)
    completed: list[int] = field(default_factory=list)
    desired: list[int] = field(default_factory=list)
    ready: list[int] = field(default_factory=list)
    backlog: list[int] = field(default_factory=list)
    metric: list[int | None] = field(default_factory=list)
    p50: list[float | None] = field(default_factory=list)
    p99: list[float | None] = field(default_factory=list)
    # per second: whole-second waits of the tasks completed -> how many
    waits: list[Counter[int]] = field(default_factory=list, repr=False)

    @property
    def t(self) -> range:
        return range(len(self.rate))

    def latency(self, q: float, start: int = 0, end: int | None = None) -> float | None:
        """The ``q`` quantile (nearest rank) of the latency of tasks completed in seconds
        ``start`` to ``end`` (exclusive)."""
        merged: Counter[int] = Counter()
        for waits in self.waits[start:end]:
            merged.update(waits)
        return _quantile(merged, q, self.config.service_time)

    @property
    def summary(self) -> Summary:
        merged: Counter[int] = Counter()
        for waits in self.waits:
            merged.update(waits)
        service = self.config.service_time
        steps = list(zip(self.desired, self.desired[1:], strict=False))
        return Summary(
            arrived=sum(self.arrived),
            completed=sum(self.completed),
            left=self.backlog[-1],
            peak_backlog=max(self.backlog),
            latency_p50=_quantile(merged, 0.5, service),
            latency_p99=_quantile(merged, 0.99, service),
            latency_max=float(max(merged) + service) if merged else None,
            worker_seconds=sum(self.desired),
            max_replicas=max(self.desired),
            scale_ups=sum(after > before for before, after in steps),
            scale_downs=sum(after < before for before, after in steps),
        )


def _quantile(waits: Mapping[int, int], q: float, service_time: float) -> float | None:
    total = sum(waits.values())
    if not total:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for wait in sorted(waits):
        seen += waits[wait]
        if seen >= rank:
            return float(wait + service_time)
    raise AssertionError("unreachable: the counts add up to the total")


@dataclass
class _Queue:
    """The tasks of the simulated queue: FIFO cohorts waiting, batches running."""

    service_time: float
    waiting: deque[list[int]] = field(default_factory=deque)  # [arrival second, count]
    running: deque[tuple[int, int, int]] = field(default_factory=deque)  # (done, wait, count)
    n_waiting: int = 0
    n_running: int = 0

    @property
    def backlog(self) -> int:
        return self.n_waiting + self.n_running

    def arrive(self, t: int, count: int) -> None:
        if count:
            self.waiting.append([t, count])
            self.n_waiting += count

    def start(self, t: int, count: int) -> None:
        # the starts of a second are spread over it, so with a run time of 2.3 s the last 30%
        # of them end in second t + 3, the others in t + 2: the backlog then holds 2.3 s of
        # starts on average, as the real one does, in whole tasks
        whole, fraction = divmod(self.service_time, 1)
        late = math.floor(count * fraction + 0.5)
        self.n_waiting -= count
        self.n_running += count
        self._take(t, count - late, t + int(whole))
        self._take(t, late, t + int(whole) + 1)

    def _take(self, t: int, count: int, done: int) -> None:
        while count:
            cohort = self.waiting[0]
            taken = min(cohort[1], count)
            self.running.append((done, t - cohort[0], taken))
            cohort[1] -= taken
            count -= taken
            if not cohort[1]:
                self.waiting.popleft()

    def finish(self, t: int) -> Counter[int]:
        waits: Counter[int] = Counter()
        while self.running and self.running[0][0] <= t:
            _, wait, count = self.running.popleft()
            waits[wait] += count
            self.n_running -= count
        return waits


def simulate(config: SimConfig) -> Result:
    """Run the model of this module's docstring for ``config.duration`` seconds."""
    hpa = Autoscaler(
        config.min_replicas, config.max_replicas, config.effective_target, config.behavior
    )
    queue = _Queue(config.service_time)
    result = Result(config)
    desired = ready = config.min_replicas  # the run starts with min workers up
    starting: deque[int] = deque()  # when each requested worker will be ready, oldest first
    arrival_carry = service_carry = 0.0

    for t in range(config.duration):
        metric = None
        if t % config.sync_period == 0:
            seen_at = t - config.metric_delay - 1  # backlog at instant x = end of second x - 1
            metric = result.backlog[seen_at] if seen_at >= 0 else 0
            wanted = hpa.desired(t, desired, metric)
            if wanted > desired:
                starting.extend([t + config.startup] * (wanted - desired))
            for _ in range(desired - wanted):
                if starting:
                    starting.pop()
                else:
                    ready -= 1
            desired = wanted
        while starting and starting[0] <= t:
            starting.popleft()
            ready += 1

        rate = config.profile.rate_at(t)
        arrival_carry += rate
        arrived = math.floor(arrival_carry + _EPSILON)
        arrival_carry = max(0.0, arrival_carry - arrived)
        queue.arrive(t, arrived)

        capacity = ready * config.worker_rate + service_carry
        started = min(queue.n_waiting, math.floor(capacity + _EPSILON))
        service_carry = max(0.0, capacity - started) if started < queue.n_waiting else 0.0
        queue.start(t, started)
        waits = queue.finish(t)

        result.rate.append(rate)
        result.arrived.append(arrived)
        result.completed.append(sum(waits.values()))
        result.desired.append(desired)
        result.ready.append(ready)
        result.backlog.append(queue.backlog)
        result.metric.append(metric)
        result.p50.append(_quantile(waits, 0.5, config.service_time))
        result.p99.append(_quantile(waits, 0.99, config.service_time))
        result.waits.append(waits)
    return result
