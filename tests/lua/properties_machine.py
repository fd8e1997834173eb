"""The property-based state machine of test_properties.py (see its docstring): rules that
drive the real Store (so the real Lua scripts) on a real redis-server, each applied to the
model (properties_model.py) as well; the invariants are in properties_checks.py."""

from __future__ import annotations

import asyncio
import hashlib
import sys
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import redis.asyncio as aredis
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from conveyor import ReplayError, Settings, SignalError, codec
from conveyor.errors import ScriptCode
from conveyor.storage import frames
from conveyor.storage.records import Task
from conveyor.storage.scripts import Script
from conveyor.storage.store import Store
from conveyor.storage.transitions import Transition

from .properties_checks import GROUP, QUEUES, KeyspaceChecks
from .properties_model import (
    ERROR,
    EntryKey,
    Model,
    Outcome,
    frame_queues,
    queue_of,
)

T = TypeVar("T")

CONSUMERS = ("c1", "c2", "c3")
SIGNALS = ("go", "ok")
MAX_WORKFLOWS = 4  # started ones (their child workflows come on top)
IDLE_MS = 60_000  # the visibility timeout of the heartbeat rule

steps = st.builds(
    lambda name, queue: f"{name}@{queue}", st.sampled_from("abc"), st.sampled_from(QUEUES)
)
fan_outs = st.builds(
    Outcome, kind=st.just("fan_out"), step=steps, join=steps, items=st.integers(0, 3),
    width=st.integers(0, 3), collect=st.booleans(),
)  # fmt: skip
waits = st.builds(
    Outcome, kind=st.just("wait"), step=steps, signal=st.sampled_from(SIGNALS),
    timer=st.booleans(),
)  # fmt: skip
children = st.builds(
    Outcome, kind=st.just("child"), step=steps, first=steps, budget=st.sampled_from([0, 4]),
    on_cancel=st.sampled_from(["", "u@q1", "u@q2"]),
)  # fmt: skip
# one_of draws each branch equally often: fan-outs and waits twice, as they make the most
# interesting states; 'return' once, as at the top level it ends the workflow
outcomes = st.one_of(
    st.builds(Outcome, kind=st.sampled_from(["next", "sleep"]), step=steps),
    st.just(Outcome("return")),
    fan_outs,
    fan_outs,
    waits,
    waits,
    children,
    st.sampled_from([Outcome("retry"), Outcome("hold"), Outcome("dead")]),
)
picks = st.integers(0, 1 << 16)  # an index into a list, taken modulo its length


@dataclass(eq=False)
class Holder:
    """A consumer running one delivered entry (several may hold one entry after takeovers)."""

    consumer: str
    task: Task
    claimed: bool = False  # a wait timer whose claim this holder already won


@dataclass
class Sent:
    transition: Transition
    key: EntryKey
    ack: bool


def entry_key(task: Task) -> EntryKey:
    return (task.stream, task.entry_id)


