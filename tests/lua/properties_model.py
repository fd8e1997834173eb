"""A small, pure model of what the transition scripts must do, for test_properties.py.

It knows nothing of Redis: the state machine applies every operation it sends to Redis to
this model as well, and compares the two (result codes, and then the real keyspace). The
model is written from the scripts' documented contract (docs/architecture.md, the script
headers), not from their code paths, and keeps only what the invariants need:

- per workflow: its status, its task counter (``seq``), the active tasks (``t:<n>`` fields,
  task -> step) with the frame their entries carry, open waits, fan-out groups, buffered
  signals, and the number of history records written;
- per stream entry that was delivered: whether a transition already acknowledged it, and
  which consumer owns it (a heartbeat renews only its own);
- child workflows (a parent task waits on each; the child's end resumes it once), on_cancel
  tasks (they run in a cancelled workflow), and dead letters (a replay re-runs one).

Step names carry their queue, ``<name>@<queue>``, so a frame ('<group>|<i>|<step>|<join>')
says by itself which queues its branch and join go to, as a worker knows from its app.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from conveyor.errors import STEP_BUDGET_EXCEEDED, ScriptCode
from conveyor.storage.frames import CANCEL_FRAME

TERMINAL = frozenset({"completed", "failed", "cancelled"})
ENDED = {"completed": ScriptCode.ENDED_COMPLETED, "failed": ScriptCode.ENDED_FAILED}
#: history record kinds that finish a task (a retry or hold-back keeps it active)
FINAL_KINDS = frozenset({"next", "sleep", "return", "fan_out", "wait", "dead"})
#: the error every failing outcome reports (also what a collecting join receives)
ERROR: dict[str, Any] = {"type": "Boom", "message": "failed on purpose", "step": "x"}
CANCELLED_ERROR = "WorkflowCancelled"  # what a parent gets from a cancelled child

EntryKey = tuple[str, bytes]  # (stream, entry id): ids are only unique within a stream


def queue_of(step: str) -> str:
    return step.rpartition("@")[2]


def frame_queues(frame: str) -> tuple[str, str] | None:
    """(join queue, branch queue) of a branch's frame; None at the top level."""
    if frame in ("", CANCEL_FRAME):
        return None
    _, _, step, join = frame.split("|")
    return queue_of(join), queue_of(step)


@dataclass(frozen=True)
class Outcome:
    """What a step 'returned'. ``kind`` is one of: next, sleep, return, fan_out, wait,
    child, retry, hold (a limit's hold-back: retry with no history record), dead; or ack
    (the entry is dropped unrun: a wait timer that lost to its signal)."""

    kind: str
    step: str = ""  # next/sleep: the next step; fan_out: the branch step; wait, child: 'then'
    join: str = ""  # fan_out
    items: int = 0  # fan_out
    width: int = 0  # fan_out: max_parallel (0 = all)
    collect: bool = False  # fan_out: on_error="collect"
    signal: str = ""  # wait
    timer: bool = False  # wait: with a timeout that is due at once
    first: str = ""  # child: its first step
    budget: int = 0  # child: its max_steps
    on_cancel: str = ""  # child: its on_cancel step ('' none)


@dataclass
class Wait:
    signal: str
    task: int
    frame: str


@dataclass
class Group:
    step: str
    join: str
    frame: str  # the frame the join runs in
    n: int
    left: int
    launched: int
    collect: bool
    results: dict[int, Any] = field(default_factory=dict)


@dataclass
class DeadLetter:
    workflow_id: str
    task: int
    step: str
    frame: str
    sole: bool  # the failed task was the workflow's only line of work (see Model.replay)


@dataclass
class Resumed:
    """What a child's end hands its parent's waiting task: the child's value (completed),
    else an error marker of the given type naming the child."""

    child: str
    status: str
    value: Any


