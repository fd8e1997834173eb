"""Property-based tests of the transition scripts: random interleavings against real Redis.

A hypothesis state machine drives the real :class:`Store` (and so the real Lua scripts) on a
real redis-server: it starts workflows, reads their tasks as several consumers, takes
entries over from each other (XAUTOCLAIM with no minimum idle time, so any pending entry can
be stolen at any point), commits every kind of outcome (next, sleep, return, fan_out, wait,
retry, hold-back, dead), commits stale copies after a takeover and replays old transitions
verbatim, promotes delayed tasks, signals, cancels and trims. Each operation is also applied
to a small model (properties_model.py); after every step the keyspace is compared with it:

1. every task is committed at most once: the codes Redis returns are the model's, and each
   workflow's history has at most one final record per task and none after it;
2. every workflow is in exactly one terminal state once it ends, and never leaves it; once
   everything is drained (teardown) every workflow is terminal;
3. no task is both pending (in a PEL, in a delayed set, or queued) and done: committed
   entries leave the PEL, and a queued entry of a running workflow names an active task;
   plus: every active task of a running workflow still has an entry or a wait (none lost).

Wait timers are admitted as the worker admits them (claim.lua, and a timer that lost is
acknowledged unrun). The machine found that a timer that had won lost its claim when its
entry was delivered again (a takeover, or a retry of its step), dropping the task; the two
tests at the end of this module reproduce that by hand.
A second test runs the machine against mutated copies of the scripts (never the files) to
show that it catches each broken guarantee.

Settings profiles, chosen by the environment variable ``CONVEYOR_HYPOTHESIS_PROFILE``:
``ci`` (the default: 50 runs of up to 30 steps per Redis version, sized for the suite's time
budget) and ``full`` (500 runs of up to 60 steps: a local soak of several minutes):

    CONVEYOR_HYPOTHESIS_PROFILE=full .venv/bin/pytest tests/lua/test_properties.py -n 2

A failure prints the shortest sequence of steps found and a ``@reproduce_failure`` blob.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import pytest
import redis.asyncio as aredis
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from conveyor import Settings, SignalError, codec
from conveyor.embedded import EmbeddedRedis
from conveyor.errors import ScriptCode
from conveyor.storage.records import Task
from conveyor.storage.scripts import Script
from conveyor.storage.store import Store
from conveyor.storage.transitions import Transition

from .properties_model import (
    ERROR,
    FINAL_KINDS,
    TERMINAL,
    EntryKey,
    Model,
    Outcome,
    frame_queues,
    queue_of,
)

T = TypeVar("T")

PROFILES = {
    "ci": settings(max_examples=50, stateful_step_count=30),
    "full": settings(max_examples=500, stateful_step_count=60),
}
for _name, _profile in PROFILES.items():
    settings.register_profile(
        f"conveyor-lua-{_name}",
        _profile,
        deadline=None,
        database=None,  # nothing written into the tree; print_blob reproduces a failure
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
PROFILE = os.environ.get("CONVEYOR_HYPOTHESIS_PROFILE", "ci")
# applied to this module's tests only (load_profile would change every other test's)
TEST_SETTINGS = settings.get_profile(f"conveyor-lua-{PROFILE}")

GROUP = "agents"
QUEUES = ("q1", "q2")
CONSUMERS = ("c1", "c2", "c3")
SIGNALS = ("go", "ok")
MAX_WORKFLOWS = 4

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
# one_of draws each branch equally often: fan-outs and waits twice, as they make the most
# interesting states; 'return' once, as at the top level it ends the workflow
outcomes = st.one_of(
    st.builds(Outcome, kind=st.sampled_from(["next", "sleep"]), step=steps),
    st.just(Outcome("return")),
    fan_outs,
    fan_outs,
    waits,
    waits,
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


class TransitionMachine(RuleBasedStateMachine):
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
        self.clock = 1_000

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
            self.model.deliver(key, reclaimed)
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
        """An entry of an active task carries that task's frame (and a join its results)."""
        wf = self.model.workflows[task.workflow_id]
        if wf.terminal or task.task not in wf.active:
            return
        assert task.frame == wf.frames[task.task], (task, wf.frames)
        assert task.step == wf.active[task.task], (task, wf.active)
        expected = wf.join_inputs.get(task.task)
        if expected is not None:
            assert codec.loads(task.input) == expected, (task, expected)

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

    @precondition(lambda self: len(self.model.workflows) < MAX_WORKFLOWS)
    @rule(queue=st.sampled_from(QUEUES), max_steps=st.sampled_from([0, 4, 8]))
    def start(self, queue: str, max_steps: int) -> None:
        step = f"s@{queue}"
        # a deterministic id (so the same partition) each time hypothesis replays the steps
        key = f"wf{len(self.model.workflows)}"
        wf_id, created = self.run(
            self.store.start("w", step, queue, None, idempotency_key=key, max_steps=max_steps)
        )
        assert created
        self.model.start(wf_id, step, max_steps)

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
        self.run(self._check_keyspace())

    async def _check_keyspace(self) -> None:
        keys, r = self.store.keys, self.redis
        pipe = r.pipeline(transaction=False)
        for stream in self.streams:
            pipe.xrange(stream)
            pipe.xpending_range(stream, GROUP, "-", "+", 10_000)
        delayed_keys = [keys.delayed(p, q) for q in QUEUES for p in range(2)]
        for key in delayed_keys:
            pipe.zrange(key, 0, -1)
        wf_ids = list(self.model.workflows)
        for wf_id in wf_ids:
            pipe.hgetall(keys.workflow(wf_id))
            pipe.lrange(keys.history(wf_id), 0, -1)
            pipe.xlen(keys.events(wf_id))
            pipe.ttl(keys.workflow(wf_id))
        replies = iter(await pipe.execute())
        # every entry still owed a commit: (workflow id, task, is a timer, where)
        owed: list[tuple[str, int, bool, str]] = []
        pel: set[EntryKey] = set()
        for stream in self.streams:
            entries, pending = next(replies), next(replies)
            bodies = dict(entries)
            for p in pending:
                eid = p["message_id"]
                pel.add((stream, eid))
                # nothing pending is lost: trim never deletes a pending entry's body
                assert eid in bodies, f"pending entry {stream} {eid!r} was deleted"
                f = bodies[eid]
                owed.append((f[b"workflow_id"].decode(), int(f[b"task"]), b"wait" in f, "PEL"))
            for eid, f in entries:
                if (stream, eid) not in self.model.delivered:  # only this machine reads
                    owed.append(
                        (f[b"workflow_id"].decode(), int(f[b"task"]), b"wait" in f, "queued")
                    )
        # 3. committed entries left the PEL; everything delivered and not committed is there
        assert pel == self.model.pending(), pel ^ self.model.pending()
        delayed = 0
        for _ in delayed_keys:
            for member in next(replies):
                m = codec.loads(member)
                owed.append((m["workflow_id"], int(m["task"]), "wait" in m, "delayed"))
                delayed += 1
        assert delayed == self.model.delayed
        for wf_id in wf_ids:
            fields, history, events, ttl = (
                next(replies),
                next(replies),
                next(replies),
                next(replies),
            )
            self._check_workflow(wf_id, fields, history, events, ttl)
        self._check_owed(owed)

    def _check_workflow(self, wf_id: str, fields: dict[bytes, bytes], history: list[bytes],
                        events: int, ttl: int) -> None:  # fmt: skip
        wf = self.model.workflows[wf_id]
        status = fields[b"status"].decode()
        # 2. exactly one terminal state, never left: the model finished it at most once
        assert status == wf.status, (wf_id, status, wf.status)
        assert len(wf.endings) == (1 if wf.terminal else 0), wf.endings
        assert (ttl > 0) if wf.terminal else (ttl == -1), (wf_id, status, ttl)
        assert int(fields[b"seq"]) == wf.seq
        active = {int(k[2:]): v.decode() for k, v in fields.items() if k.startswith(b"t:")}
        waits = {k.decode() for k in fields if k.startswith(b"w:")}
        assert active == wf.active, (wf_id, active, wf.active)
        assert waits == {f"w:{s}:{n}" for s, n in wf.waits}, (wf_id, waits, wf.waits)
        if status not in TERMINAL:
            assert (status == "waiting") == bool(waits), (status, waits)
        # 1. each task committed at most once: one final record per task, nothing after it
        assert len(history) == wf.records, (len(history), wf.records)
        assert events == wf.records + (1 if wf.terminal else 0)
        final: dict[int, str] = {}
        entries: set[str] = set()
        for raw in history:
            rec = codec.loads(raw)
            assert rec["entry"] not in entries, f"entry {rec['entry']} recorded twice"
            entries.add(rec["entry"])
            task = int(rec["task"])
            assert task not in final, f"task {task} of {wf_id} recorded after {final[task]}"
            if rec["kind"] in FINAL_KINDS:
                final[task] = rec["kind"]
        # done tasks are no longer active (a retry's record is not final)
        assert not set(final) & set(wf.active), (final, wf.active)

    def _check_owed(self, owed: list[tuple[str, int, bool, str]]) -> None:
        carried: set[tuple[str, int]] = set()
        for wf_id, task, timer, where in owed:
            wf = self.model.workflows[wf_id]
            carried.add((wf_id, task))
            if wf.terminal or timer:
                continue  # dropped when read (a timer may have lost to its signal)
            # 3. a pending or queued task of a running workflow is not done
            assert task in wf.active, f"{where} entry of {wf_id} task {task} is done"
        # ... and no active task is lost: each has an entry somewhere, or waits for a signal
        for wf in self.model.workflows.values():
            waiting = {n for _, n in wf.waits}
            for task in wf.active:
                assert (wf.id, task) in carried or task in waiting, (
                    f"task {task} of {wf.id} is active but nothing will ever run it"
                )

    # -- the final check --------------------------------------------------------------------

    def drain(self) -> None:
        """Every consumer dies; one more takes over everything, finishes every task with
        'return', and signals every wait, until nothing is left. Then every workflow must
        be terminal."""
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


