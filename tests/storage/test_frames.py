"""The codec of the pipe-delimited frame, parent and on_cancel strings (storage/frames.py):
what it builds parses back to the same parts, and what it cannot represent it refuses."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conveyor.storage import frames
from conveyor.storage.frames import Branch, Parent

# what workflow.definition.check_name lets through, and workflow ids (hex, '~' for children)
names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.\-]{0,20}", fullmatch=True)
ids = st.from_regex(r"[0-9a-f]{32}(~[0-9]{1,4}){0,3}", fullmatch=True)
positive = st.integers(min_value=1, max_value=10**9)


@given(positive, positive, names, names)
def test_branch_frames_round_trip(group: int, slot: int, step: str, join: str) -> None:
    frame = frames.branch_frame(group, slot, step, join)
    assert frame == f"{group}|{slot}|{step}|{join}"  # what lib.lua's branch_frame builds
    assert frames.parse_branch(frame) == Branch(group, slot, step, join)
    assert frames.branch_steps(frame) == (step, join)


def test_top_level_and_on_cancel_are_no_branch() -> None:
    for frame in (frames.TOP_LEVEL, frames.CANCEL_FRAME):
        assert frames.parse_branch(frame) is None
        assert frames.branch_steps(frame) is None


@given(ids, positive, names, names, st.sampled_from(["", "!cancel", "3|2|b|j"]))
def test_parents_round_trip(wf: str, task: int, step: str, queue: str, frame: str) -> None:
    parent = frames.parent_ref(wf, task, step, queue, frame)
    assert frames.parse_parent(parent) == Parent(wf, task, step, queue, frame)
    assert frames.parent_target(parent) == (wf, queue)
    assert frames.parent_id(parent) == wf


def test_a_parent_frame_keeps_its_pipes() -> None:
    """A child started inside a fan-out branch resumes its parent in that branch: the frame
    is the parent's last part and holds '|' itself."""
    inner = frames.branch_frame(4, 2, "review", "edit")
    parent = frames.parent_ref("abc", 7, "after", "llm", inner)
    assert parent == "abc|7|after|llm|4|2|review|edit"
    assert frames.parse_parent(parent).frame == inner
    assert frames.parse_branch(frames.parse_parent(parent).frame) == Branch(4, 2, "review", "edit")


@given(names, names)
def test_on_cancel_steps_round_trip(step: str, queue: str) -> None:
    assert frames.parse_step_ref(frames.step_ref(step, queue)) == (step, queue)


@pytest.mark.parametrize(
    "build",
    [
        lambda: frames.branch_frame(1, 1, "a|b", "join"),
        lambda: frames.branch_frame(1, 1, "step", "j|oin"),
        lambda: frames.branch_frame(1, 1, "", "join"),
        lambda: frames.branch_frame(0, 1, "step", "join"),
        lambda: frames.branch_frame(1, 0, "step", "join"),
        lambda: frames.parent_ref("a|b", 1, "step", "queue"),
        lambda: frames.parent_ref("wf", 1, "st|ep", "queue"),
        lambda: frames.parent_ref("wf", 1, "step", "q|ueue"),
        lambda: frames.parent_ref("wf", 0, "step", "queue"),
        lambda: frames.parent_ref("", 1, "step", "queue"),
        lambda: frames.step_ref("un|do", "queue"),
        lambda: frames.step_ref("undo", "q|ueue"),
        lambda: frames.step_ref("undo", ""),
    ],
)
def test_pipes_inside_a_part_are_refused(build: Callable[[], str]) -> None:
    """A part holding '|' would shift every part after it: refused rather than misread."""
    with pytest.raises(ValueError):
        build()


MISSHAPEN = ["1|2|step", "1|2|step|join|x", "1|2||join", "1|2|step|", "|||"]


@pytest.mark.parametrize("frame", [*MISSHAPEN, "a|2|step|join", "1|-2|step|join"])
def test_malformed_frames_are_refused(frame: str) -> None:
    with pytest.raises(ValueError, match="bad frame"):
        frames.parse_branch(frame)


@pytest.mark.parametrize("frame", MISSHAPEN)
def test_branch_steps_need_four_parts(frame: str) -> None:
    with pytest.raises(ValueError, match="bad frame"):
        frames.branch_steps(frame)


@pytest.mark.parametrize("parent", ["", "wf", "wf|1|step|queue", "wf|x|step|queue|", "|1|s|q|"])
def test_malformed_parents_are_refused(parent: str) -> None:
    with pytest.raises(ValueError, match="bad parent"):
        frames.parse_parent(parent)


@pytest.mark.parametrize("parent", ["", "wf", "wf|1|step|queue"])
def test_a_parent_target_needs_every_part(parent: str) -> None:
    with pytest.raises(ValueError, match="bad parent"):
        frames.parent_target(parent)


@pytest.mark.parametrize("ref", ["", "undo", "undo|", "|queue", "undo|q|x"])
def test_malformed_on_cancel_steps_are_refused(ref: str) -> None:
    with pytest.raises(ValueError, match="bad step reference"):
        frames.parse_step_ref(ref)
