"""Dead letters: list them (oldest first across partitions), read one, replay its workflow's
failed step (replay.lua), or drop it. A dead letter's id is ``p<partition>:<entry id>``."""

from __future__ import annotations

from .. import codec
from ..errors import DeadLetterNotFoundError, ReplayError, ScriptCode
from .base import Role, now_ms
from .records import DeadLetter, StepError, from_ms


def _text(value: bytes | None) -> str | None:
    return value.decode() if value is not None else None


def _entry_order(letter: DeadLetter) -> tuple[int, int]:
    """Stream entry ids are <ms>-<seq>: order dead letters by when they were written."""
    ms, _, seq = letter.id.partition(":")[2].partition("-")
    return int(ms), int(seq or 0)


class DeadLetters(Role):
    @staticmethod
    def _split_dead_id(dead_id: str) -> tuple[int, str]:
        tag, sep, entry = dead_id.partition(":")
        if not sep or not tag.startswith("p") or not tag[1:].isdigit():
            raise DeadLetterNotFoundError(
                f"invalid dead-letter id {dead_id!r}: expected p<partition>:<entry id>"
            )
        return int(tag[1:]), entry

    @staticmethod
    def _dead_letter(partition: int, entry_id: bytes, f: dict[bytes, bytes]) -> DeadLetter:
        error = codec.loads(f.get(b"error"))
        task = f.get(b"task")
        return DeadLetter(
            id=f"p{partition}:{entry_id.decode()}",
            workflow_id=_text(f.get(b"workflow_id")),
            workflow=_text(f.get(b"workflow")),
            step=_text(f.get(b"step")),
            task=int(task) if task else None,
            queue=_text(f.get(b"queue")),
            reason=_text(f.get(b"reason")) or "",
            error=StepError.model_validate(error) if error else None,
            failed_at=from_ms(f.get(b"failed_at")),
        )

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Dead letters of every partition, oldest first, at most ``limit``."""
        pipe = self.redis.pipeline(transaction=False)
        for p in range(self.settings.partitions):
            pipe.xrange(self.keys.dead(p), count=limit)
        letters: list[DeadLetter] = []
        for p, entries in enumerate(await pipe.execute()):
            letters.extend(self._dead_letter(p, eid, f) for eid, f in entries)
        letters.sort(key=_entry_order)
        return letters[:limit]

    async def dead_letter(self, dead_id: str) -> DeadLetter:
        partition, entry = self._split_dead_id(dead_id)
        found = await self.redis.xrange(self.keys.dead(partition), entry, entry)
        if not found:
            raise DeadLetterNotFoundError(f"no dead letter {dead_id!r}")
        return self._dead_letter(partition, found[0][0], found[0][1])

    async def replay(self, dead_id: str) -> str:
        """Re-run the failed step of a dead letter's workflow; returns the workflow id."""
        letter = await self.dead_letter(dead_id)
        if not letter.workflow_id or not letter.queue or letter.task is None:
            raise ReplayError(f"dead letter {dead_id} names no workflow task: drop it instead")
        partition, entry = self._split_dead_id(dead_id)
        keys = [
            self.keys.dead(partition),
            self.keys.workflow(letter.workflow_id),
            self.keys.history(letter.workflow_id),
            self.keys.stream(partition, letter.queue),
            self.keys.stopped(partition),
        ]
        code, detail = await self.scripts.call(
            self.redis, "replay", keys, [entry, now_ms()], self.confirm
        )
        detail = detail.decode() if isinstance(detail, bytes) else str(detail)
        if code == ScriptCode.NOT_FOUND and detail == "entry":
            raise DeadLetterNotFoundError(f"no dead letter {dead_id!r}")
        if code == ScriptCode.NOT_FOUND:
            raise ReplayError(
                f"workflow {letter.workflow_id} of dead letter {dead_id} has expired; "
                "its state is gone, so it cannot be replayed"
            )
        if code == ScriptCode.NOT_FAILED:
            raise ReplayError(
                f"workflow {letter.workflow_id} is {detail!r}, not failed; nothing replayed"
            )
        return letter.workflow_id

    async def drop_dead_letter(self, dead_id: str) -> None:
        partition, entry = self._split_dead_id(dead_id)
        if not await self.redis.xdel(self.keys.dead(partition), entry):
            raise DeadLetterNotFoundError(f"no dead letter {dead_id!r}")
