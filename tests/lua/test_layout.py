"""Each Lua script declares its KEYS and ARGV once, in its header. Everything else must agree
with the headers: the key counts registered in storage/scripts.py, the keys and arguments the
Python call sites build (position by position, each against the name its header gives it),
the words the scripts share with Python (actions, statuses, the frame and budget constants),
and docs/architecture.md's script table and key map."""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aredis

from conveyor import RunStatus, Settings, codec
from conveyor.errors import STEP_BUDGET_EXCEEDED, ReplayError, ScriptCode
from conveyor.limits import Limit
from conveyor.storage import frames
from conveyor.storage.keys import Keys
from conveyor.storage.limits import MAX_ENTER_HINT, Limiter, concurrency_key, rate_key
from conveyor.storage.records import Task
from conveyor.storage.scripts import SCRIPTS, ScriptRegistry
from conveyor.storage.store import Store
from conveyor.storage.transitions import (
    Transition,
    TransitionAction,
    Transitions,
    child_workflow_id,
)

ROOT = Path(__file__).resolve().parents[2]
FOLDER = resources.files("conveyor.storage").joinpath("scripts")
ANY = object()  # any value: a position the header names but the test cannot predict


def source(name: str) -> str:
    return FOLDER.joinpath(f"{name}.lua").read_text()


def header(name: str) -> list[str]:
    """The comment lines a script opens with."""
    lines = []
    for line in source(name).splitlines():
        if not line.startswith("--"):
            break
        lines.append(line)
    return lines


# -- reading the headers -------------------------------------------------------------------------


@dataclass
class Slots:
    """Positions 1.. of a script's KEYS or ARGV, each with the name(s) its header gives it
    (several when the meaning depends on a mode); from ``rest`` on (``ARGV[3..]``) any number
    of values follow."""

    names: dict[int, list[str]] = field(default_factory=dict)
    rest: int | None = None

    def add(self, index: int, name: str, variadic: bool) -> None:
        self.names.setdefault(index, []).append(name.strip())
        if variadic:
            self.rest = index

    @property
    def count(self) -> int:
        return max(self.names, default=0)

    def merged(self, other: Slots) -> Slots:
        out = Slots({**self.names, **other.names}, other.rest or self.rest)
        assert not set(self.names) & set(other.names)
        return out


@dataclass
class Layout:
    keys: Slots
    argv: Slots
    batched: bool  # the layout repeats per item (KEYS[k+1], ARGV[a+1], ...)


ENTRY = re.compile(r"^--\s+(KEYS|ARGV)\[(?:([ka])\+)?(\d+)(\.\.)?\]\s+(.+)$")
COMMIT_ENTRY = re.compile(r"^--\s+([KA])(\d+)(\.\.)?\s+(.+)$")
ACTION = re.compile(r"^-- (\w+): ")


def layout(name: str) -> Layout:
    keys, argv, batched = Slots(), Slots(), False
    for line in header(name):
        m = ENTRY.match(line)
        if m:
            kind, base, index, rest, text = m.groups()
            batched = batched or base is not None
            (keys if kind == "KEYS" else argv).add(int(index), text, bool(rest))
    return Layout(keys, argv, batched)


@dataclass
class CommitLayout:
    head: Slots  # ARGV of the call, before the transitions
    keys: Slots  # of every transition
    argv: Slots
    actions: dict[str, tuple[Slots, Slots]]  # the keys and arguments each action adds

    def of(self, action: str) -> tuple[Slots, Slots]:
        keys, argv = self.actions[action]
        return self.keys.merged(keys), self.argv.merged(argv)


def commit_layout() -> CommitLayout:
    out = CommitLayout(layout("commit").argv, Slots(), Slots(), {})
    current = (out.keys, out.argv)
    in_actions = False
    for line in header("commit"):
        if line.startswith("-- Each action"):
            in_actions = True
            continue
        head = ACTION.match(line)
        if in_actions and head:
            current = out.actions[head.group(1)] = (Slots(), Slots())
            continue
        m = COMMIT_ENTRY.match(line)
        if m:
            kind, index, rest, text = m.groups()
            (current[0] if kind == "K" else current[1]).add(int(index), text, bool(rest))
    return out


