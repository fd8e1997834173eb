"""``App``: the set of workflows a worker runs, plus the settings to reach Redis."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .errors import DefinitionError, UnknownWorkflowError
from .settings import Settings
from .workflow import Step, Workflow


class App:
    """The workflows of one deployable unit. ``conveyor worker module:app`` loads one.

    Settings not given here come from the environment (see :class:`Settings`).
    """

    def __init__(
        self,
        workflows: Iterable[Workflow],
        *,
        redis_url: str | None = None,
        namespace: str | None = None,
        partitions: int | None = None,
        **settings: Any,
    ) -> None:
        self.workflows: dict[str, Workflow] = {}
        for wf in workflows:
            if not isinstance(wf, Workflow):
                raise DefinitionError(f"App(workflows=...) takes Workflow objects, not {wf!r}")
            if wf.name in self.workflows:
                raise DefinitionError(f"duplicate workflow name {wf.name!r} in App")
            self.workflows[wf.name] = wf.check()
        self.settings = Settings.from_env(
            redis_url=redis_url, namespace=namespace, partitions=partitions, **settings
        )

    def __repr__(self) -> str:
        return f"<App workflows={list(self.workflows)} namespace={self.settings.namespace!r}>"

    def workflow(self, name: str) -> Workflow:
        try:
            return self.workflows[name]
        except KeyError:
            raise UnknownWorkflowError(
                f"unknown workflow {name!r} (known: {', '.join(self.workflows) or 'none'})"
            ) from None

    def step(self, workflow: str, step: str) -> Step | None:
        wf = self.workflows.get(workflow)
        return wf.get(step) if wf else None

    @property
    def queues(self) -> list[str]:
        """Every queue some step of this app runs on, in a stable order."""
        seen: dict[str, None] = {}
        for wf in self.workflows.values():
            for s in wf.steps.values():
                seen.setdefault(s.queue, None)
        return list(seen)