@dataclass
class WorkflowModel:
    id: str
    max_steps: int
    on_cancel: str = ""  # its on_cancel step ('' none)
    parent: tuple[str, int] | None = None  # (parent id, the parent task waiting on it)
    status: str = "running"
    seq: int = 1
    groups_seq: int = 0
    active: dict[int, str] = field(default_factory=dict)  # t:<n> -> step
    frames: dict[int, str] = field(default_factory=dict)  # frame of task n's entries
    waits: dict[tuple[str, int], Wait] = field(default_factory=dict)
    groups: dict[int, Group] = field(default_factory=dict)
    buffered: dict[str, int] = field(default_factory=dict)
    records: int = 0
    endings: list[str] = field(default_factory=list)  # every finish: at most one, ever
    join_inputs: dict[int, Any] = field(default_factory=dict)  # join task -> its input
    timers_won: set[int] = field(default_factory=set)  # tasks whose wait timer resolved it
    children: dict[str, int] = field(default_factory=dict)  # 'c:<id>' fields -> parent task
    resumed: dict[int, Resumed] = field(default_factory=dict)  # what a child handed a task
    replays: int = 0
    replayed: Counter[int] = field(default_factory=Counter)  # task -> times replayed

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


class ModelError(AssertionError):
    """The model itself reached a state the contract rules out (e.g. a second finish)."""