def test_headers_declare_contiguous_positions() -> None:
    for name in SCRIPTS:
        if name == "commit":
            c = commit_layout()
            slots = [c.head, *(s for a in c.actions for s in c.of(a))]
        else:
            found = layout(name)
            slots = [found.keys, found.argv]
            assert found.keys.count, f"{name}.lua declares no KEYS"
        for s in slots:
            assert sorted(s.names) == list(range(1, s.count + 1)), (name, s.names)


def test_registered_key_counts_match_the_headers() -> None:
    for name, num_keys in SCRIPTS.items():
        if name == "commit":
            assert num_keys == 0  # any number: each transition says how many it takes
            continue
        found = layout(name)
        assert num_keys == (0 if found.batched else found.keys.count), name


# -- checking a call against its header ----------------------------------------------------------

Expect = list[tuple[str, Any]]  # (a word of the header's name, the value) per position


def matches(got: Any, want: Any) -> bool:
    if want is ANY:
        return True
    if callable(want):
        return bool(want(got))
    return bool(got == want)


def check(slots: Slots, values: list[Any], expected: Expect, where: str, *, partial: bool = False):
    """``values`` (a call's KEYS or ARGV) hold, position by position, what ``expected`` says,
    and the header names each position with the word given there. ``partial``: a mode that
    passes only the first positions."""
    if not partial:
        assert len(expected) == slots.count, f"{where}: the header has {slots.count} positions"
    for i, (word, want) in enumerate(expected, 1):
        names = slots.names[i]
        assert any(word in n.lower() for n in names), f"{where}[{i}] is {names}, not {word!r}"
        got = values[i - 1 :] if i == slots.rest else values[i - 1]
        assert matches(got, want), f"{where}[{i}] ({names[0]}): {got!r}, expected {want!r}"
    if slots.rest is None:
        assert len(values) == len(expected), f"{where}: {len(values)} values, {values!r}"


class Recorder:
    """Records every call of a script registry (keys and arguments) and lets it run."""

    def __init__(self, scripts: ScriptRegistry) -> None:
        self.calls: list[tuple[str, list[Any], list[Any]]] = []
        real = scripts.args

        def args(name: str, keys: list[str], argv: list[Any]) -> list[Any]:
            self.calls.append((name, list(keys), list(argv)))
            return real(name, keys, argv)

        scripts.args = args  # type: ignore[method-assign]

    def take(self, name: str) -> list[tuple[list[Any], list[Any]]]:
        found = [(k, a) for n, k, a in self.calls if n == name]
        self.calls = [c for c in self.calls if c[0] != name]
        assert found, f"no call of {name}"
        return found


def is_int(value: Any) -> bool:
    return isinstance(value, int)


@pytest.fixture
async def store(redis: aredis.Redis, namespace: str) -> Store:
    s = Store(redis, Settings(namespace=namespace, partitions=2, retention=3600))
    await s.ensure_groups(["q1"])
    return s


# -- start ---------------------------------------------------------------------------------------


async def test_start_matches_its_header(store: Store) -> None:
    found = layout("start")
    assert found.batched
    request = store.start_request(
        "flow", "first", "q1", {"a": 1}, request_id="rid", max_steps=7, delay=1.5,
        on_cancel=("undo", "q2"),
    )  # fmt: skip
    wf, p, k = request.workflow_id, request.partition, store.keys
    check(found.keys, request.keys, [
        ("state hash", k.workflow(wf, p)), ("task stream", k.stream(p, "q1")),
        ("delayed set", k.delayed(p, "q1")), ("recent", k.recent(p)),
    ], "start KEYS")  # fmt: skip
    check(found.argv, request.argv, [
        ("workflow id", wf), ("workflow name", "flow"), ("first step", "first"),
        ("input", codec.dumps({"a": 1})), ("backlog", store.settings.backlog_per_partition),
        ("created_at", is_int), ("request id", "rid"), ("max_steps", 7), ("delay", 1500),
        ("on_cancel", frames.step_ref("undo", "q2")), ("retention", 3600),
        ("trace", lambda v: isinstance(v, str)),
    ], "start ARGV")  # fmt: skip
    # a call carries whole starts, one after another
    recorder = Recorder(store.scripts)
    await store.start_many([store.start_request("flow", "first", "q1") for _ in range(6)])
    for keys, argv in recorder.take("start"):
        n = len(keys) // found.keys.count
        assert n and len(keys) == n * found.keys.count and len(argv) == n * found.argv.count


