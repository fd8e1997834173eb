"""The app ``conveyor dev`` runs when given none: a small pipeline with no extra dependencies."""

from __future__ import annotations

from typing import Any

from .app import App
from .workflow import Done, Goto, StepContext, Workflow, done, goto

demo = Workflow("demo")


@demo.step(start=True)
async def greet(ctx: StepContext, name: str) -> Goto:
    return goto(shout, {"text": f"hello, {name}", "rounds": 0})


@demo.step(retries=2, backoff=0.1)
def shout(ctx: StepContext, job: dict[str, Any]) -> Goto | Done:
    # A loop decided at run time: add an exclamation mark until there are three.
    if job["rounds"] < 3:
        return goto(shout, {"text": job["text"] + "!", "rounds": job["rounds"] + 1})
    return done({"message": job["text"].upper()})


app = App(workflows=[demo])
