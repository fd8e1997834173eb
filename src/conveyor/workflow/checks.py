"""Static checks of ``goto`` targets, run when a workflow is checked (at definition time).

A step decides its next step at run time, but most ``goto(...)`` calls (and the steps named
by ``fan_out``, ``wait``, ``sleep`` and ``start_child``) name their target directly.
Reading the step's source finds those, so a target in another workflow or one that does not
exist fails at import, naming the step, instead of in production. The worker checks the same
rule again at run time for targets this cannot see.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from typing import TYPE_CHECKING, Any

from ..errors import DefinitionError

if TYPE_CHECKING:
    from .definition import Step, Workflow


def _goto_targets(fn: Any) -> list[ast.expr]:
    try:
        source = textwrap.dedent(inspect.getsource(fn))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError):
        return []  # no source (REPL, C functions): the run-time check still applies
    targets = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
        if called in ("goto", "fan_out") and node.args:
            targets.append(node.args[0])
        if called in _TARGET_KEYWORDS:
            targets += [k.value for k in node.keywords if k.arg in _TARGET_KEYWORDS[called]]
    return targets


# the keyword arguments of the flow-control functions that name a step of the same workflow
_TARGET_KEYWORDS = {
    "fan_out": ("then",),
    "wait": ("then", "on_timeout"),
    "sleep": ("then",),
    "start_child": ("then",),
}


def _resolve(fn: Any, expr: ast.expr) -> Any:
    """The object an expression names, looked up like Python would (closure, then globals)."""
    if isinstance(expr, ast.Constant):
        return expr.value
    if isinstance(expr, ast.Name):
        try:
            closure = inspect.getclosurevars(fn)
        except (TypeError, ValueError):
            return None
        for scope in (closure.nonlocals, closure.globals, getattr(fn, "__globals__", {})):
            if expr.id in scope:
                return scope[expr.id]
    return None


def check_goto_targets(workflow: Workflow) -> None:
    from .definition import Step

    for step in workflow.steps.values():
        for expr in _goto_targets(step.fn):
            target = _resolve(step.fn, expr)
            if isinstance(target, Step):
                _check_step_target(workflow, step, target)
            elif isinstance(target, str) and target not in workflow.steps:
                raise DefinitionError(
                    f"step {step.name!r} of workflow {workflow.name!r}: goto({target!r}) names "
                    f"no step of this workflow (steps: {', '.join(workflow.steps)})"
                )


def _check_step_target(workflow: Workflow, step: Step, target: Step) -> None:
    if target.workflow_name != workflow.name:
        raise DefinitionError(
            f"step {step.name!r} of workflow {workflow.name!r}: goto({target.qualified_name}) "
            f"targets a step of another workflow ({target.workflow_name!r})"
        )