# -- commit --------------------------------------------------------------------------------------

NOW = 1_700_000_000_000
RECORD = b'{"step":"s1"}'
STATE = b'{"k":1}'


def a_task(keys: Keys) -> Task:
    """A task of a child workflow inside a fan-out branch, so every slot has its own value."""
    p = keys.partition("wid")
    return Task(
        keys.stream(p, "q1"), b"1-1", p, "q1", "wid", "flow", "s1", 4, 1, b'"in"', None, "rid",
        frames.branch_frame(2, 1, "s1", "join"), frames.parent_ref("pid", 3, "then", "tq"),
        None, "",
    )  # fmt: skip


def common(keys: Keys, task: Task, action: str, state: bytes) -> tuple[Expect, Expect]:
    p = task.partition
    return [
        ("source task stream", task.stream), ("state hash", keys.workflow("wid", p)),
        ("history", keys.history("wid", p)), ("parent's state hash", keys.workflow("pid", p)),
        ("parent's continuation stream", keys.stream(p, "tq")), ("stopped", keys.stopped(p)),
        ("event stream", keys.events("wid", p)),
    ], [
        ("action", action), ("entry id", b"1-1"), ("task number", 4), ("history record", RECORD),
        ("now", NOW), ("workflow id", "wid"), ("workflow name", "flow"), ("request id", "rid"),
        ("state", state), ("finished channel", keys.finished_channel(p)),
        ("frame", task.frame), ("parent", task.parent), ("trace carrier", ""),
    ]  # fmt: skip


def built(t: Transitions, action: TransitionAction) -> tuple[Transition, Expect, Expect]:
    """A transition of ``action`` from its builder, with the keys and arguments its action
    adds, as the header names them."""
    k = t.keys
    task = a_task(k)
    p = task.partition
    stream: Callable[[str], str] = lambda queue: k.stream(p, queue)  # noqa: E731
    A = TransitionAction
    if action is A.NEXT:
        call = t.next(task, RECORD, NOW, STATE, "s2", "q2", b"2")
        return call, [("stream of the next step", stream("q2"))], [("step", "s2"), ("input", b"2")]
    if action is A.SLEEP:
        call = t.sleep(task, RECORD, NOW, STATE, "s2", "q2", b"2", 1500)
        return call, [("delayed set of the next step", k.delayed(p, "q2"))], [
            ("step", "s2"), ("input", b"2"), ("delay", 1500)]  # fmt: skip
    if action is A.RETURN:
        call = t.returned(task, RECORD, NOW, STATE, b"7", ("jq", "bq"))
        return call, [("join stream", stream("jq")), ("branch stream", stream("bq"))], [
            ("value", b"7")]  # fmt: skip
    if action is A.FAN_OUT:
        call = t.fan_out(
            task, RECORD, NOW, STATE, step="b", queue="bq", join="j", join_queue="jq",
            max_parallel=2, collect=True, items=[b"1", b"2"],
        )  # fmt: skip
        return call, [("branch stream", stream("bq")), ("join stream", stream("jq"))], [
            ("branch step", "b"), ("join step", "j"), ("max parallel", 2),
            ("collect", "1"), ("items", [b"1", b"2"]),
        ]  # fmt: skip
    if action is A.WAIT:
        call = t.wait(
            task, RECORD, NOW, STATE, signal="approve", step="then2", queue="tq2",
            timeout_ms=5000, timer_step="timer", timer_queue="mq", marker=b"{}",
        )  # fmt: skip
        return call, [
            ("signal buffer", k.signals("wid", "approve", p)), ("then stream", stream("tq2")),
            ("delayed set of the timer step", k.delayed(p, "mq")), ("waiting", k.waiting(p)),
        ], [
            ("signal", "approve"), ("then step", "then2"), ("then queue", "tq2"),
            ("timeout", 5000), ("timer step", "timer"), ("timer input", b"{}"),
        ]  # fmt: skip
    if action is A.CHILD:
        child = child_workflow_id("wid", 4)
        call = t.child(
            task, RECORD, NOW, STATE, child_workflow="kid", first_step="k1", first_queue="kq",
            payload=b"5", step="after", queue="aq", max_steps=9,
            on_cancel=frames.step_ref("undo", "uq"),
        )  # fmt: skip
        return call, [("child state hash", k.workflow(child, p)), ("first stream", stream("kq"))], [
            ("child id", child), ("child workflow", "kid"), ("first step", "k1"),
            ("input", b"5"), ("then step", "after"), ("then queue", "aq"),
            ("max_steps", 9), ("on_cancel", "undo|uq"), ("trace carrier", ""),
        ]  # fmt: skip
    if action is A.RETRY:
        call = t.retry(task, RECORD, NOW, 250, 2)
        member = lambda v: codec.loads(v)["attempt"] == "2"  # noqa: E731
        return call, [("delayed set of the step's queue", k.delayed(p, "q1"))], [
            ("delay", 250), ("task as json", member)]  # fmt: skip
    if action is A.DEAD:
        error = {"type": "Boom", "message": "no"}
        call = t.dead(task, RECORD, NOW, error=error, reason="r", frame_queues=("jq", "bq"))
        entry = lambda v: len(v) % 2 == 0 and v[:2] == ["workflow_id", "wid"]  # noqa: E731
        return call, [
            ("dead-letter stream", k.dead(p)), ("join stream", stream("jq")),
            ("branch stream", stream("bq")),
        ], [("error json", codec.dumps(error)), ("dead-letter entry", entry)]  # fmt: skip
    if action is A.ACK:
        return t.ack(task), [], []
    assert action is A.POISON
    call = t.poison(task.stream, p, "q1", b"1-1", {b"x": b"y"}, "bad", NOW)
    entry = lambda v: v[:2] == ["queue", "q1"]  # noqa: E731
    return call, [("dead-letter stream", k.dead(p))], [("dead-letter entry", entry)]


