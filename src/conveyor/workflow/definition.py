"""Workflow and Step definitions: pure data built by decorators, checked at definition time."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, get_type_hints, overload

from pydantic import BaseModel, TypeAdapter, ValidationError

from ..errors import DefinitionError, StepInputError
from ..limits import Limit, as_limit
from .policy import RetryPolicy

StepFunction = Callable[..., Any]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,127}$")
DEFAULT_QUEUE = "default"
DEFAULT_MAX_STEPS = 1000


def check_name(kind: str, name: str) -> str:
    """Names end up in Redis keys and metric labels: keep them short and plain."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise DefinitionError(
            f"invalid {kind} name {name!r}: use letters, digits, '_', '-' or '.', "
            "starting with a letter or '_' (at most 128 characters)"
        )
    return name


@dataclass(eq=False)
class Step:
    """One step of a workflow. Calling it calls the original function (handy in unit tests)."""

    name: str
    fn: StepFunction
    workflow_name: str
    start: bool = False
    then: str | None = None
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: float | None = None
    queue: str = DEFAULT_QUEUE
    is_async: bool = False
    takes_input: bool = True
    input_adapter: TypeAdapter[Any] | None = None
    cache_ttl: float | None = None
    rate_limit: Limit | None = None
    concurrency_key: Callable[[Any], Any] | None = None
    max_concurrency: int | None = None
    batch_size: int | None = None
    batch_wait_ms: float = 10.0
    on_cancel: bool = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Step {self.workflow_name}.{self.name} queue={self.queue!r}>"

    @property
    def qualified_name(self) -> str:
        return f"{self.workflow_name}.{self.name}"

    def convert_input(self, value: Any) -> Any:
        """Validate ``value`` against the step's annotated pydantic model, if it has one."""
        if self.input_adapter is None:
            return value
        try:
            return self.input_adapter.validate_python(value)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'input'}: {e['msg']}" for e in exc.errors()
            )
            raise StepInputError(
                f"input of step {self.qualified_name!r} is invalid: {problems}"
            ) from exc


