"""The pipe-delimited strings that travel with tasks, parsed and built here and nowhere else in
Python (the Lua scripts use the helpers at the top of ``scripts/lib.lua``, which must agree):

- a task's **frame**, where it runs: ``''`` at the top level, ``'!cancel'`` for a workflow's
  ``on_cancel`` step, or ``'<group>|<slot>|<branch step>|<join step>'`` in a fan-out branch;
- a child workflow's **parent**: ``'<parent id>|<parent task>|<then step>|<then queue>|<parent
  frame>'``, the continuation its parent resumes with (the frame comes last, so it may hold
  ``'|'`` itself);
- a workflow's **on_cancel** step: ``'<step>|<queue>'``.

Step, queue and workflow names cannot hold ``'|'`` (``workflow.definition.check_name``), nor
can workflow ids; the builders refuse a part that does, so every string parses back to what
built it. The parsers raise ``ValueError`` on a malformed string.
"""

from __future__ import annotations

from typing import NamedTuple

#: What separates the parts of a frame, a parent and an on_cancel step.
SEP = "|"
#: The frame of a task at the top level of its workflow.
TOP_LEVEL = ""
#: The frame of a workflow's ``on_cancel`` step (its outcome is only recorded).
CANCEL_FRAME = "!cancel"


class Branch(NamedTuple):
    """A fan-out branch's frame: ``slot`` (from 1) of group ``group``."""

    group: int
    slot: int
    step: str
    join: str


class Parent(NamedTuple):
    """A child workflow's parent: the continuation task it resumes when the child ends."""

    workflow_id: str
    task: int
    step: str
    queue: str
    frame: str


def _part(value: str, what: str) -> str:
    if not value or SEP in value:
        raise ValueError(f"{what} {value!r} must be non-empty and hold no {SEP!r}")
    return value


# -- frames -----------------------------------------------------------------------------------


def branch_frame(group: int, slot: int, step: str, join: str) -> str:
    """The frame of ``slot`` of fan-out group ``group``, branch ``step``, joined by ``join``
    (lib.lua builds the same with ``branch_frame``)."""
    if group < 1 or slot < 1:
        raise ValueError(f"fan-out group {group} and slot {slot} start at 1")
    return f"{group}{SEP}{slot}{SEP}{_part(step, 'step')}{SEP}{_part(join, 'join step')}"


def parse_branch(frame: str) -> Branch | None:
    """The fan-out branch ``frame`` names, or None at the top level and in ``on_cancel``."""
    if frame in (TOP_LEVEL, CANCEL_FRAME):
        return None
    parts = frame.split(SEP)
    if len(parts) != 4:
        raise ValueError(f"bad frame {frame!r}: expected <group>|<slot>|<step>|<join>")
    group, slot, step, join = parts
    if not (group.isdigit() and slot.isdigit() and step and join):
        raise ValueError(f"bad frame {frame!r}: expected <group>|<slot>|<step>|<join>")
    return Branch(int(group), int(slot), step, join)


def branch_steps(frame: str) -> tuple[str, str] | None:
    """(branch step, join step) of a branch ``frame``, None outside a branch: the part of
    :func:`parse_branch` a worker needs per finished branch, without converting numbers."""
    parts = frame.split(SEP)
    if len(parts) == 4 and parts[2] and parts[3]:  # a branch first: this runs per branch end
        return parts[2], parts[3]
    if frame in (TOP_LEVEL, CANCEL_FRAME):
        return None
    raise ValueError(f"bad frame {frame!r}: expected <group>|<slot>|<step>|<join>")


# -- parents ----------------------------------------------------------------------------------


def parent_ref(workflow_id: str, task: int, step: str, queue: str, frame: str = TOP_LEVEL) -> str:
    """A child's parent field: resume task ``task`` of ``workflow_id`` with ``step`` on
    ``queue``, in the parent's ``frame`` (lib.lua builds the same with ``parent_ref``)."""
    if task < 1:
        raise ValueError(f"parent task {task} starts at 1")
    return SEP.join((
        _part(workflow_id, "parent id"), str(task), _part(step, "step"),
        _part(queue, "queue"), frame,
    ))  # fmt: skip


def parse_parent(parent: str) -> Parent:
    """The parts of a child's parent field."""
    parts = parent.split(SEP, 4)
    if len(parts) != 5 or not parts[1].isdigit() or not all(parts[:4]):
        raise ValueError(
            f"bad parent {parent!r}: expected <parent id>|<task>|<step>|<queue>|<frame>"
        )
    workflow_id, task, step, queue, frame = parts
    return Parent(workflow_id, int(task), step, queue, frame)


def parent_target(parent: str) -> tuple[str, str]:
    """(parent id, queue of its continuation step): where a child's end is written, the part
    of :func:`parse_parent` every transition of a child's task needs."""
    parts = parent.split(SEP, 4)
    if len(parts) != 5:
        raise ValueError(
            f"bad parent {parent!r}: expected <parent id>|<task>|<step>|<queue>|<frame>"
        )
    return parts[0], parts[3]


def parent_id(parent: str) -> str:
    """The parent's workflow id (``WorkflowStatus.parent``)."""
    return parent.partition(SEP)[0]


# -- on_cancel steps --------------------------------------------------------------------------


def step_ref(step: str, queue: str) -> str:
    """A workflow's on_cancel field: its ``step`` and the ``queue`` it runs on."""
    return f"{_part(step, 'step')}{SEP}{_part(queue, 'queue')}"


def parse_step_ref(ref: str) -> tuple[str, str]:
    """(step, queue) of an on_cancel field."""
    step, sep, queue = ref.partition(SEP)
    if not sep or not step or not queue or SEP in queue:
        raise ValueError(f"bad step reference {ref!r}: expected <step>|<queue>")
    return step, queue