@pytest.mark.parametrize("action", list(TransitionAction))
def test_each_transition_matches_the_commit_header(action: TransitionAction) -> None:
    transitions = Transitions(Keys("ns", 2), Settings(namespace="ns", partitions=2))
    call, own_keys, own_argv = built(transitions, action)
    keys, argv = commit_layout().of(action)
    assert call.action == action
    task = a_task(transitions.keys)
    state = STATE if action not in ("retry", "dead", "ack", "poison") else b""
    common_keys, common_argv = common(transitions.keys, task, action, state)
    if action is TransitionAction.ACK:  # nothing to record
        common_argv[3:5] = [("history record", b""), ("now", 0)]
    if action is TransitionAction.POISON:  # only K1, A1, A2 and A5 mean anything
        common_keys = [(w, ANY) for w, _ in common_keys]
        common_keys[0] = ("source task stream", task.stream)
        common_argv = [(w, v if i in (0, 1, 4) else ANY) for i, (w, v) in enumerate(common_argv)]
    check(keys, call.keys, common_keys + own_keys, f"commit {action} K")
    check(argv, call.argv, common_argv + own_argv, f"commit {action} A")


def test_commit_actions_are_the_transition_actions() -> None:
    declared = set(commit_layout().actions)
    code = source("commit")
    table = re.search(r"local ACTIONS = \{(.*?)\}", code, re.S)
    assert table is not None
    in_lua = set(re.findall(r"\[?'?(\w+)'?\]? = true", table.group(1)))
    assert declared == in_lua == {a.value for a in TransitionAction}