class Model:
    def __init__(self) -> None:
        self.workflows: dict[str, WorkflowModel] = {}
        self.delivered: set[EntryKey] = set()  # read by some consumer
        self.acked: set[EntryKey] = set()  # acknowledged by a transition
        self.deliveries: dict[EntryKey, int] = {}
        self.delayed = 0  # members the delayed sets should hold
        self.owner: dict[EntryKey, str] = {}  # consumer of each pending entry
        self.dead: list[DeadLetter] = []  # the dead-letter streams' entries

    # -- starting and reading ---------------------------------------------------------------

    def start(self, workflow_id: str, step: str, max_steps: int, on_cancel: str = "",
              parent: tuple[str, int] | None = None) -> None:  # fmt: skip
        if workflow_id in self.workflows:
            raise ModelError(f"start created {workflow_id} twice")
        wf = WorkflowModel(workflow_id, max_steps, on_cancel, parent)
        wf.active[1], wf.frames[1] = step, ""
        self.workflows[workflow_id] = wf

    def deliver(self, key: EntryKey, reclaimed: bool, consumer: str) -> None:
        self.owner[key] = consumer
        if reclaimed:
            if key not in self.delivered or key in self.acked:
                raise ModelError(f"reclaim took {key}, which is not pending")
            self.deliveries[key] += 1
        else:
            if key in self.delivered:
                raise ModelError(f"XREADGROUP > delivered {key} a second time")
            self.delivered.add(key)
            self.deliveries[key] = 1

    def pending(self) -> set[EntryKey]:
        return self.delivered - self.acked

    def heartbeat(
        self, consumer: str, keys: list[EntryKey]
    ) -> tuple[list[EntryKey], set[EntryKey]]:
        """(the entries another consumer took over, the ones renewed); an entry no longer
        pending is neither."""
        pending = self.pending()
        lost = [k for k in keys if k in pending and self.owner[k] != consumer]
        return lost, {k for k in keys if k in pending and self.owner[k] == consumer}

    # -- outside operations -----------------------------------------------------------------

    def cancel(self, workflow_id: str) -> str:
        """A cancel ends the workflow, enqueues its on_cancel step, then cancels its
        children in turn (Store.cancel)."""
        wf = self.workflows[workflow_id]
        if wf.terminal:
            return wf.status
        children = list(wf.children)
        self._finish(wf, "cancelled", CANCELLED_ERROR)
        if wf.on_cancel:
            wf.seq += 1  # no step budget: it must run
            wf.active[wf.seq], wf.frames[wf.seq] = wf.on_cancel, CANCEL_FRAME
        for child in children:
            self.cancel(child)
        return "cancelled"

    def replay(self, letter: DeadLetter) -> bool:
        """Replay a dead letter: only a failed workflow runs again (its failed task, and
        nothing else: a sibling line of work dropped by the failure is not restored, so the
        machine replays only letters whose task was the workflow's sole line of work)."""
        wf = self.workflows[letter.workflow_id]
        if wf.status != "failed":
            return False
        self.dead.remove(letter)
        wf.status = "running"
        wf.replays += 1
        wf.replayed[letter.task] += 1
        wf.active[letter.task], wf.frames[letter.task] = letter.step, letter.frame
        return True

    def signal(self, workflow_id: str, name: str) -> str:
        """'finished', 'delivered' (to the oldest wait for it) or 'buffered'."""
        wf = self.workflows[workflow_id]
        if wf.terminal:
            return "finished"
        mine = [w for w in wf.waits.values() if w.signal == name]
        if not mine:
            wf.buffered[name] = wf.buffered.get(name, 0) + 1
            return "buffered"
        oldest = min(mine, key=lambda w: w.task)
        del wf.waits[(name, oldest.task)]
        if not wf.waits:
            wf.status = "running"
        return "delivered"

    def claim_timer(self, workflow_id: str, name: str, task: int) -> bool:
        wf = self.workflows[workflow_id]
        if wf.waits.pop((name, task), None) is None:
            # resolved already: a timer that won keeps winning while its task is active (its
            # entry delivered again after a takeover, or its step retried); a signal's win
            # leaves no mark, so its timer loses
            return task in wf.timers_won and task in wf.active and not wf.terminal
        if not wf.waits:
            wf.status = "running"
        wf.timers_won.add(task)
        return True

    def promote(self) -> int:
        moved, self.delayed = self.delayed, 0
        return moved

    # -- commits ----------------------------------------------------------------------------

    def commit(
        self, key: EntryKey, workflow_id: str, task: int, frame: str, outcome: Outcome | None,
        value: Any,
    ) -> int:  # fmt: skip
        """The code commit.lua must return for this transition (``outcome`` None: 'ack')."""
        first = key not in self.acked
        self.acked.add(key)
        if outcome is None:
            return ScriptCode.OK
        if not first:
            return ScriptCode.DUPLICATE
        wf = self.workflows[workflow_id]
        if task not in wf.active:
            return ScriptCode.DUPLICATE
        if outcome.kind in ("retry", "hold"):
            if outcome.kind == "retry":  # a hold-back writes no history record
                wf.records += 1
            self.delayed += 1
            return ScriptCode.OK
        step = wf.active.pop(task)
        wf.records += 1
        ended_before = len(wf.endings)
        if frame == CANCEL_FRAME:  # the on_cancel step: recorded, the workflow stays cancelled
            if outcome.kind == "dead":
                self.dead.append(DeadLetter(wf.id, task, step, frame, False))
            return ScriptCode.OK
        if outcome.kind == "dead" and not (frame and self._collects(wf, frame)):
            sole = not wf.active and not wf.waits and not wf.children
            self.dead.append(DeadLetter(wf.id, task, step, frame, sole))
        self._apply(wf, task, frame, outcome, value)
        if len(wf.endings) > ended_before:
            return ENDED.get(wf.endings[-1], ScriptCode.OK)
        return ScriptCode.OK

    def _apply(self, wf: WorkflowModel, task: int, frame: str, o: Outcome, value: Any) -> None:
        if o.kind == "dead":
            if frame and self._collects(wf, frame):
                self._branch_return(wf, frame, {"$error": ERROR})
            else:
                self._finish(wf, "failed", ERROR["type"])
        elif o.kind == "return":
            if frame == "":
                self._finish(wf, "completed", value)
            else:
                self._branch_return(wf, frame, value)
        elif o.kind in ("next", "sleep"):
            if self._new_task(wf, o.step, frame) is not None and o.kind == "sleep":
                self.delayed += 1
        elif o.kind == "fan_out":
            self._fan_out(wf, frame, o)
        elif o.kind == "wait":
            seq = self._new_task(wf, o.step, frame)
            if seq is None:
                return
            if wf.buffered.get(o.signal, 0) > 0:
                wf.buffered[o.signal] -= 1  # the signal came first: its 'then' is enqueued
                return
            wf.waits[(o.signal, seq)] = Wait(o.signal, seq, frame)
            wf.status = "waiting"
            if o.timer:
                self.delayed += 1
        elif o.kind == "child":
            seq = self._new_task(wf, o.step, frame)
            if seq is None:
                return
            child = f"{wf.id}~{task}"  # transitions.child_workflow_id: the committing task
            wf.children[child] = seq
            self.start(child, o.first, o.budget, o.on_cancel, (wf.id, seq))
        else:
            raise ModelError(f"unknown outcome {o.kind}")

    def _fan_out(self, wf: WorkflowModel, frame: str, o: Outcome) -> None:
        wf.groups_seq += 1
        gid = wf.groups_seq
        if o.items == 0:
            seq = self._new_task(wf, o.join, frame)
            if seq is not None:
                wf.join_inputs[seq] = []
            return
        width = o.width if 0 < o.width <= o.items else o.items
        wf.groups[gid] = Group(o.step, o.join, frame, o.items, o.items, width, o.collect)
        for i in range(1, width + 1):
            if self._new_task(wf, o.step, f"{gid}|{i}|{o.step}|{o.join}") is None:
                return

    def _collects(self, wf: WorkflowModel, frame: str) -> bool:
        group = wf.groups.get(int(frame.split("|")[0]))
        return group is not None and group.collect

    def _branch_return(self, wf: WorkflowModel, frame: str, value: Any) -> None:
        gid, idx = (int(x) for x in frame.split("|")[:2])
        g = wf.groups.get(gid)
        if g is None:
            return
        if idx in g.results:
            raise ModelError(f"branch {idx} of group {gid} returned twice")
        g.results[idx] = value
        g.left -= 1
        if g.launched < g.n:
            g.launched += 1
            if self._new_task(wf, g.step, f"{gid}|{g.launched}|{g.step}|{g.join}") is None:
                return
        if g.left > 0:
            return
        del wf.groups[gid]
        seq = self._new_task(wf, g.join, g.frame)
        if seq is not None:
            wf.join_inputs[seq] = [g.results.get(i) for i in range(1, g.n + 1)]

    def _new_task(self, wf: WorkflowModel, step: str, frame: str) -> int | None:
        wf.seq += 1
        if wf.max_steps > 0 and wf.seq > wf.max_steps:
            self._finish(wf, "failed", STEP_BUDGET_EXCEEDED)  # the step budget is spent
            return None
        wf.active[wf.seq], wf.frames[wf.seq] = step, frame
        return wf.seq

    def _finish(self, wf: WorkflowModel, status: str, value: Any) -> None:
        """End ``wf``; ``value``: its result, or the error type it failed with."""
        if wf.terminal:
            raise ModelError(f"workflow {wf.id} finished twice: {wf.status}, then {status}")
        if status != "completed":
            wf.active.clear()
            wf.waits.clear()
        elif wf.active or wf.waits:
            raise ModelError(f"workflow {wf.id} completed with live tasks {wf.active}")
        wf.status = status
        wf.endings.append(status)
        if wf.parent is None:
            return
        # a child resumes the parent task that waits on it, once (a replayed child that
        # ends again finds itself no longer registered), unless the parent stopped
        parent_id, task = wf.parent
        parent = self.workflows[parent_id]
        if parent.children.pop(wf.id, None) is not None and task in parent.active:
            parent.resumed[task] = Resumed(wf.id, status, value)
