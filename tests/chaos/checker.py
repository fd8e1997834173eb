"""The loss checker shared by every fault-injection scenario.

It logs every submission with a client-chosen idempotency key and what came of it:

- ``accepted``: an id came back (AsyncClient) or a 202 (HTTP API);
- ``refused``: a definite no, nothing written: ``BackPressureError`` or an HTTP 429
  (back-pressure, out of memory, rate limit);
- ``unknown``: the answer was lost: a timeout, a connection error, or an HTTP 503 (the API
  could not tell whether Redis ran the start before the connection broke);
- ``error``: an answer the contract does not allow (an HTTP 500, an unexpected exception).

After the faults it drains (waits until every accepted workflow has finished, or a
deadline) and classifies, reading Redis through the engine's own connection factory, so any
URL the engine takes (later ``redis+sentinel://``, ``redis+cluster://``) works:

- ``lost``: accepted (or unknown but found started) and not finished as expected (missing,
  still running, or another status);
- ``duplicate_commits``: successful transitions recorded more than once for one task (the
  workflow's history holds one ``completed`` record per task, or this is a bug);
- ``unexpected``: workflows that exist although their start was refused, or that nobody
  submitted (from each partition's index of recent workflows);
- ``recovered``: unknown submissions that turned out to have been accepted and finished;
- ``wrong_results``: finished with another result than the expected one.

Steps run at least once: the re-runs are counted apart, from the attempts log the chaos app
writes outside Redis (:class:`AttemptLog`), which also gives the recovery times.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import orjson

from conveyor import AsyncClient, BackPressureError
from conveyor.app import App
from conveyor.storage.connection import UNAVAILABLE, connect
from conveyor.storage.keys import Keys
from conveyor.storage.store import idempotent_workflow_id

from .harness import Report, percentile, rounded

ACCEPTED, REFUSED, UNKNOWN, ERROR = "accepted", "refused", "unknown", "error"
FINISHED = ("completed", "failed", "cancelled")


class _Any:
    def __repr__(self) -> str:
        return "ANY"


#: ``expect_result`` that accepts any result
ANY: Any = _Any()


# -- submitting -----------------------------------------------------------------------------


class Submitter(Protocol):
    """One way in: the Python client or the HTTP API."""

    name: str

    def workflow_id(self, workflow: str, key: str) -> str:
        """The id a start of ``workflow`` with idempotency key ``key`` gets."""
        ...

    async def start(self, workflow: str, input: Any, key: str) -> tuple[str, str]:
        """Start once; returns (outcome, detail)."""
        ...

    async def aclose(self) -> None: ...


class ClientSubmitter:
    """Starts through :class:`conveyor.AsyncClient`, each call bounded by ``timeout``."""

    def __init__(self, client: AsyncClient, *, timeout: float = 10.0, name: str = "client"):
        self.client = client
        self.timeout = timeout
        self.name = name

    @classmethod
    def to(
        cls, redis_url: str, namespace: str, app: App, *, partitions: int = 4, timeout: float = 10.0
    ) -> ClientSubmitter:
        client = AsyncClient(redis_url, namespace, partitions=partitions, app=app)
        return cls(client, timeout=timeout)

    def workflow_id(self, workflow: str, key: str) -> str:
        return idempotent_workflow_id(workflow, key)

    async def start(self, workflow: str, input: Any, key: str) -> tuple[str, str]:
        try:
            await asyncio.wait_for(
                self.client.start(workflow, input, idempotency_key=key), self.timeout
            )
        except BackPressureError as exc:
            return REFUSED, f"BackPressureError: {exc}"
        except TimeoutError:
            return UNKNOWN, f"no answer within {self.timeout:g}s"
        except UNAVAILABLE as exc:
            return UNKNOWN, type(exc).__name__
        except Exception as exc:
            return ERROR, f"{type(exc).__name__}: {exc}"
        return ACCEPTED, "started"

    async def aclose(self) -> None:
        await self.client.close()


class HttpSubmitter:
    """Starts with ``POST /v1/workflows/{name}`` and an ``Idempotency-Key`` header.

    ``key_name`` is the API key's name when auth is on: the API scopes idempotency keys by
    it, so it is part of the workflow id."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        key_name: str | None = None,
        timeout: float = 15.0,
        name: str = "http",
    ) -> None:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.http = httpx.AsyncClient(
            base_url=base_url, headers=headers, timeout=timeout,
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=200),
        )  # fmt: skip
        self.key_name = key_name
        self.timeout = timeout
        self.name = name
        self.statuses: dict[int, int] = defaultdict(int)  # HTTP status -> answers

    def workflow_id(self, workflow: str, key: str) -> str:
        engine_key = f"{self.key_name}/{key}" if self.key_name else key
        return idempotent_workflow_id(workflow, engine_key)

    async def start(self, workflow: str, input: Any, key: str) -> tuple[str, str]:
        try:
            response = await self.http.post(
                f"/v1/workflows/{workflow}", content=orjson.dumps(input),
                headers={"Idempotency-Key": key},
            )  # fmt: skip
        except httpx.TimeoutException:
            return UNKNOWN, f"no HTTP answer within {self.timeout:g}s"
        except httpx.HTTPError as exc:
            return UNKNOWN, type(exc).__name__
        status = response.status_code
        self.statuses[status] += 1
        if status == 202:
            return ACCEPTED, "202"
        kind = _problem_kind(response)
        if status == 429:
            return REFUSED, f"429 {kind}"
        if status == 503:
            return UNKNOWN, f"503 {kind}"
        return ERROR, f"{status} {kind}"

    async def aclose(self) -> None:
        await self.http.aclose()