async def test_commit_call_carries_its_head_then_each_transition(store: Store) -> None:
    head = commit_layout().head
    task = a_task(store.keys)
    calls = [store.transitions.ack(task), built(store.transitions, TransitionAction.NEXT)[0]]
    recorder = Recorder(store.scripts)
    # nothing was delivered: the ack is done at once, the other one is a duplicate
    assert await store.commit(calls) == [ScriptCode.OK, ScriptCode.DUPLICATE]
    [(keys, argv)] = recorder.take("commit")
    check(head, argv[: head.count], [
        ("consumer group", store.settings.group), ("retention", 3600),
        ("event streams", "1" if store.settings.events else "0"),
    ], "commit ARGV")  # fmt: skip
    at = head.count
    for call in calls:  # its number of keys and of arguments, then the arguments
        assert argv[at : at + 2] == [len(call.keys), len(call.argv)]
        assert argv[at + 2 : at + 2 + len(call.argv)] == call.argv
        at += 2 + len(call.argv)
    assert at == len(argv) and keys == calls[0].keys + calls[1].keys


# -- the other transitions -----------------------------------------------------------------------


async def test_store_calls_match_their_headers(store: Store) -> None:
    k, recorder = store.keys, Recorder(store.scripts)
    wf, _ = await store.start("flow", "first", "q1", None, on_cancel=("undo", "q2"))
    p = k.partition(wf)
    recorder.take("start")

    await store.signal(wf, "approve", {"ok": 1})
    [(keys, argv)] = recorder.take("signal")
    found = layout("signal")
    check(found.keys, keys, [
        ("state hash", k.workflow(wf, p)), ("buffer", k.signals(wf, "approve", p)),
        ("stream of the queue", k.workflow(wf, p)),  # no wait known yet: else KEYS[1]
    ], "signal KEYS")  # fmt: skip
    check(found.argv, argv, [
        ("signal name", "approve"), ("payload", codec.dumps({"ok": 1})), ("now", is_int),
        ("queue", ""), ("kept", 3600), ("workflow id", wf),
    ], "signal ARGV")  # fmt: skip

    timer = a_task(k)
    timer.wait, timer.task = "approve", 3
    await store.claim_timers([timer])
    [(keys, argv)] = recorder.take("claim")
    found = layout("claim")
    check(found.keys, keys, [("state hash", k.workflow("wid", timer.partition))], "claim KEYS")
    check(found.argv, argv, [("signal name", "approve"), ("task number", 3)], "claim ARGV")

    entry = await store.redis.xadd(k.dead(p), {
        "workflow_id": wf, "workflow": "flow", "step": "first", "task": 1, "queue": "q1",
        "reason": "step failed", "failed_at": 1,
    })  # fmt: skip
    with pytest.raises(ReplayError, match="not failed"):
        await store.replay(f"p{p}:{entry.decode()}")
    [(keys, argv)] = recorder.take("replay")
    found = layout("replay")
    check(found.keys, keys, [
        ("dead-letter stream", k.dead(p)), ("state hash", k.workflow(wf, p)),
        ("history", k.history(wf, p)), ("task stream", k.stream(p, "q1")),
        ("stopped", k.stopped(p)),
    ], "replay KEYS")  # fmt: skip
    check(found.argv, argv, [("dead-letter entry id", entry.decode()), ("now", is_int)], "replay")

    # a child workflow's cancel resumes its parent
    await store.redis.hset(k.workflow(wf, p), "parent", frames.parent_ref("pid", 3, "then", "tq"))
    assert await store.cancel(wf, "enough") == RunStatus.CANCELLED
    [(keys, argv)] = recorder.take("cancel")
    found = layout("cancel")
    check(found.keys, keys, [
        ("state hash", k.workflow(wf, p)), ("history", k.history(wf, p)),
        ("on_cancel", k.stream(p, "q2")), ("parent's state hash", k.workflow("pid", p)),
        ("parent's continuation stream", k.stream(p, "tq")), ("stopped", k.stopped(p)),
        ("event stream", k.events(wf, p)),
    ], "cancel KEYS")  # fmt: skip
    check(found.argv, argv, [
        ("now", is_int), ("retention", 3600), ("channel", k.finished_channel(p)),
        ("workflow id", wf), ("reason", "enough"),
    ], "cancel ARGV")  # fmt: skip


