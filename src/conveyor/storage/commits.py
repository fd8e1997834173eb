"""Committing transitions: the runner's finished tasks, batched per partition into calls of
commit.lua (transitions.py builds each transition's keys and arguments)."""

from __future__ import annotations

from typing import Any

from .base import Role
from .connection import UNAVAILABLE
from .transitions import Transition

#: Most transitions sent in one call of the commit script (bounds how long one call runs).
COMMIT_BATCH = 64


class Commits(Role):
    async def commit(self, transitions: list[Transition]) -> list[int | Exception]:
        """Run transitions in one pipeline, batched per partition (one script call for up to
        COMMIT_BATCH of them). Each result is a ScriptCode value, or the error of its call (a
        script error). A connection error, or any other "unavailable" error of one call,
        raises: it is then unknown which ran, and since every transition is idempotent the
        caller simply commits the same transitions again."""
        calls: list[list[Any]] = []
        owners: list[list[int]] = []  # for each call, the transitions it carries
        batches: dict[int, list[int]] = {}
        for i, t in enumerate(transitions):
            batches.setdefault(t.partition, []).append(i)
        head = [self.settings.group, self._retention, "1" if self.settings.events else "0"]
        for members in batches.values():
            for start in range(0, len(members), COMMIT_BATCH):
                chunk = members[start : start + COMMIT_BATCH]
                keys: list[str] = []
                argv: list[Any] = list(head)
                for i in chunk:
                    t = transitions[i]
                    keys += t.keys
                    argv += [len(t.keys), len(t.argv), *t.argv]
                calls.append(self.scripts.args("commit", keys, argv))
                owners.append(chunk)
        results: list[int | Exception] = [0] * len(transitions)
        replies = await self.scripts.call_many(self.redis, calls, self.confirm)
        transient = next((r for r in replies if isinstance(r, UNAVAILABLE)), None)
        if transient is not None:
            # a call met a passing condition (a slot moving between Cluster masters, a
            # failover): raise it, so the whole batch is sent again (repeats are DUPLICATE)
            raise transient
        for members, reply in zip(owners, replies, strict=True):
            if isinstance(reply, Exception):
                for i in members:
                    results[i] = reply
            else:
                for i, code in zip(members, reply, strict=True):
                    results[i] = int(code)
        return results
