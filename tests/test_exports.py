"""The public API is what __all__ says, and nothing leaks by accident."""

import conveyor

EXPECTED = {
    "App", "AsyncClient", "BackPressureError", "Client", "ConfigurationError", "ConveyorError",
    "DeadLetter", "DeadLetterNotFoundError", "DefinitionError", "NonRetryableError",
    "ReplayError", "ResultTimeoutError", "Retry", "RetryPolicy", "Settings", "Step",
    "StepContext", "StepError", "StepInputError", "StepRecord", "UnknownWorkflowError",
    "Worker", "Workflow", "WorkflowCancelledError", "WorkflowFailedError",
    "WorkflowNotFoundError", "WorkflowStatus", "__version__", "done", "goto",
    # flow control (issue 3)
    "BatchContext", "Limit", "RateLimited", "SignalError", "StepBudgetExceededError", "WaitInfo",
    "error_of", "fan_out", "is_timeout", "sleep", "start_child", "wait",
    # durability and security (issue 7)
    "OutboundBlockedError", "ReplicationError",
    # typed protocol (issue 15): the enums of the wire formats, every error a user sees by name
    "OutcomeKind", "RunStatus", "BatchResultError", "DeliveryLimitExceededError",
    "ResultEncodingError", "StepTimeoutError", "UnknownStepError",
    # hooks for telemetry (issue 15)
    "WorkerListener",
}  # fmt: skip


def test_public_exports_are_pinned() -> None:
    assert set(conveyor.__all__) == EXPECTED
    for name in conveyor.__all__:
        assert hasattr(conveyor, name), name


def test_errors_share_one_root() -> None:
    for name in conveyor.__all__:
        obj = getattr(conveyor, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, conveyor.ConveyorError), name


def test_every_engine_error_is_exported() -> None:
    """An error a user can meet by name (raised, or recorded as a failed attempt's type) is
    importable from ``conveyor``."""
    exported = {id(getattr(conveyor, name)) for name in conveyor.__all__}
    for name, obj in vars(conveyor.errors).items():
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert id(obj) in exported, name


def test_enums_are_their_wire_strings() -> None:
    assert conveyor.RunStatus.COMPLETED == "completed"
    assert conveyor.OutcomeKind("dead_unrun") is conveyor.OutcomeKind.DEAD_UNRUN
    assert {"waiting": 1}[conveyor.RunStatus.WAITING] == 1  # hashes as its string