async def test_stream_calls_match_their_headers(store: Store) -> None:
    k, recorder = store.keys, Recorder(store.scripts)
    group = store.settings.group
    await store.promote(["q1"], limit=10)
    await store.trim(["q1"])
    await store.heartbeat("c1", {k.stream(0, "q1"): [b"1-0", b"2-0"]})
    calls = {name: recorder.take(name)[0] for name in ("promote", "trim", "heartbeat")}
    found = layout("promote")
    keys, argv = calls["promote"]
    check(
        found.keys,
        keys,
        [("delayed set", k.delayed(0, "q1")), ("task stream", k.stream(0, "q1"))],
        "promote",
    )
    check(found.argv, argv, [("most tasks", 10)], "promote ARGV")
    found = layout("trim")
    keys, argv = calls["trim"]
    check(found.keys, keys, [("task stream", k.stream(0, "q1"))], "trim KEYS")
    check(found.argv, argv, [("consumer group", group)], "trim ARGV")
    found = layout("heartbeat")
    keys, argv = calls["heartbeat"]
    check(found.keys, keys, [("task stream", k.stream(0, "q1"))], "heartbeat KEYS")
    check(found.argv, argv, [
        ("consumer group", group), ("consumer", "c1"), ("entry ids", [b"1-0", b"2-0"]),
    ], "heartbeat ARGV")  # fmt: skip


async def test_limit_calls_match_their_headers(store: Store, namespace: str) -> None:
    limiter, recorder = Limiter(store.redis, namespace, store.scripts), Recorder(store.scripts)
    llm = Limit("llm", "10/s")
    interval, tolerance = repr(llm.interval_ms), repr(llm.tolerance_ms)
    await limiter.take([(llm, 2.0)])
    await limiter.charge([(llm, 1.0)])
    await limiter.push_back(llm, 1.5)
    found = layout("rate")
    calls = recorder.take("rate")
    for keys, _ in calls:
        check(found.keys, keys, [("rate key", rate_key(namespace, "llm"))], "rate KEYS")
    for (_, argv), mode, cost in zip(calls[:2], ("take", "charge"), (2.0, 1.0), strict=True):
        check(found.argv, argv, [
            ("mode", mode), ("emission interval", interval), ("burst tolerance", tolerance),
            ("cost", repr(cost)),
        ], f"rate ARGV ({mode})")  # fmt: skip
    check(found.argv, calls[2][1], [
        ("mode", "push"), ("nothing passes", 1500), ("burst tolerance", tolerance),
        ("emission interval", interval),
    ], "rate ARGV (push)")  # fmt: skip

    await limiter.enter([("flow.s1", "tenant", 2, "h1", 5.0)])
    await limiter.renew([("flow.s1", "tenant", "h1", 5.0)])
    await limiter.leave([("flow.s1", "tenant", "h1")])
    found = layout("concurrency")
    (enter, renew, leave) = recorder.take("concurrency")
    for keys, _ in (enter, renew, leave):
        key = concurrency_key(namespace, "flow.s1", "tenant")
        check(found.keys, keys, [("concurrency key", key)], "concurrency KEYS")
    first = [("mode", "enter"), ("holder", "h1"), ("maximum", 2), ("lease", 5000)]
    hint = math.ceil(MAX_ENTER_HINT * 1000)
    check(found.argv, enter[1], [*first, ("wait hint", hint)], "concurrency ARGV (enter)")
    check(
        found.argv,
        renew[1],
        [("mode", "renew"), ("holder", "h1"), ("maximum", ""), ("lease", 5000)],
        "concurrency ARGV (renew)",
        partial=True,
    )
    check(found.argv, leave[1], [("mode", "leave"), ("holder", "h1")], "concurrency ARGV (leave)",
          partial=True)  # fmt: skip


# -- words the scripts share with Python ---------------------------------------------------------


def test_lua_constants_are_the_python_ones() -> None:
    lib = source("lib")
    lua = dict(re.findall(r"^local ([A-Z_]+) = '([^']*)'$", lib, re.M))
    assert lua == {
        "CANCEL_FRAME": frames.CANCEL_FRAME,
        "STEP_BUDGET_EXCEEDED": STEP_BUDGET_EXCEEDED,
    }
    for name in SCRIPTS:  # spelled once, in lib.lua
        for value in lua.values():
            assert f"'{value}'" not in source(name), (name, value)