def _input_adapter(fn: StepFunction) -> tuple[bool, TypeAdapter[Any] | None]:
    """Whether ``fn`` takes an input argument, and a validator when it is a pydantic model."""
    params = [
        p
        for p in inspect.signature(fn).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if not params:
        raise DefinitionError(f"step {fn.__qualname__!r} must take ctx as its first argument")
    required_extra = [p for p in params[2:] if p.default is p.empty]
    if required_extra:
        raise DefinitionError(
            f"step {fn.__qualname__!r} takes (ctx, input): extra argument "
            f"{required_extra[0].name!r} has no default"
        )
    if len(params) == 1:
        return False, None
    try:
        hints = get_type_hints(fn)
    except Exception:  # an unresolved forward reference: treat the input as plain JSON
        hints = {}
    annotation = hints.get(params[1].name)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True, TypeAdapter(annotation)
    return True, None


class Workflow:
    """A named set of steps. Define steps with ``@wf.step``; the first ``start=True`` step
    (or else the first step defined) runs first."""

    def __init__(
        self, name: str, *, queue: str = DEFAULT_QUEUE, max_steps: int = DEFAULT_MAX_STEPS
    ) -> None:
        self.name = check_name("workflow", name)
        self.default_queue = check_name("queue", queue)
        if not isinstance(max_steps, int) or max_steps < 1:
            raise DefinitionError(f"workflow {name!r}: max_steps must be a positive integer")
        #: most tasks one run may create (steps, retries excluded; branches included)
        self.max_steps = max_steps
        self.steps: dict[str, Step] = {}
        self._checked = False

    def __repr__(self) -> str:
        return f"<Workflow {self.name} steps={list(self.steps)}>"

    # -- definition -------------------------------------------------------------------------

    @overload
    def step(self, fn: StepFunction, /) -> Step: ...

    @overload
    def step(
        self,
        fn: StepFunction,
        /,
        *,
        name: str | None = None,
        start: bool = False,
        then: Step | str | None = None,
        retries: int = 0,
        backoff: float | RetryPolicy = 1.0,
        timeout: float | None = None,
        queue: str | None = None,
        cache_ttl: float | None = None,
        rate_limit: str | Limit | None = None,
        concurrency_key: Callable[[Any], Any] | None = None,
        max_concurrency: int | None = None,
        batch_size: int | None = None,
        batch_wait_ms: float = 10.0,
        on_cancel: bool = False,
    ) -> Step: ...

    @overload
    def step(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        start: bool = False,
        then: Step | str | None = None,
        retries: int = 0,
        backoff: float | RetryPolicy = 1.0,
        timeout: float | None = None,
        queue: str | None = None,
        cache_ttl: float | None = None,
        rate_limit: str | Limit | None = None,
        concurrency_key: Callable[[Any], Any] | None = None,
        max_concurrency: int | None = None,
        batch_size: int | None = None,
        batch_wait_ms: float = 10.0,
        on_cancel: bool = False,
    ) -> Callable[[StepFunction], Step]: ...

    def step(
        self,
        fn: StepFunction | None = None,
        /,
        *,
        name: str | None = None,
        start: bool = False,
        then: Step | str | None = None,
        retries: int = 0,
        backoff: float | RetryPolicy = 1.0,
        timeout: float | None = None,
        queue: str | None = None,
        cache_ttl: float | None = None,
        rate_limit: str | Limit | None = None,
        concurrency_key: Callable[[Any], Any] | None = None,
        max_concurrency: int | None = None,
        batch_size: int | None = None,
        batch_wait_ms: float = 10.0,
        on_cancel: bool = False,
    ) -> Step | Callable[[StepFunction], Step]:
        """Register a step. Usable bare (``@wf.step``) or with options (``@wf.step(...)``).

        ``then`` is the step that receives this step's return value (a step object or a step
        name; names may refer to steps defined further down). ``backoff`` is the first retry
        delay in seconds, or a full :class:`RetryPolicy` (its ``retries`` is overridden by
        ``retries`` when that is given).

        ``cache_ttl`` memoises the step's result by (workflow, step, input) for that many
        seconds, across workflows and workers. ``rate_limit`` ("100/s", or a
        :class:`~conveyor.Limit` shared by name and charged by cost) and ``concurrency_key``
        with ``max_concurrency`` (at most N at once per key) hold a task back until it may
        run, without counting an attempt. ``batch_size`` hands the function a list of up to
        that many inputs (waiting at most ``batch_wait_ms`` to fill it) and expects a list of
        results. ``on_cancel=True`` makes this the step that runs once when the workflow is
        cancelled.
        """

        def register(func: StepFunction) -> Step:
            step = self._add(func, name, start, then, retries, backoff, timeout, queue)
            return self._add_options(
                step, cache_ttl, rate_limit, concurrency_key, max_concurrency,
                batch_size, batch_wait_ms, on_cancel,
            )  # fmt: skip

        return register(fn) if fn is not None else register

    def _add(
        self,
        fn: StepFunction,
        name: str | None,
        start: bool,
        then: Step | str | None,
        retries: int,
        backoff: float | RetryPolicy,
        timeout: float | None,
        queue: str | None,
    ) -> Step:
        if isinstance(fn, Step):
            raise DefinitionError(f"{fn!r} is already a step; define each step once")
        if not callable(fn):
            raise DefinitionError(f"a step must be a function, not {type(fn).__name__}")
        step_name = check_name("step", name or fn.__name__)
        if step_name in self.steps:
            raise DefinitionError(f"duplicate step name {step_name!r} in workflow {self.name!r}")
        if start and any(s.start for s in self.steps.values()):
            first = next(s.name for s in self.steps.values() if s.start)
            raise DefinitionError(
                f"step {step_name!r}: workflow {self.name!r} already has a start step ({first!r})"
            )
        if timeout is not None and timeout <= 0:
            raise DefinitionError(f"step {step_name!r}: timeout must be > 0 seconds")
        if isinstance(backoff, RetryPolicy):
            policy = backoff if retries == 0 else replace(backoff, retries=retries)
        else:
            try:
                policy = RetryPolicy(retries=retries, backoff=float(backoff))
            except ValueError as exc:
                raise DefinitionError(f"step {step_name!r}: {exc}") from exc
        takes_input, adapter = _input_adapter(fn)
        step = Step(
            name=step_name,
            fn=fn,
            workflow_name=self.name,
            start=start,
            then=self._then_name(step_name, then),
            policy=policy,
            timeout=timeout,
            queue=check_name("queue", queue) if queue else self.default_queue,
            is_async=inspect.iscoroutinefunction(fn),
            takes_input=takes_input,
            input_adapter=adapter,
        )
        self.steps[step_name] = step
        self._checked = False
        return step

    def _add_options(
        self,
        step: Step,
        cache_ttl: float | None,
        rate_limit: str | Limit | None,
        concurrency_key: Callable[[Any], Any] | None,
        max_concurrency: int | None,
        batch_size: int | None,
        batch_wait_ms: float,
        on_cancel: bool,
    ) -> Step:
        where = f"step {step.name!r}"
        try:
            if cache_ttl is not None and cache_ttl <= 0:
                raise DefinitionError(f"{where}: cache_ttl must be > 0 seconds")
            if (concurrency_key is None) != (max_concurrency is None):
                raise DefinitionError(f"{where}: concurrency_key and max_concurrency go together")
            if concurrency_key is not None and not callable(concurrency_key):
                raise DefinitionError(f"{where}: concurrency_key must be a function of input")
            if max_concurrency is not None and max_concurrency < 1:
                raise DefinitionError(f"{where}: max_concurrency must be at least 1")
            if batch_size is not None and batch_size < 1:
                raise DefinitionError(f"{where}: batch_size must be at least 1")
            if batch_wait_ms < 0:
                raise DefinitionError(f"{where}: batch_wait_ms must be >= 0")
            if batch_size is not None and not step.takes_input:
                raise DefinitionError(f"{where}: a batched step takes (ctx, inputs: list)")
            if on_cancel and any(s.on_cancel for s in self.steps.values() if s is not step):
                raise DefinitionError(
                    f"{where}: workflow {self.name!r} already has an on_cancel step"
                )
            if on_cancel and step.start:
                raise DefinitionError(f"{where}: the start step cannot be the on_cancel step")
            limit = None
            if rate_limit is not None:
                limit = as_limit(rate_limit, f"{self.name}.{step.name}")
        except DefinitionError:
            del self.steps[step.name]
            raise
        step.cache_ttl = cache_ttl
        step.rate_limit = limit
        step.concurrency_key = concurrency_key
        step.max_concurrency = max_concurrency
        step.batch_size = batch_size
        step.batch_wait_ms = float(batch_wait_ms)
        step.on_cancel = on_cancel
        return step

    def _then_name(self, step_name: str, then: Step | str | None) -> str | None:
        if then is None:
            return None
        if isinstance(then, Step):
            if then.workflow_name != self.name:
                raise DefinitionError(
                    f"step {step_name!r}: then={then.qualified_name!r} belongs to another "
                    f"workflow ({then.workflow_name!r}), not {self.name!r}"
                )
            return then.name
        if isinstance(then, str):
            return check_name("step", then)
        raise DefinitionError(f"step {step_name!r}: then must be a step or a step name")

    @classmethod
    def pipeline(
        cls, name: str, functions: Iterable[StepFunction], **step_options: Any
    ) -> Workflow:
        """A linear workflow: each function's return value is the next function's input."""
        fns = list(functions)
        if not fns:
            raise DefinitionError(f"pipeline {name!r} needs at least one step")
        wf = cls(name)
        names = [getattr(f, "__name__", "") for f in fns]
        for i, fn in enumerate(fns):
            then = names[i + 1] if i + 1 < len(fns) else None
            wf.step(fn, start=(i == 0), then=then, **step_options)
        return wf.check()

    # -- checks -----------------------------------------------------------------------------

    @property
    def start_step(self) -> Step:
        self.check()
        for s in self.steps.values():
            if s.start:
                return s
        return next(s for s in self.steps.values() if not s.on_cancel)

    def check(self) -> Workflow:
        """Check the graph: a start step, known ``then`` targets, ``goto`` targets in reach."""
        if self._checked:
            return self
        if not self.steps:
            raise DefinitionError(f"workflow {self.name!r} has no steps")
        for s in self.steps.values():
            if s.then is not None and s.then not in self.steps:
                raise DefinitionError(
                    f"step {s.name!r} of workflow {self.name!r}: then={s.then!r} is not a step "
                    f"of this workflow (steps: {', '.join(self.steps)})"
                )
        from .checks import check_goto_targets

        check_goto_targets(self)
        self._checked = True
        return self

    def get(self, step_name: str) -> Step | None:
        return self.steps.get(step_name)

    @property
    def on_cancel_step(self) -> Step | None:
        return next((s for s in self.steps.values() if s.on_cancel), None)
