"""Prototypes of suggested speed-ups, applied as patches at run time, then bench/throughput.py.

Nothing here is product code: each patch stands in for a change proposed in
docs/benchmarks.md, so its gain can be measured on the same machine before anyone writes it.

  no-socket-timeout  redis-py 8 gives every connection socket_timeout=5s, which wraps each
                     write in asyncio.wait_for (a Task and a timer per command on 3.11) and
                     each reply read in asyncio.timeout. This patch turns the timeout off.
  commit-lanes       up to 4 commit pipelines of at most 128 transitions in flight at once,
                     instead of one of up to 512: Redis executes a batch while Python builds
                     the next, instead of the two taking turns.

Usage: python bench/experiments.py PATCH[,PATCH...] [throughput.py options]

  python bench/experiments.py no-socket-timeout --only single --repeat 3
  python bench/experiments.py no-socket-timeout,commit-lanes --only single --only three

Two earlier patches measured here are now in the package and were removed from this file:
packing commands with hiredis (conveyor.storage.connection) and coalescing concurrent
starts into one pipeline (the client's StartCoalescer). docs/benchmarks.md has their
numbers.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def no_socket_timeout() -> None:
    from redis.asyncio.connection import AbstractConnection

    original = AbstractConnection.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.socket_timeout = None

    AbstractConnection.__init__ = init  # type: ignore[method-assign]


def commit_lanes(lanes: int = 4, max_batch: int = 128) -> None:
    """Several commit pipelines in flight at once (each on its own pooled connection),
    in batches of at most ``max_batch``, so that Redis runs one batch while Python builds
    the next; the shipped committer has one batch of up to 512 in flight and waits."""
    import asyncio

    from conveyor.storage.connection import UNAVAILABLE
    from conveyor.worker.committer import Committer
    from conveyor.worker.resilience import Backoff

    async def run(self: Any) -> None:
        self._busy = 0
        await asyncio.gather(*(lane(self) for _ in range(lanes)))

    async def lane(self: Any) -> None:
        backoff = Backoff()
        while True:
            if not self.pending:
                if self._busy == 0:
                    self._idle.set()
                    if self._closing:
                        return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self.pending[:max_batch]
            del self.pending[: len(batch)]
            self._busy += 1
            try:
                results = await self.store.commit([call for call, _, _ in batch])
            except UNAVAILABLE as exc:
                self.pending[:0] = batch
                self._busy -= 1
                await backoff.wait("committing step results", exc)
                continue
            self._busy -= 1
            backoff.reset()
            self.stats.batches += 1
            for (_, task, kind), result in zip(batch, results, strict=True):
                self._count(task, kind, result)
                self.on_done(task)

    Committer.run = run  # type: ignore[method-assign]


PATCHES: dict[str, Callable[[], None]] = {
    "no-socket-timeout": no_socket_timeout,
    "commit-lanes": commit_lanes,
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        print("patches:", ", ".join(PATCHES))
        return 0
    names = [n for n in argv[0].split(",") if n and n != "none"]
    unknown = [n for n in names if n not in PATCHES]
    if unknown:
        print(f"unknown patch(es) {unknown}; known: {', '.join(PATCHES)}", file=sys.stderr)
        return 2
    for name in names:
        PATCHES[name]()
    sys.path.insert(0, str(Path(__file__).parent))
    import throughput

    print(f"patches: {', '.join(names) or 'none'}", file=sys.stderr)
    return throughput.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
