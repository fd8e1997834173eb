"""Worker runtime: reader, step runner, committer, lease keeper, reclaimer, promoter."""

from .listeners import Stats, WorkerListener
from .worker import Worker

__all__ = ["Stats", "Worker", "WorkerListener"]
