"""Worker runtime: reader, step runner, committer, lease keeper, reclaimer, promoter."""

from .committer import Stats
from .worker import Worker

__all__ = ["Stats", "Worker"]
