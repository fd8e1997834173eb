"""Waiting on conditions in tests: one poll-until loop, sync and async.

Tests wait for a condition, never for a fixed time. The deadlines are generous (a loaded CI
machine can be slow), which costs nothing when the condition holds early: the loop returns at
once.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

T = TypeVar("T")

TIMEOUT = 30.0
INTERVAL = 0.02


def until(
    predicate: Callable[[], T],
    timeout: float = TIMEOUT,
    what: str = "",
    interval: float = INTERVAL,
) -> T:
    """Call ``predicate`` until it returns something truthy and return that; fail the test,
    naming ``what``, when ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {timeout:g} s: {what or _name(predicate)}")
        time.sleep(interval)


async def until_async(
    predicate: Callable[[], Awaitable[T] | T],
    timeout: float = TIMEOUT,
    what: str = "",
    interval: float = INTERVAL,
) -> T:
    """:func:`until` in a coroutine: ``predicate`` may be sync or async, and the event loop
    runs between tries."""
    deadline = time.monotonic() + timeout
    while True:
        value: Any = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return cast(T, value)
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {timeout:g} s: {what or _name(predicate)}")
        await asyncio.sleep(interval)


def _name(predicate: Callable[..., Any]) -> str:
    return getattr(predicate, "__qualname__", repr(predicate))
