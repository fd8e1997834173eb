"""Everything that touches Redis: key names, Lua transitions and the store interface."""

from .connection import connect
from .keys import Keys
from .records import DeadLetter, StepError, StepRecord, WorkflowStatus
from .store import Store

__all__ = ["DeadLetter", "Keys", "StepError", "StepRecord", "Store", "WorkflowStatus", "connect"]