def run_machine(url: str, config: settings, mutant: tuple[bytes, bytes] | None = None) -> None:
    machine = type("TransitionMachine", (TransitionMachine,), {"url": url, "mutant": mutant})
    run_state_machine_as_test(machine, settings=config)


@pytest.mark.timeout(300 if PROFILE == "ci" else 7200)
def test_transitions_keep_their_invariants(redis_server: EmbeddedRedis) -> None:
    run_machine(redis_server.url, TEST_SETTINGS)


# -- the machine must be able to fail: each mutant breaks one guarantee of the scripts -------

MUTANTS: dict[str, tuple[bytes, bytes]] = {
    # a redelivered entry is committed again (its ACK said it was done already)
    "ignores_the_ack": (b"  if acked == 0 then\n    return 1\n  end\n", b""),
    # committed entries stay pending forever
    "skips_the_ack": (
        b"local acked = redis.call('XACK', K[1], group, A[2])",
        b"local acked = 1",
    ),
    # a task of a cancelled or failed workflow, or one another entry already did, runs again
    "ignores_the_task": (
        b"if redis.call('HDEL', W.key, task, 'k:' .. A[3]) == 0 then\n    return 1\n  end",
        b"redis.call('HDEL', W.key, task, 'k:' .. A[3])",
    ),
    # a failed or cancelled workflow keeps its tasks and waits active
    "finish_keeps_tasks": (b"    hdel_all(W.key, drop)\n", b""),
}


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


