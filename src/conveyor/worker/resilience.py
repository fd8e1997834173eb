"""Back off and try again while Redis is unreachable, instead of crashing or spinning."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from ..storage.connection import UNAVAILABLE

log = logging.getLogger("conveyor.worker")


class Backoff:
    """Exponential delay between reconnect attempts, reset by the first success."""

    def __init__(self, first: float = 0.05, cap: float = 5.0) -> None:
        self.first = first
        self.cap = cap
        self.delay = 0.0
        self.failures = 0

    def reset(self) -> None:
        if self.failures:
            log.info("recovered after %d failed attempts", self.failures)
        self.delay = 0.0
        self.failures = 0

    async def wait(self, what: str, exc: BaseException) -> None:
        self.failures += 1
        self.delay = min(self.cap, max(self.first, self.delay * 2))
        # one warning when the outage starts, then one every ~10 attempts: no log flood
        if self.failures == 1 or self.failures % 10 == 0:
            log.warning(
                "%s failed (%s: %s); retrying in %.2fs",
                what, type(exc).__name__, exc, self.delay,
            )  # fmt: skip
        await asyncio.sleep(self.delay)


async def every(
    interval: float,
    what: str,
    action: Callable[[], Awaitable[object]],
    stopping: asyncio.Event,
) -> None:
    """Run ``action`` every ``interval`` seconds until ``stopping`` is set. A failure (Redis
    unreachable, out of memory, ...) is logged and retried with exponential backoff, so a
    lasting problem neither stops the loop nor floods the log."""
    backoff = Backoff(first=interval, cap=max(5.0, interval))
    while not stopping.is_set():
        try:
            await action()
            backoff.reset()
        except UNAVAILABLE as exc:
            await backoff.wait(what, exc)
            continue
        except Exception as exc:
            if backoff.failures == 0:
                log.exception("%s failed", what)
            await backoff.wait(what, exc)
            continue
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), interval)
