"""Definitions are checked when they are made: every mistake names the step at fault."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from conveyor import App, DefinitionError, RetryPolicy, StepInputError, Workflow, done, goto
from conveyor.workflow import compute_backoff


def test_two_start_steps() -> None:
    wf = Workflow("w")

    @wf.step(start=True)
    def a(ctx, x): ...

    with pytest.raises(DefinitionError, match=r"step 'b'.*already has a start step \('a'\)"):

        @wf.step(start=True)
        def b(ctx, x): ...


def test_duplicate_step_name() -> None:
    wf = Workflow("w")

    @wf.step
    def a(ctx, x): ...

    with pytest.raises(DefinitionError, match="duplicate step name 'a'"):
        wf.step(lambda ctx, x: None, name="a")


def test_duplicate_workflow_name_in_app() -> None:
    one, two = Workflow("same"), Workflow("same")
    one.step(lambda ctx: None, name="s")
    two.step(lambda ctx: None, name="s")
    with pytest.raises(DefinitionError, match="duplicate workflow name 'same'"):
        App([one, two])


def test_unknown_then_names_the_step() -> None:
    wf = Workflow("w")

    @wf.step(then="nowhere")
    def a(ctx, x): ...

    with pytest.raises(DefinitionError, match=r"step 'a' of workflow 'w': then='nowhere'"):
        App([wf])


def test_then_to_a_step_of_another_workflow() -> None:
    other = Workflow("other")

    @other.step
    def elsewhere(ctx, x): ...

    wf = Workflow("w")
    with pytest.raises(DefinitionError, match=r"step 'a'.*another workflow \('other'\)"):

        @wf.step(then=elsewhere)
        def a(ctx, x): ...


# goto targets are read from the step's source when the workflow is checked.
foreign = Workflow("foreign")


@foreign.step
def foreign_step(ctx, x): ...


def test_goto_to_a_step_of_another_workflow() -> None:
    wf = Workflow("w")

    @wf.step
    def a(ctx, x):
        return goto(foreign_step, x)

    with pytest.raises(DefinitionError, match=r"step 'a'.*goto\(foreign.foreign_step\)"):
        App([wf])


def test_goto_to_an_unknown_step_name() -> None:
    wf = Workflow("w")

    @wf.step
    def a(ctx, x):
        return goto("missing", x)

    with pytest.raises(DefinitionError, match=r"step 'a'.*goto\('missing'\) names no step"):
        App([wf])


def test_goto_within_the_workflow_is_fine() -> None:
    wf = Workflow("w")

    @wf.step(start=True)
    def a(ctx, x):
        return goto(b, x) if x else goto("b", x)

    @wf.step
    def b(ctx, x):
        return done(x)

    app = App([wf])
    assert app.workflow("w").start_step is a


def test_invalid_names_and_signatures() -> None:
    with pytest.raises(DefinitionError, match="invalid workflow name"):
        Workflow("has space")
    wf = Workflow("w")
    with pytest.raises(DefinitionError, match="must take ctx"):
        wf.step(lambda: None, name="noargs")
    with pytest.raises(DefinitionError, match="extra argument 'z' has no default"):
        wf.step(lambda ctx, x, z: None, name="three")
    with pytest.raises(DefinitionError, match="timeout must be > 0"):
        wf.step(lambda ctx: None, name="t", timeout=0)
    with pytest.raises(DefinitionError, match="retries must be >= 0"):
        wf.step(lambda ctx: None, name="r", retries=-1)
    with pytest.raises(DefinitionError, match="has no steps"):
        App([Workflow("empty")])


def test_start_defaults_to_first_step_and_queue_defaults() -> None:
    wf = Workflow("w", queue="fast")

    @wf.step
    def first(ctx, x): ...

    @wf.step(queue="slow", retries=2, backoff=0.5, timeout=3)
    def second(ctx): ...

    assert wf.start_step is first
    assert first.queue == "fast" and second.queue == "slow"
    assert second.policy == RetryPolicy(retries=2, backoff=0.5)
    assert second.timeout == 3 and not second.takes_input and first.takes_input
    assert App([wf]).queues == ["fast", "slow"]


def test_pipeline_links_steps_in_order() -> None:
    def one(ctx, x):
        return x + 1

    async def two(ctx, x):
        return x * 2

    def three(ctx, x):
        return str(x)

    wf = Workflow.pipeline("p", [one, two, three], retries=1)
    assert [s.name for s in wf.steps.values()] == ["one", "two", "three"]
    assert wf.start_step.name == "one"
    assert [wf.steps[n].then for n in ("one", "two", "three")] == ["two", "three", None]
    assert wf.steps["two"].is_async and not wf.steps["one"].is_async
    assert all(s.policy.retries == 1 for s in wf.steps.values())
    with pytest.raises(DefinitionError, match="at least one step"):
        Workflow.pipeline("empty", [])


class Order(BaseModel):
    sku: str
    qty: int


def test_pydantic_input_is_validated_and_converted() -> None:
    wf = Workflow("w")

    @wf.step
    def take(ctx, order: Order):
        return order.qty

    converted = take.convert_input({"sku": "a", "qty": "3"})
    assert converted == Order(sku="a", qty=3)
    with pytest.raises(StepInputError, match=r"input of step 'w.take' is invalid.*qty"):
        take.convert_input({"sku": "a", "qty": "many"})


def test_steps_stay_callable_for_unit_tests() -> None:
    wf = Workflow("w")

    @wf.step
    def add(ctx, x):
        return x + 1

    assert add(None, 1) == 2


def test_backoff_is_exponential_capped_and_jittered() -> None:
    policy = RetryPolicy(retries=5, backoff=1.0, multiplier=2.0, max_backoff=5.0, jitter=0.5)
    assert [compute_backoff(policy, a, rand=0.0) for a in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 5.0]
    assert compute_backoff(policy, 2, rand=1.0) == pytest.approx(1.0)  # 2.0 less half
    no_jitter = RetryPolicy(backoff=0.2, jitter=0.0)
    assert compute_backoff(no_jitter, 1) == 0.2
    with pytest.raises(ValueError, match="attempt counts from 1"):
        compute_backoff(policy, 0)
    with pytest.raises(ValueError, match="jitter"):
        RetryPolicy(jitter=2)


# -- flow control (issue 3) ----------------------------------------------------------------------


def test_flow_step_options_are_checked_at_definition() -> None:
    wf = Workflow("opts")

    def f(ctx, x):
        return x

    bad = [
        ({"cache_ttl": 0}, "cache_ttl must be > 0"),
        ({"max_concurrency": 2}, "concurrency_key and max_concurrency go together"),
        ({"concurrency_key": lambda x: x}, "concurrency_key and max_concurrency go together"),
        ({"concurrency_key": lambda x: x, "max_concurrency": 0}, "at least 1"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"batch_wait_ms": -1}, "batch_wait_ms must be >= 0"),
        ({"rate_limit": "fast"}, "fast"),
        ({"rate_limit": "0/s"}, "0/s"),
    ]
    for options, message in bad:
        with pytest.raises(DefinitionError, match=message):
            wf.step(f, name="s", **options)  # type: ignore[arg-type]
        assert "s" not in wf.steps  # a refused step is not half-registered
    wf.step(f, name="ok", rate_limit="100/s", cache_ttl=5)
    assert wf.steps["ok"].rate_limit is not None and wf.steps["ok"].rate_limit.name == "opts.ok"

    def no_input(ctx):
        return 1

    with pytest.raises(DefinitionError, match="batched step takes"):
        wf.step(no_input, batch_size=4)


def test_on_cancel_step_rules() -> None:
    wf = Workflow("c")
    with pytest.raises(DefinitionError, match="start step cannot be the on_cancel step"):
        wf.step(lambda ctx, x: x, name="first", start=True, on_cancel=True)
    wf.step(lambda ctx, x: x, name="main")
    wf.step(lambda ctx, x: x, name="cleanup", on_cancel=True)
    with pytest.raises(DefinitionError, match="already has an on_cancel step"):
        wf.step(lambda ctx, x: x, name="cleanup2", on_cancel=True)
    assert wf.on_cancel_step is wf.steps["cleanup"] and wf.start_step.name == "main"
    with pytest.raises(DefinitionError, match="max_steps must be a positive integer"):
        Workflow("w", max_steps=0)


def test_flow_outcome_arguments_are_checked() -> None:
    from conveyor import fan_out, sleep, wait

    with pytest.raises(DefinitionError, match="max_parallel=0"):
        fan_out("s", [1], then="j", max_parallel=0)
    with pytest.raises(DefinitionError, match="on_error='skip'"):
        fan_out("s", [1], then="j", on_error="skip")  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="on_timeout needs a timeout"):
        wait("go", then="j", on_timeout="k")
    with pytest.raises(DefinitionError, match="invalid signal name"):
        wait("no spaces", then="j")
    with pytest.raises(DefinitionError, match="must be >= 0 seconds"):
        sleep(-1, then="j")
    with pytest.raises(TypeError, match="takes a step or a step name"):
        fan_out(3, [1], then="j")  # type: ignore[arg-type]


def test_flow_targets_are_checked_like_goto() -> None:
    from conveyor import fan_out, wait

    wf = Workflow("targets")

    @wf.step(start=True)
    def split(ctx, items):
        return fan_out("missing_branch", items, then="join")

    @wf.step
    def join(ctx, results):
        return results

    with pytest.raises(DefinitionError, match="'missing_branch'"):
        wf.check()

    other = Workflow("waits")

    @other.step(start=True)
    def ask(ctx, x):
        return wait("go", then="nowhere")

    with pytest.raises(DefinitionError, match="'nowhere'"):
        other.check()
