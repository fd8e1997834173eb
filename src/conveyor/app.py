"""``App``: the set of workflows a worker runs, plus the settings to reach Redis."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from .errors import DefinitionError, UnknownWorkflowError
from .settings import Settings
from .workflow import Step, Workflow


class App:
    """The workflows of one deployable unit. ``conveyor worker module:app`` loads one.

    Settings not given here come from the environment, else their defaults (see
    :class:`Settings`); :meth:`configured` puts more arguments on top (the CLI's options).
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
        given = {"redis_url": redis_url, "namespace": namespace, "partitions": partitions}
        #: the settings given in code (not None), for `configured` and `conveyor config`
        self.arguments: dict[str, Any] = {
            k: v for k, v in {**given, **settings}.items() if v is not None
        }
        self.settings = Settings.from_env(**self.arguments)

    def configured(self, **overrides: Any) -> App:
        """A copy whose settings are built once more with ``overrides`` (those not None) above
        this App's own arguments: how the CLI's ``--redis-url`` and the like apply. The loaded
        App is left as it is."""
        given = {k: v for k, v in overrides.items() if v is not None}
        if not given:
            return self
        clone = copy.copy(self)
        clone.arguments = {**self.arguments, **given}
        clone.settings = Settings.from_env(**clone.arguments)
        return clone

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