class TransitionMachine(KeyspaceChecks, RuleBasedStateMachine):
    """See the module docstring. One namespace (a fresh uuid) per example."""

    # set by run_machine on a subclass: the server, and a mutation of the scripts
    url: ClassVar[str] = ""
    mutant: ClassVar[tuple[bytes, bytes] | None] = None

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.Runner()
        self.redis = aredis.Redis.from_url(self.url)
        self.namespace = f"prop{uuid.uuid4().hex[:12]}"
        self.store = Store(self.redis, Settings(namespace=self.namespace, partitions=2))
        if self.mutant is not None:
            mutate(self.store, *self.mutant)
        self.run(self.store.ensure_groups(QUEUES))
        self.streams = [s for q in QUEUES for s in self.store.keys.streams(q)]
        self.model = Model()
        self.holders: list[Holder] = []
        self.sent: list[Sent] = []
        self.started = 0  # top-level workflows
        # a real clock: cancel.lua stamps the stopped set with the server's, and an entry
        # older than the retention is trimmed from it
        self.clock = int(time.time() * 1000)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run(coro)

    def teardown(self) -> None:
        try:
            if sys.exc_info()[1] is None:  # the steps passed: the final check
                self.drain()
        finally:
            self.run(self._cleanup())
            self.loop.close()

    async def _cleanup(self) -> None:
        keys = [k async for k in self.redis.scan_iter(match=f"{self.namespace}:*", count=1000)]
        if keys:
            await self.redis.delete(*keys)
        await self.redis.aclose()

    # -- helpers ----------------------------------------------------------------------------

    def now(self) -> int:
        self.clock += 1
        return self.clock

    def pick_workflow(self, pick: int) -> str:
        ids = list(self.model.workflows)
        return ids[pick % len(ids)]

    def take(self, entries: list[tuple[str, bytes, dict[bytes, bytes], int]], consumer: str,
             reclaimed: bool) -> None:  # fmt: skip
        """``consumer`` got these entries: admit them as the worker does (a wait timer must
        win its claim, else it is dropped at once), then hold them until they commit."""
        fresh: list[Holder] = []
        for stream, entry_id, fields, deliveries in entries:
            task = self.store.parse_entry(stream, entry_id, fields)
            task.deliveries = deliveries
            key = entry_key(task)
            self.model.deliver(key, reclaimed, consumer)
            assert deliveries == self.model.deliveries[key], (key, deliveries)
            self.check_delivered(task)
            fresh.append(Holder(consumer, task))
        timers = [h for h in fresh if h.task.wait]
        if timers:
            won = self.run(self.store.claim_timers([h.task for h in timers]))
            for holder, w in zip(timers, won, strict=True):
                t = holder.task
                assert w == self.model.claim_timer(t.workflow_id, t.wait or "", t.task), t
                holder.claimed = w
        lost = [h for h in timers if not h.claimed]
        self.holders += [h for h in fresh if h not in lost]
        if lost:
            self.commit_all([(h, Outcome("ack")) for h in lost])

    def check_delivered(self, task: Task) -> None:
        """An entry of an active task carries that task's frame (a join its results, a
        parent's continuation its child's outcome)."""
        wf = self.model.workflows[task.workflow_id]
        if task.task not in wf.active:
            return
        assert task.frame == wf.frames[task.task], (task, wf.frames)
        assert task.step == wf.active[task.task], (task, wf.active)
        if task.wait:
            return  # a timer: its input is the timeout marker
        expected = wf.join_inputs.get(task.task)
        if expected is not None:
            assert codec.loads(task.input) == expected, (task, expected)
        resumed = wf.resumed.get(task.task)
        if resumed is not None:
            got = codec.loads(task.input)
            if resumed.status == "completed":
                assert got == resumed.value, (task, resumed)
            else:
                assert got["workflow_id"] == resumed.child, (task, resumed)
                assert got["$error"]["type"] == resumed.value, (task, resumed)

    def record(self, holder: Holder, kind: str) -> bytes:
        task = holder.task
        return codec.dumps({
            "step": task.step, "task": task.task, "attempt": task.attempt, "status": kind,
            "kind": kind, "entry": f"{task.stream}/{task.entry_id.decode()}",
            "worker": holder.consumer,
        })  # fmt: skip

    def prepare(self, holder: Holder, outcome: Outcome) -> tuple[Transition, int]:
        """The transition ``holder`` commits for ``outcome`` and the code the model expects."""
        task = holder.task
        if outcome.kind == "ack":  # dropped unrun (a timer that lost to its signal)
            expected = self.model.commit(entry_key(task), task.workflow_id, task.task,
                                         task.frame, None, None)  # fmt: skip
            return self.store.transitions.ack(task), expected
        value = task.task  # a branch returns its task number: the join's input says who joined
        expected = self.model.commit(entry_key(task), task.workflow_id, task.task, task.frame,
                                     outcome, value)  # fmt: skip
        return self.build(holder, outcome, codec.dumps(value)), expected

    def build(self, holder: Holder, o: Outcome, value: bytes) -> Transition:
        t, task, now = self.store.transitions, holder.task, self.now()
        rec = self.record(holder, o.kind)
        if o.kind == "next":
            return t.next(task, rec, now, b"", o.step, queue_of(o.step), value)
        if o.kind == "sleep":
            return t.sleep(task, rec, now, b"", o.step, queue_of(o.step), value, 0)
        if o.kind == "return":
            return t.returned(task, rec, now, b"", value, frame_queues(task.frame))
        if o.kind == "fan_out":
            items = [codec.dumps(i) for i in range(o.items)]
            return t.fan_out(
                task, rec, now, b"", step=o.step, queue=queue_of(o.step), join=o.join,
                join_queue=queue_of(o.join), max_parallel=o.width, collect=o.collect,
                items=items,
            )  # fmt: skip
        if o.kind == "wait":
            return t.wait(
                task, rec, now, b"", signal=o.signal, step=o.step, queue=queue_of(o.step),
                timeout_ms=0 if o.timer else None, timer_step=o.step,
                timer_queue=queue_of(o.step), marker=b'{"$timeout":true}',
            )  # fmt: skip
        if o.kind == "child":
            on_cancel = frames.step_ref(o.on_cancel, queue_of(o.on_cancel)) if o.on_cancel else ""
            return t.child(
                task, rec, now, b"", child_workflow="kid", first_step=o.first,
                first_queue=queue_of(o.first), payload=value, step=o.step,
                queue=queue_of(o.step), max_steps=o.budget, on_cancel=on_cancel,
            )  # fmt: skip
        if o.kind == "retry":
            return t.retry(task, rec, now, 0, task.attempt + 1)
        if o.kind == "hold":
            return t.retry(task, b"", now, 0, task.attempt)
        assert o.kind == "dead"
        return t.dead(task, rec, now, error=ERROR, reason="failed",
                      frame_queues=frame_queues(task.frame))  # fmt: skip

    def commit_all(self, chosen: list[tuple[Holder, Outcome]], resend: bool = False) -> None:
        """Commit in one call; ``resend``: send the same call again, as the committer does
        when the connection broke before the reply (every copy must be a duplicate)."""
        prepared = [self.prepare(h, o) for h, o in chosen]
        transitions = [t for t, _ in prepared]
        codes = self.run(self.store.commit(transitions))
        assert codes == [e for _, e in prepared], (codes, prepared)
        sent = [
            Sent(t, entry_key(h.task), t.action == "ack")
            for (h, _), t in zip(chosen, transitions, strict=True)
        ]
        if resend:
            again = self.run(self.store.commit(transitions))
            assert again == [ScriptCode.OK if s.ack else ScriptCode.DUPLICATE for s in sent]
        self.sent += sent
        del self.sent[:-20]

    # -- rules ------------------------------------------------------------------------------

    @initialize(queues=st.lists(st.sampled_from(QUEUES), min_size=1, max_size=3))
    def start_some(self, queues: list[str]) -> None:
        for queue in queues:
            self.start(queue, 0)

    @precondition(lambda self: self.started < MAX_WORKFLOWS)
    @rule(
        queue=st.sampled_from(QUEUES), max_steps=st.sampled_from([0, 4, 8]),
        on_cancel=st.sampled_from([None, "u@q1", "u@q2"]),
    )  # fmt: skip
    def start(self, queue: str, max_steps: int, on_cancel: str | None = None) -> None:
        step = f"s@{queue}"
        # a deterministic id (so the same partition) each time hypothesis replays the steps
        key = f"wf{self.started}"
        self.started += 1
        handler = (on_cancel, queue_of(on_cancel)) if on_cancel else None
        start = self.store.start(
            "w", step, queue, None, idempotency_key=key, max_steps=max_steps, on_cancel=handler
        )
        wf_id, created = self.run(start)
        assert created
        self.model.start(wf_id, step, max_steps, on_cancel or "")

    @rule(
        consumer=st.sampled_from(CONSUMERS), count=st.integers(1, 3),
        how=st.sampled_from(["read", "read", "take_over"]),
    )  # fmt: skip
    def deliver(self, consumer: str, count: int, how: str) -> None:
        """A consumer reads new entries, or takes pending ones over (min idle 0: any of
        them, as if their consumer had died), and holds them without committing yet."""
        if how == "take_over" and self.model.pending():
            self.take_over(consumer, count)
        else:
            self.read(consumer, count)

    def read(self, consumer: str, count: int) -> None:
        entries = self.run(self.store.read(self.streams, consumer, count, None))
        self.take([(s, i, f, 1) for s, i, f in entries], consumer, reclaimed=False)

    @rule(
        consumer=st.sampled_from(CONSUMERS), chosen=st.lists(outcomes, min_size=1, max_size=3),
        resend=st.booleans(),
    )  # fmt: skip
    def work(self, consumer: str, chosen: list[Outcome], resend: bool) -> None:
        """A consumer reads new entries and commits them at once, in one call."""
        before = len(self.holders)
        self.read(consumer, 1)
        fresh = self.holders[before:]
        del self.holders[before:]
        if fresh:
            batch = [(h, chosen[i % len(chosen)]) for i, h in enumerate(fresh)]
            self.commit_all(batch, resend)

    def take_over(self, consumer: str, count: int) -> None:
        taken = self.run(self.store.reclaim([(s, count) for s in self.streams], consumer, 0))
        self.take(taken, consumer, reclaimed=True)

    @precondition(lambda self: self.holders)
    @rule(pick=picks, outcome=outcomes, resend=st.booleans())
    def commit(self, pick: int, outcome: Outcome, resend: bool) -> None:
        """One holder commits (it may be stale: taken over, or already committed)."""
        self.commit_all([(self.holders.pop(pick % len(self.holders)), outcome)], resend)

    @precondition(lambda self: len(self.holders) >= 2)
    @rule(chosen=st.lists(st.tuples(picks, outcomes), min_size=2, max_size=4))
    def commit_batch(self, chosen: list[tuple[int, Outcome]]) -> None:
        """Several holders commit in one call (one script call per partition), sometimes
        the same entry twice with different outcomes: the first one wins."""
        batch = [(self.holders[p % len(self.holders)], o) for p, o in chosen]
        for holder, _ in batch:
            if holder in self.holders:
                self.holders.remove(holder)
        self.commit_all(batch)

    @precondition(lambda self: self.sent)
    @rule(pick=picks)
    def replay_commit(self, pick: int) -> None:
        """A transition sent before is sent again verbatim (a retried pipeline)."""
        sent = self.sent[pick % len(self.sent)]
        assert sent.key in self.model.acked
        [code] = self.run(self.store.commit([sent.transition]))
        assert code == (ScriptCode.OK if sent.ack else ScriptCode.DUPLICATE)

    @rule(what=st.sampled_from(["promote", "promote", "trim"]))
    def housekeeping(self, what: str) -> None:
        """A worker's periodic jobs: promote due delayed tasks, trim acknowledged entries."""
        if what == "promote":
            self.promote()
        else:
            self.run(self.store.trim(QUEUES))

    def promote(self) -> None:
        moved, _ = self.run(self.store.promote(QUEUES))
        assert moved == self.model.promote()

    @precondition(lambda self: self.holders)
    @rule(pick=picks, thief=st.sampled_from(CONSUMERS), stale=st.booleans())
    def heartbeat(self, pick: int, thief: str, stale: bool) -> None:
        """A consumer renews the leases of the entries it holds, after every pending entry
        has been idle past the visibility timeout: the entries it still owns are renewed
        and no other consumer takes them over; the ones another took over already are
        reported lost. Then ``thief`` takes over every entry whose lease ran out."""
        # ``stale``: preferably a consumer that holds an entry another one took over
        holders = [h for h in self.holders if self.model.owner[entry_key(h.task)] != h.consumer]
        holders = (stale and holders) or self.holders
        consumer = holders[pick % len(holders)].consumer
        mine = [entry_key(h.task) for h in self.holders if h.consumer == consumer]
        self.run(self.age_pending())
        plan: dict[str, list[bytes]] = {}
        for stream, eid in mine:
            plan.setdefault(stream, []).append(eid)
        lost = self.run(self.store.heartbeat(consumer, plan))
        expected, renewed = self.model.heartbeat(consumer, mine)
        assert sorted(lost) == sorted(eid for _, eid in expected), (lost, expected)
        taken = self.run(self.store.reclaim([(s, 1000) for s in self.streams], thief, IDLE_MS))
        got = {(s, eid) for s, eid, _, _ in taken}
        assert got == self.model.pending() - renewed, (got, renewed)
        self.take(taken, thief, reclaimed=True)

    async def age_pending(self) -> None:
        """Every pending entry, owner kept, as if idle for twice the visibility timeout."""
        pipe = self.redis.pipeline(transaction=False)
        for stream in self.streams:
            pipe.xpending_range(stream, GROUP, "-", "+", 10_000)
        listed = await pipe.execute()
        pipe = self.redis.pipeline(transaction=False)
        for stream, pending in zip(self.streams, listed, strict=True):
            for p in pending:
                pipe.xclaim(stream, GROUP, p["consumer"], 0, [p["message_id"]],
                            idle=2 * IDLE_MS, justid=True)  # fmt: skip
        await pipe.execute()

    @precondition(lambda self: self.model.dead)
    @rule(pick=picks)
    def replay(self, pick: int) -> None:
        """An operator replays a dead letter: its failed task runs again in its workflow
        (only a failed one). Only letters whose task was its workflow's sole line of work:
        replay does not restore what the failure dropped (fan-out siblings, waits)."""
        letters = [d for d in self.model.dead if d.sole] or self.model.dead
        letter = letters[pick % len(letters)]
        if not letter.sole and self.model.workflows[letter.workflow_id].status == "failed":
            return
        dead_id = self.run(self.find_dead_letter(letter.workflow_id, letter.task))
        runs_again = self.model.replay(letter)
        try:
            assert self.run(self.store.replay(dead_id)) == letter.workflow_id
            replayed = True
        except ReplayError:
            replayed = False
        assert replayed == runs_again, (letter, replayed)

    async def find_dead_letter(self, workflow_id: str, task: int) -> str:
        for p in range(self.store.settings.partitions):
            for eid, f in await self.redis.xrange(self.store.keys.dead(p)):
                if f[b"workflow_id"].decode() == workflow_id and int(f[b"task"]) == task:
                    return f"p{p}:{eid.decode()}"
        raise AssertionError(f"no dead letter of {workflow_id} task {task}")

    @precondition(lambda self: self.model.workflows)
    @rule(pick=picks, event=st.sampled_from([*SIGNALS, *SIGNALS, "cancel"]))
    def outside(self, pick: int, event: str) -> None:
        """A client signals or cancels a workflow: one that waits, else one that runs, else
        any (a finished one refuses both)."""
        flows = list(self.model.workflows.values())
        live = [w.id for w in flows if w.waits] or [w.id for w in flows if not w.terminal]
        wf_id = live[pick % len(live)] if live else self.pick_workflow(pick)
        if event == "cancel":
            self.cancel(wf_id)
        else:
            self.signal(wf_id, event)

    def signal(self, wf_id: str, name: str) -> None:
        expected = self.model.signal(wf_id, name)
        try:
            got = self.run(self.store.signal(wf_id, name, "payload"))
        except SignalError:
            got = "finished"
        assert got == expected

    def cancel(self, wf_id: str) -> None:
        expected = self.model.cancel(wf_id)
        assert self.run(self.store.cancel(wf_id)) == expected

    # -- invariants -------------------------------------------------------------------------

    @invariant()
    def keyspace_matches_model(self) -> None:
        self.run(self.check_keyspace())

    # -- the final check --------------------------------------------------------------------

    def drain(self) -> None:
        """Every consumer dies; one more takes over everything, finishes every task with
        'return', and signals every wait, until nothing is left (a child's end resumes its
        parent). Then every workflow must be terminal."""
        self.holders.clear()
        for _ in range(40):
            self.promote()
            for wf in self.model.workflows.values():
                for name, _ in list(wf.waits):
                    self.signal(wf.id, name)
            self.take_over("drain", 1000)
            self.read("drain", 1000)
            batch = [(h, Outcome("return")) for h in self.holders]
            self.holders.clear()
            if not batch and self.model.delayed == 0:
                break
            self.commit_all(batch)
            self.keyspace_matches_model()
        else:
            raise AssertionError("the drain did not converge")
        self.keyspace_matches_model()
        assert not self.model.pending() and self.model.delayed == 0
        for wf in self.model.workflows.values():
            assert wf.terminal, f"workflow {wf.id} is {wf.status} after the drain: {wf}"


def mutate(store: Store, old: bytes, new: bytes) -> None:
    """Replace ``old`` by ``new`` in every script of ``store``'s registry that has it (its
    own copy: the files and every other registry are untouched)."""
    changed = 0
    for name, script in list(store.scripts.scripts.items()):
        if old in script.source:
            source = script.source.replace(old, new)
            sha = hashlib.sha1(source).hexdigest()
            store.scripts.scripts[name] = Script(name, source, sha, script.num_keys)
            changed += 1
    assert changed, f"the mutant {old!r} matches no script"