def _problem_kind(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return "(not JSON)"
    kind = str(body.get("type", "")).rpartition("/")[2] if isinstance(body, dict) else ""
    detail = str(body.get("detail", "")) if isinstance(body, dict) else ""
    return f"{kind}: {detail}" if detail else kind


@dataclass(slots=True)
class Submission:
    key: str
    workflow: str
    workflow_id: str
    via: str
    outcome: str
    detail: str
    sent_at: float  # time.time() when sent
    seconds: float  # until the answer (or the timeout)
    expect_status: str = "completed"
    expect_result: Any = ANY

    @property
    def answered_at(self) -> float:
        return self.sent_at + self.seconds


@dataclass(frozen=True, slots=True)
class Job:
    """One workflow to submit, and how it must end."""

    workflow: str
    input: Any
    expect_status: str = "completed"
    expect_result: Any = ANY


def endless(workflow: str = "pipeline") -> Iterator[Job]:
    """Pipelines (tests/apps/chaos.py) with their expected results, for ever."""
    from tests.apps.chaos import expected

    for n in itertools.count():
        yield Job(workflow, n, expect_result=expected(n))


# -- what Redis holds -----------------------------------------------------------------------


@dataclass(slots=True)
class Observation:
    """A workflow as read from Redis (the first time it was seen finished, if it was)."""

    status: str
    result: Any
    error_type: str | None
    completed: dict[int, list[str]]  # task -> workers of its `completed` history records
    records: int  # history records (attempts)
    finished_at: float | None  # unix seconds, as the finishing worker recorded it


def _observe(fields: dict[bytes, bytes], history: list[bytes]) -> Observation:
    completed: dict[int, list[str]] = defaultdict(list)
    for raw in history:
        record = orjson.loads(raw)
        if record.get("status") == "completed":
            completed[int(record["task"])].append(str(record.get("worker")))
    error = fields.get(b"error")
    result = fields.get(b"result")
    finished = fields.get(b"finished_at")
    return Observation(
        status=fields.get(b"status", b"").decode(),
        result=orjson.loads(result) if result else None,
        error_type=orjson.loads(error).get("type") if error else None,
        completed=dict(completed),
        records=len(history),
        finished_at=int(finished) / 1000 if finished else None,
    )


@dataclass
class Verdict:
    submitted: int = 0
    accepted: int = 0
    refused: int = 0
    unknown: int = 0
    errors: int = 0  # answers the contract does not allow
    lost: int = 0
    duplicate_commits: int = 0
    unexpected: int = 0
    recovered: int = 0
    errors_started: int = 0  # answered with an error, yet started (a caller may start twice)
    unknown_absent: int = 0  # unknown submissions that never started (nothing to recover)
    wrong_results: int = 0
    finished: dict[str, int] = field(default_factory=dict)  # status -> workflows
    samples: dict[str, list[str]] = field(default_factory=dict)  # a few ids per problem
    details: dict[str, int] = field(default_factory=dict)  # outcome detail -> submissions

    def figures(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v or k in CLEAN}

    def require_clean(self, report: Report, prefix: str = "") -> None:
        """The figures every scenario must reach: nothing lost, committed twice, started
        behind a refusal, wrong, or answered outside the contract. With ``prefix`` the
        figures go under that key (a scenario with two runs)."""
        if prefix:
            report.add(**{prefix: self.figures()})
        else:
            report.add(**self.figures())
        where = f"{prefix}." if prefix else ""
        for name in CLEAN:
            value = getattr(self, name)
            report.require(f"{where}{name}", value, "== 0", value == 0)
        report.require(f"{where}accepted", self.accepted, "> 0", self.accepted > 0)


CLEAN = ("lost", "duplicate_commits", "unexpected", "wrong_results", "errors")


class Checker:
    """Submits through one or more :class:`Submitter`, then drains and classifies."""

    def __init__(
        self,
        redis_url: str,
        namespace: str,
        submitters: Sequence[Submitter],
        *,
        partitions: int = 4,
    ) -> None:
        self.redis: Any = connect(redis_url)
        self.keys = Keys(namespace, partitions)
        self.partitions = partitions
        self.submitters = list(submitters)
        self.submissions: list[Submission] = []
        self.observed: dict[str, Observation] = {}  # finished workflows, first seen
        self.run = uuid.uuid4().hex[:8]  # keys of this checker never meet another's
        self._seq = itertools.count()
        self._via = itertools.cycle(self.submitters)
        self._closing = asyncio.Event()
        self._in_flight: set[asyncio.Task[Submission]] = set()

    async def aclose(self) -> None:
        """Stop submitting, let the calls under way end (each is bounded by its
        submitter's timeout), then close the submitters."""
        self._closing.set()
        if self._in_flight:
            await asyncio.wait(list(self._in_flight), timeout=60)
        for submitter in self.submitters:
            await submitter.aclose()
        await self.redis.aclose()

    def outcomes(self) -> dict[str, int]:
        """Submissions per outcome and detail (what the report shows)."""
        details: dict[str, int] = defaultdict(int)
        for s in self.submissions:
            details[f"{s.outcome}: {_short(s.detail)}"] += 1
        return dict(sorted(details.items()))

    # -- submitting -------------------------------------------------------------------------

    async def submit(self, job: Job, via: Submitter | None = None) -> Submission:
        """Start ``job`` once (through ``via``, else the submitters in turn) and log it."""
        submitter = via or next(self._via)
        key = f"{self.run}-{next(self._seq)}"
        sent, began = time.time(), time.monotonic()
        outcome, detail = await submitter.start(job.workflow, job.input, key)
        submission = Submission(
            key, job.workflow, submitter.workflow_id(job.workflow, key), submitter.name,
            outcome, detail, sent, time.monotonic() - began, job.expect_status,
            job.expect_result,
        )  # fmt: skip
        self.submissions.append(submission)
        return submission

    async def submit_all(
        self,
        jobs: Iterable[Job],
        *,
        concurrency: int = 64,
        rate: float | None = None,
        stop: asyncio.Event | None = None,
    ) -> int:
        """Submit every job, ``concurrency`` at a time, at most ``rate`` per second (paced
        evenly), until ``stop`` is set. Returns how many were sent."""
        slots = asyncio.Semaphore(concurrency)
        running = self._in_flight
        began = time.monotonic()
        sent = 0
        for job in jobs:
            if (stop is not None and stop.is_set()) or self._closing.is_set():
                break
            if rate:
                delay = began + sent / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await slots.acquire()
            task = asyncio.create_task(self.submit(job))
            running.add(task)
            task.add_done_callback(running.discard)
            task.add_done_callback(lambda _: slots.release())
            sent += 1
        if running:
            await asyncio.gather(*list(running))
        return sent

    def by_outcome(self, outcome: str) -> list[Submission]:
        return [s for s in self.submissions if s.outcome == outcome]

    # -- reading ----------------------------------------------------------------------------

    async def _read(self, ids: list[str], chunk: int = 500) -> dict[str, Observation | None]:
        out: dict[str, Observation | None] = {}
        for start in range(0, len(ids), chunk):
            part = ids[start : start + chunk]
            pipe = self.redis.pipeline(transaction=False)
            for wf_id in part:
                pipe.hgetall(self.keys.workflow(wf_id))
                pipe.lrange(self.keys.history(wf_id), 0, -1)
            replies = await pipe.execute()
            for i, wf_id in enumerate(part):
                fields, history = replies[2 * i], replies[2 * i + 1]
                out[wf_id] = _observe(fields, history) if fields else None
        return out

    async def _statuses(self, ids: list[str], chunk: int = 2000) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        for start in range(0, len(ids), chunk):
            part = ids[start : start + chunk]
            pipe = self.redis.pipeline(transaction=False)
            for wf_id in part:
                pipe.hget(self.keys.workflow(wf_id), "status")
            for wf_id, raw in zip(part, await pipe.execute(), strict=True):
                out[wf_id] = raw.decode() if raw is not None else None
        return out

    def _watched(self) -> list[str]:
        """Ids that may exist and are not yet seen finished."""
        return list(
            dict.fromkeys(
                s.workflow_id
                for s in self.submissions
                if s.outcome != REFUSED and s.workflow_id not in self.observed
            )
        )

    async def observe(self) -> int:
        """One pass: record every watched workflow that has finished; returns how many
        accepted ones have not finished yet."""
        watched = self._watched()
        statuses = await self._statuses(watched)
        done = [i for i, st in statuses.items() if st in FINISHED]
        for wf_id, obs in (await self._read(done)).items():
            if obs is not None:
                self.observed[wf_id] = obs
        accepted = {s.workflow_id for s in self.submissions if s.outcome == ACCEPTED}
        return sum(1 for i in watched if i in accepted and i not in self.observed)

    async def drain(self, timeout: float, *, every: float = 0.5) -> float:
        """Wait until every accepted workflow has finished, or ``timeout``; returns the
        seconds waited. Redis may be unreachable for a while meanwhile. Polls every
        ``every`` seconds, less often while many are left (one pass reads each of them)."""
        began = time.monotonic()
        while True:
            try:
                left = await self.observe()
            except UNAVAILABLE:
                left = -1
            if left == 0 or time.monotonic() - began > timeout:
                return time.monotonic() - began
            await asyncio.sleep(max(every, left / 20_000))

    async def _recent(self) -> set[str]:
        pipe = self.redis.pipeline(transaction=False)
        for p in range(self.partitions):
            pipe.zrange(self.keys.recent(p), 0, -1)
        return {m.decode() for members in await pipe.execute() for m in members}

    async def verdict(self) -> Verdict:
        """Classify every submission (reads Redis: call it once the faults are over)."""
        await self.observe()
        v = Verdict(submitted=len(self.submissions))
        v.details = self.outcomes()
        samples: dict[str, list[str]] = defaultdict(list)
        unfinished = [i for i in self._watched()]
        current = await self._read(unfinished)
        refused_ids = [s.workflow_id for s in self.submissions if s.outcome == REFUSED]
        refused_present = {
            i for i, st in (await self._statuses(refused_ids)).items() if st is not None
        }
        finished: dict[str, int] = defaultdict(int)
        for s in self.submissions:
            obs = self.observed.get(s.workflow_id) or current.get(s.workflow_id)
            if s.outcome == ACCEPTED:
                v.accepted += 1
            elif s.outcome == REFUSED:
                v.refused += 1
                if s.workflow_id in refused_present:
                    v.unexpected += 1
                    samples["unexpected"].append(s.workflow_id)
                continue
            elif s.outcome == UNKNOWN:
                v.unknown += 1
            else:
                v.errors += 1
                samples["errors"].append(f"{s.workflow_id} {s.detail}")
            if obs is None:
                if s.outcome == ACCEPTED:
                    v.lost += 1
                    samples["lost"].append(f"{s.workflow_id} (missing)")
                else:
                    v.unknown_absent += 1
                continue
            finished[obs.status] += 1
            if obs.status != s.expect_status:
                v.lost += 1
                samples["lost"].append(f"{s.workflow_id} ({obs.status})")
                continue
            if s.outcome == ERROR:
                v.errors_started += 1
            if s.outcome != ACCEPTED:
                v.recovered += 1
                samples["recovered"].append(f"{s.workflow_id} {s.via} {s.outcome}: {s.detail}")
            if s.expect_result is not ANY and obs.result != s.expect_result:
                v.wrong_results += 1
                samples["wrong_results"].append(f"{s.workflow_id} {obs.result!r}")
        seen: set[str] = set()
        for s in self.submissions:
            obs = self.observed.get(s.workflow_id) or current.get(s.workflow_id)
            if obs is None or s.workflow_id in seen:
                continue
            seen.add(s.workflow_id)
            for task, workers in obs.completed.items():
                if len(workers) > 1:
                    v.duplicate_commits += len(workers) - 1
                    samples["duplicate_commits"].append(f"{s.workflow_id} task {task} {workers}")
        known = {s.workflow_id for s in self.submissions}
        strangers = (await self._recent()) - known
        v.unexpected += len(strangers)
        samples["unexpected"].extend(sorted(strangers)[:5])
        v.finished = dict(finished)
        v.samples = {k: items[:5] for k, items in samples.items() if items}
        return v

    def committed_by(self) -> dict[tuple[str, int], set[str]]:
        """(workflow id, task) -> the workers whose commit of it was recorded."""
        return {
            (wf_id, task): set(workers)
            for wf_id, obs in self.observed.items()
            for task, workers in obs.completed.items()
        }

    # -- timing figures ---------------------------------------------------------------------

    def latency(self, via: str | None = None) -> dict[str, float | None]:
        seconds = [s.seconds for s in self.submissions if via is None or s.via == via]
        return {
            "p50": rounded(percentile(seconds, 0.5)),
            "p99": rounded(percentile(seconds, 0.99)),
            "max": rounded(max(seconds, default=None)),
        }

    def first_accepted_after(self, moment: float, via: str | None = None) -> float | None:
        """Seconds from ``moment`` to the first accepted answer received after it (through
        ``via`` only, when given)."""
        times = [
            s.answered_at
            for s in self.submissions
            if s.outcome == ACCEPTED and (via is None or s.via == via)
        ]
        later = [t for t in times if t >= moment]
        return min(later) - moment if later else None


def _short(detail: str) -> str:
    return detail.split(":", 1)[0] if len(detail) > 40 else detail


# -- the attempts log -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attempt:
    at: float  # unix seconds, when the attempt started
    pid: int
    worker: str
    workflow_id: str
    task: int
    step: str
    attempt: int

    @property
    def ref(self) -> tuple[str, int]:
        return self.workflow_id, self.task


class AttemptLog:
    """Reads the lines the chaos app (tests/apps/chaos.py) writes as each attempt starts."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def files(self) -> list[Path]:
        return sorted(self.directory.glob("attempts-*.log"))

    def approximate_count(self) -> int:
        """Attempts so far, from the files' sizes (cheap enough to poll)."""
        files = self.files()
        if not files:
            return 0
        with files[0].open("rb") as f:
            sample = f.read(8192)
        lines = sample.count(b"\n")
        if not lines:
            return 0
        return (
            sum(p.stat().st_size for p in files) * lines // len(sample[: sample.rindex(b"\n") + 1])
        )

    def read(self) -> list[Attempt]:
        out = []
        for path in self.files():
            for line in path.read_text().splitlines():
                at, pid, worker, wf_id, task, step, attempt = line.split()
                out.append(
                    Attempt(int(at) / 1000, int(pid), worker, wf_id, int(task), step, int(attempt))
                )
        out.sort(key=lambda a: a.at)
        return out


def by_task(attempts: Iterable[Attempt]) -> dict[tuple[str, int], list[Attempt]]:
    tasks: dict[tuple[str, int], list[Attempt]] = defaultdict(list)
    for a in attempts:
        tasks[a.ref].append(a)
    return tasks


def reruns(attempts: Iterable[Attempt]) -> int:
    """Attempts beyond the first of each task (at-least-once at work; not duplicates)."""
    return sum(len(items) - 1 for items in by_task(attempts).values())


def first_attempt_after(attempts: Sequence[Attempt], moment: float) -> float | None:
    """Seconds from ``moment`` to the first attempt that started after it."""
    later = [a.at for a in attempts if a.at >= moment]
    return min(later) - moment if later else None


@dataclass
class Recoveries:
    """For the steps a fault left orphaned: seconds from the fault to their re-run."""

    orphans: int = 0
    never_rerun: int = 0
    seconds: list[float] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        return {
            "orphaned_steps": self.orphans,
            "orphans_never_rerun": self.never_rerun,
            "rerun_after_p50_s": rounded(percentile(self.seconds, 0.5)),
            "rerun_after_max_s": rounded(max(self.seconds, default=None)),
        }


def orphan_recoveries(
    attempts: Sequence[Attempt],
    faults: Sequence[tuple[str, float]],
    committed: dict[tuple[str, int], set[str]],
) -> Recoveries:
    """``faults``: (worker name, when) of each worker killed, stopped or frozen. An attempt
    that such a worker started before the fault, whose task it did not commit and that no
    other worker had started meanwhile, was orphaned by the fault; its re-run is the task's
    first attempt by another worker after the fault."""
    out = Recoveries()
    hit = dict(faults)
    for ref, items in by_task(attempts).items():
        for i, a in enumerate(items):
            when = hit.get(a.worker)
            if when is None or a.at > when or a.worker in committed.get(ref, set()):
                continue
            after = [b for b in items[i + 1 :] if b.worker != a.worker]
            if after and after[0].at < when:
                continue  # someone else had it before the fault: not orphaned by it
            out.orphans += 1
            if not after:
                out.never_rerun += 1
                out.samples.append(f"{ref[0]} task {ref[1]} ({a.step}) of {a.worker}")
                continue
            out.seconds.append(after[0].at - when)
    return out


def takeovers(attempts: Sequence[Attempt], worker: str, when: float) -> Recoveries:
    """For a worker frozen at ``when`` (it may commit later, once it runs again): for each
    task it had started, seconds until another worker started it again."""
    out = Recoveries()
    for ref, items in by_task(attempts).items():
        mine = [a for a in items if a.worker == worker and a.at <= when]
        if not mine:
            continue
        out.orphans += 1
        after = [b for b in items if b.worker != worker and b.at >= when]
        if not after:
            out.never_rerun += 1
            out.samples.append(f"{ref[0]} task {ref[1]} ({mine[0].step})")
            continue
        out.seconds.append(after[0].at - when)
    return out


def recovery(checker: Checker, attempts: Sequence[Attempt], moment: float) -> dict[str, Any]:
    """Seconds from ``moment`` (Redis answering again) until the workers started a step,
    and until each way in (submitter) had a start accepted."""
    out: dict[str, Any] = {"workers": rounded(first_attempt_after(attempts, moment))}
    for submitter in checker.submitters:
        out[submitter.name] = rounded(checker.first_accepted_after(moment, submitter.name))
    return out


def slowest(recoveries: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """The worst of each recovery figure (None: never recovered)."""
    names = {name for r in recoveries for name in r}
    out: dict[str, float | None] = {}
    for name in sorted(names):
        values = [r.get(name) for r in recoveries]
        out[name] = None if any(v is None for v in values) else max(values)  # type: ignore[type-var]
    return out