@pytest.mark.parametrize("name", list(MUTANTS))
def test_the_machine_catches_a_broken_script(redis7: EmbeddedRedis, name: str) -> None:
    config = settings(
        TEST_SETTINGS, max_examples=100, derandomize=True, phases=[Phase.generate],
        print_blob=False, report_multiple_bugs=False,
    )  # fmt: skip
    with pytest.raises(AssertionError):
        run_machine(redis7.url, config, MUTANTS[name])


# -- bugs found by the machine, reproduced by hand --------------------------------------------


@pytest.fixture
async def store(redis: aredis.Redis, namespace: str) -> Store:
    s = Store(redis, Settings(namespace=namespace, partitions=2))
    await s.ensure_groups(["default"])
    return s


async def fired_timer(store: Store, consumer: str) -> tuple[str, Task]:
    """A workflow waits for signal 'ok' with a timeout that is due at once; ``consumer``
    reads the timer and wins its claim (the worker's admission): the step now runs."""
    wf_id, _ = await store.start("w", "ask", "default", None)
    [entry] = await store.read(store.keys.streams("default"), consumer, 10, None)
    task = store.parse_entry(*entry)
    call = store.transitions.wait(
        task, b'{"task":1}', 1, b"", signal="ok", step="then", queue="default",
        timeout_ms=0, timer_step="then", timer_queue="default", marker=b'{"$timeout":true}',
    )  # fmt: skip
    assert await store.commit([call]) == [ScriptCode.OK]
    assert await store.promote(["default"]) == (1, False)
    [entry] = await store.read(store.keys.streams("default"), consumer, 10, None)
    timer = store.parse_entry(*entry)
    assert timer.wait == "ok"
    assert await store.claim_timers([timer]) == [True]
    return wf_id, timer


async def admit_and_finish(store: Store, task: Task) -> list[int | Exception]:
    """What a worker does with a delivered task: a timer must win its claim, else it is
    acknowledged unrun; a task that runs returns (ends its workflow)."""
    if task.wait and await store.claim_timers([task]) == [False]:
        return await store.commit([store.transitions.ack(task)])
    call = store.transitions.returned(task, b'{"task":2}', 2, b"", b'"done"', None)
    return await store.commit([call])


async def test_timer_won_then_taken_over_is_not_dropped(store: Store) -> None:
    """A timer's claim is kept per task: after a takeover the new consumer's claim wins
    again (the wait is gone, resolved by this very timer), so the step runs."""
    wf_id, _ = await fired_timer(store, "c1")
    # c1 dies while running the timer's step; c2 takes its entry over
    plan = [(s, 10) for s in store.keys.streams("default")]
    [taken] = await store.reclaim(plan, "c2", 0)
    again = store.parse_entry(*taken[:3])
    await admit_and_finish(store, again)
    assert await store.get_status(wf_id) == "completed"


async def test_timer_won_then_retried_is_not_dropped(store: Store) -> None:
    """A retry of a task started by its wait timer carries the 'wait' field
    (transitions.retry copies it): the retried entry claims again and wins."""
    wf_id, timer = await fired_timer(store, "c1")
    # the timer's step fails and is retried
    retry = store.transitions.retry(timer, b'{"task":2}', 2, 0, timer.attempt + 1)
    assert await store.commit([retry]) == [ScriptCode.OK]
    assert await store.promote(["default"]) == (1, False)
    [entry] = await store.read(store.keys.streams("default"), "c1", 10, None)
    await admit_and_finish(store, store.parse_entry(*entry))
    assert await store.get_status(wf_id) == "completed"
