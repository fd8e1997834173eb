"""The coalescer that batches concurrent starts: a caller cancelled while its task sends a
batch must not leave the other callers of that batch waiting for ever."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from conveyor.coalesce import Coalescer
from conveyor.storage.connection import UNAVAILABLE


async def test_a_cancelled_sender_does_not_strand_the_batch() -> None:
    release = asyncio.Event()
    batches: list[list[int]] = []

    async def send_many(items: list[int]) -> list[int]:
        batches.append(items)
        await release.wait()  # a pipeline in flight
        return [i * 10 for i in items]

    coalescer: Coalescer[int, int] = Coalescer(send_many)
    first = asyncio.create_task(coalescer.call(1))  # sends at once, from its own task
    await asyncio.sleep(0)
    later = [asyncio.create_task(coalescer.call(i)) for i in (2, 3)]  # queue behind it
    await asyncio.sleep(0)
    first.cancel()  # e.g. asyncio.wait_for around client.start() timing out
    with pytest.raises(asyncio.CancelledError):
        await first
    release.set()
    # the next batch goes out from a task of its own and answers both
    assert await asyncio.wait_for(asyncio.gather(*later), 2) == [20, 30]
    assert batches == [[1], [2, 3]]


async def test_the_others_of_an_interrupted_batch_get_a_retryable_error() -> None:
    started = asyncio.Event()

    async def send_many(items: list[int]) -> list[int]:
        started.set()
        await asyncio.Event().wait()  # never answers
        return items

    coalescer: Coalescer[int, int] = Coalescer(send_many)
    coalescer.pending.append((7, asyncio.get_running_loop().create_future()))  # queued
    other = coalescer.pending[0][1]
    sender = asyncio.create_task(coalescer.call(1))  # takes both into its batch
    await started.wait()
    sender.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sender
    with pytest.raises(RedisConnectionError, match="interrupted"):
        await asyncio.wait_for(other, 1)
    assert isinstance(other.exception(), UNAVAILABLE)  # retried like a dropped connection
