"""The one status-to-exception function both clients use (conveyor.status.outcome_error)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conveyor import (
    DeliveryLimitExceededError,
    RunStatus,
    StepBudgetExceededError,
    WorkflowCancelledError,
    WorkflowFailedError,
)
from conveyor.errors import DELIVERY_LIMIT_EXCEEDED, STEP_BUDGET_EXCEEDED
from conveyor.status import FINISHED, outcome_error


def test_a_completed_workflow_raises_nothing() -> None:
    assert outcome_error("w1", RunStatus.COMPLETED, None) is None
    assert outcome_error("w1", "completed", {"type": "ignored"}) is None  # the JSON string


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("ValueError", WorkflowFailedError),
        (STEP_BUDGET_EXCEEDED, StepBudgetExceededError),
        (DELIVERY_LIMIT_EXCEEDED, DeliveryLimitExceededError),
        (None, WorkflowFailedError),
        (["not", "a", "name"], WorkflowFailedError),  # a malformed record: no crash
    ],
)
def test_a_failed_workflow_raises_by_its_error_type(kind: object, expected: type) -> None:
    error = {"type": kind, "message": "boom", "step": "charge"}
    exc = outcome_error("w1", "failed", error)
    assert type(exc) is expected and isinstance(exc, WorkflowFailedError)
    assert exc.workflow_id == "w1" and exc.error == error


def test_a_failure_without_its_record_still_raises() -> None:
    exc = outcome_error("w1", RunStatus.FAILED, None)
    assert type(exc) is WorkflowFailedError and exc.error == {}


@pytest.mark.parametrize("status", ["cancelled", None, ""])
def test_anything_else_finished_is_a_cancellation(status: str | None) -> None:
    exc = outcome_error("w1", str(status), None)
    assert isinstance(exc, WorkflowCancelledError) and "w1" in str(exc)


def test_finished_statuses() -> None:
    assert {"completed", "failed", "cancelled"} == FINISHED
    assert [s for s in RunStatus if s.finished] == sorted(FINISHED, key=list(RunStatus).index)
    assert not RunStatus.WAITING.finished and not RunStatus("running").finished


def test_the_function_and_its_errors_import_without_redis() -> None:
    """conveyor.http must be able to use them with only httpx and pydantic installed: their
    modules import nothing else (conveyor/__init__ aside, which is loaded here by hand)."""
    code = (
        "import importlib.util, sys, types\n"
        "pkg = types.ModuleType('conveyor'); pkg.__path__ = [sys.argv[1]]\n"
        "sys.modules['conveyor'] = pkg\n"
        "import conveyor.status\n"
        "loaded = {m.split('.')[0] for m in sys.modules}\n"
        "assert not loaded & {'redis', 'prometheus_client', 'opentelemetry', 'pydantic'}, loaded\n"
    )
    import conveyor

    folder = conveyor.__path__[0]
    subprocess.run([sys.executable, "-c", code, folder], check=True, timeout=60)
