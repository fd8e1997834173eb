"""The invariants of the property-based machine (test_properties.py): after every step the
real keyspace is read in one pipeline and compared with the model (properties_model.py)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from conveyor import codec

from .properties_model import FINAL_KINDS, TERMINAL, EntryKey, Model, WorkflowModel

GROUP = "agents"
QUEUES = ("q1", "q2")
STOPPED = frozenset({"failed", "cancelled"})

# an entry still owed a commit: (workflow id, task, is a wait timer, where)
Owed = tuple[str, int, bool, str]


class KeyspaceChecks:
    """Mixed into the machine, which provides these."""

    model: Model
    streams: list[str]
    store: Any
    redis: Any

    async def check_keyspace(self) -> None:
        keys, model = self.store.keys, self.model
        pipe = self.redis.pipeline(transaction=False)
        for stream in self.streams:
            pipe.xrange(stream)
            pipe.xpending_range(stream, GROUP, "-", "+", 10_000)
        partitions = range(self.store.settings.partitions)
        delayed_keys = [keys.delayed(p, q) for q in QUEUES for p in partitions]
        for key in delayed_keys:
            pipe.zrange(key, 0, -1)
        for p in partitions:
            pipe.zrange(keys.stopped(p), 0, -1)
            pipe.xrange(keys.dead(p))
        wf_ids = list(model.workflows)
        for wf_id in wf_ids:
            pipe.hgetall(keys.workflow(wf_id))
            pipe.lrange(keys.history(wf_id), 0, -1)
            pipe.xlen(keys.events(wf_id))
            pipe.ttl(keys.workflow(wf_id))
        replies = iter(await pipe.execute())
        owed: list[Owed] = []
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
                # the consumer that owns it is the last one that took it
                assert p["consumer"].decode() == model.owner[(stream, eid)], (stream, p)
            for eid, f in entries:
                if (stream, eid) not in model.delivered:  # only this machine reads
                    owed.append(
                        (f[b"workflow_id"].decode(), int(f[b"task"]), b"wait" in f, "queued")
                    )
        # 3. committed entries left the PEL; everything delivered and not committed is there
        assert pel == model.pending(), pel ^ model.pending()
        delayed = 0
        for _ in delayed_keys:
            for member in next(replies):
                m = codec.loads(member)
                owed.append((m["workflow_id"], int(m["task"]), "wait" in m, "delayed"))
                delayed += 1
        assert delayed == model.delayed
        stopped: set[str] = set()
        dead: Counter[tuple[str, int]] = Counter()
        for _ in partitions:
            stopped |= {m.decode() for m in next(replies)}
            dead.update((f[b"workflow_id"].decode(), int(f[b"task"])) for _, f in next(replies))
        # workers drop the tasks of exactly the workflows that stopped early
        expected = {w.id for w in model.workflows.values() if w.status in STOPPED}
        assert stopped == expected, stopped ^ expected
        # 4. a dead letter per task that failed for good (none lost, none doubled), until it
        # is replayed
        assert dead == Counter((d.workflow_id, d.task) for d in model.dead), dead
        for wf_id in wf_ids:
            fields, history, events, ttl = (next(replies) for _ in range(4))
            self.check_workflow(model.workflows[wf_id], fields, history, events, ttl)
        self.check_owed(owed)

    def check_workflow(self, wf: WorkflowModel, fields: dict[bytes, bytes], history: list[bytes],
                       events: int, ttl: int) -> None:  # fmt: skip
        status = fields[b"status"].decode()
        # 2. exactly one terminal state, left only by a replay: the model finished it at most
        # once per run
        assert status == wf.status, (wf.id, status, wf.status)
        assert len(wf.endings) == wf.replays + (1 if wf.terminal else 0), wf.endings
        assert (ttl > 0) if wf.terminal else (ttl == -1), (wf.id, status, ttl)
        assert int(fields[b"seq"]) == wf.seq
        active = {int(k[2:]): v.decode() for k, v in fields.items() if k.startswith(b"t:")}
        waits = {k.decode() for k in fields if k.startswith(b"w:")}
        children = {k[2:].decode() for k in fields if k.startswith(b"c:")}
        assert active == wf.active, (wf.id, active, wf.active)
        assert waits == {f"w:{s}:{n}" for s, n in wf.waits}, (wf.id, waits, wf.waits)
        # 5. a child is registered with its parent until it ends (and resumes it once)
        assert children == set(wf.children), (wf.id, children, wf.children)
        if status not in TERMINAL:
            assert (status == "waiting") == bool(waits), (status, waits)
        # 1. each task committed at most once: one final record per task, nothing after it
        assert len(history) == wf.records, (len(history), wf.records)
        assert events == wf.records + len(wf.endings)
        final: dict[int, str] = {}
        deaths: Counter[int] = Counter()
        entries: set[str] = set()
        for raw in history:
            rec = codec.loads(raw)
            assert rec["entry"] not in entries, f"entry {rec['entry']} recorded twice"
            entries.add(rec["entry"])
            task = int(rec["task"])
            assert task not in final, f"task {task} of {wf.id} recorded after {final[task]}"
            if rec["kind"] == "dead" and deaths[task] < wf.replayed[task]:
                deaths[task] += 1  # a replay ran it again
            elif rec["kind"] in FINAL_KINDS:
                final[task] = rec["kind"]
        # done tasks are no longer active (a retry's record is not final)
        assert not set(final) & set(wf.active), (final, wf.active)

    def check_owed(self, owed: list[Owed]) -> None:
        workflows = self.model.workflows
        carried: set[tuple[str, int]] = set()
        entries: Counter[tuple[str, int]] = Counter()
        for wf_id, task, timer, where in owed:
            wf = workflows[wf_id]
            carried.add((wf_id, task))
            if wf.terminal or timer:
                continue  # dropped when read (a timer may have lost to its signal)
            # 3. a pending or queued task of a running workflow is not done
            assert task in wf.active, f"{where} entry of {wf_id} task {task} is done"
            entries[(wf_id, task)] += 1
        # ... and no task has two entries (a wait's timer aside): none doubled
        doubled = [k for k, n in entries.items() if n > 1]
        assert not doubled, f"tasks with several entries: {doubled}"
        # ... and no active task is lost: each has an entry somewhere, waits for a signal, or
        # waits for a child that still runs
        for wf in workflows.values():
            waiting = {n for _, n in wf.waits} | set(wf.children.values())
            for task in wf.active:
                assert (wf.id, task) in carried or task in waiting, (
                    f"task {task} of {wf.id} is active but nothing will ever run it"
                )
        for wf in workflows.values():  # a registered child is alive
            for child in wf.children:
                assert not workflows[child].terminal, (wf.id, child)