def test_lua_writes_only_run_statuses() -> None:
    lines = [line for name in [*SCRIPTS, "lib"] for line in source(name).splitlines()]
    code = "\n".join(line for line in lines if "HMGET" not in line)  # reads name fields
    written = re.findall(r"'status', '(\w+)'|finish\(\w+, '(\w+)'|status [=~]= '(\w+)'", code)
    assert {w for found in written for w in found if w} == {s.value for s in RunStatus}


def test_python_spells_the_wire_constants_once() -> None:
    """The frame codec and the error types have one home in Python each."""
    src = ROOT / "src" / "conveyor"
    owners = {'"!cancel"': "storage/frames.py", '"StepBudgetExceeded"': "errors.py",
              '"DeliveryLimitExceeded"': "errors.py"}  # fmt: skip
    for literal, owner in owners.items():
        found = sorted(
            str(p.relative_to(src)) for p in src.rglob("*.py") if literal in p.read_text()
        )
        assert found == [owner], literal
    for folder in ("storage", "worker"):  # nothing else splits or joins the pipe strings
        for path in (src / folder).rglob("*.py"):
            if path.name != "frames.py":
                assert '"|"' not in path.read_text(), path


# -- docs/architecture.md ------------------------------------------------------------------------


def doc_section(title: str) -> str:
    text = (ROOT / "docs" / "architecture.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def table_rows(section: str) -> dict[str, list[str]]:
    """First cell (without backticks) -> cells, for each row of the section's tables."""
    rows = {}
    for line in section.splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            rows[cells[0].split("`")[1]] = cells
    return rows


def code_names(text: str) -> set[str]:
    return {c.name for c in ScriptCode if re.search(rf"\b{c.name}\b", text)}


def test_docs_script_table_matches_the_headers() -> None:
    section = doc_section("The Lua transitions")
    rows = table_rows(section)
    assert set(rows) == set(SCRIPTS)
    codes = re.search(
        r"Result codes are\s+`conveyor.errors.ScriptCode`:\s+(.*?)\.\n\n", section, re.S
    )
    assert codes is not None
    listed = dict(re.findall(r"`(\w+) (\d+)`", codes.group(1)))
    assert listed == {c.name: str(c.value) for c in ScriptCode}
    for name, (_, keys, _, returns) in rows.items():
        text = "\n".join(header(name))
        said = code_names(text[text.index("Returns") :] if "Returns" in text else "")
        assert said <= code_names(returns), f"{name} returns {said}: {returns}"
        if name == "commit":
            c = commit_layout()
            most = max(len(c.actions[a][0].names) for a in c.actions)
            assert re.search(rf"\b{c.keys.count} common keys \(([^)]*)\)", keys), keys
            listed_common = re.search(r"common keys \(([^)]*)\)", keys)
            assert listed_common and len(listed_common.group(1).split("; ")) == c.keys.count
            assert f"then 0 to {most} for its action" in keys, keys
            continue
        items = keys.split("): ", 1)[-1].split("; ")
        assert len(items) == layout(name).keys.count, f"{name}: {keys}"


def key_patterns() -> dict[str, str]:
    """Every key Keys builds, as the key map writes its pattern."""
    keys = Keys("ns", 1)
    placeholders = {"partition": 0, "queue": "<queue>", "workflow_id": "<id>", "signal": "<name>",
                    "name": "<name>", "digest": "<sha256 hex>"}  # fmt: skip
    out = {}
    for name, member in inspect.getmembers(Keys):
        if name.startswith("_") or name in ("partition", "streams", "namespace", "partitions"):
            continue
        if isinstance(member, property):
            value = getattr(keys, name)
        else:
            params = list(inspect.signature(member).parameters)[1:]
            value = getattr(keys, name)(*(placeholders[p] for p in params if p in placeholders))
        out[name] = str(value).replace("{p0}", "{pN}")
    out["rate"] = rate_key("ns", "<limit name>")
    return out


def test_docs_key_map_lists_every_key() -> None:
    rows = table_rows(doc_section("The key map").split("\n### ")[0])
    firsts = " ".join(cells[0] for cells in rows.values())
    missing = {n: p for n, p in key_patterns().items() if f"`{p}`" not in firsts}
    assert not missing, f"keys missing from the key map: {missing}"
