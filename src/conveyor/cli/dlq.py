"""``conveyor dlq list | replay | drop``: dead letters. ``--all`` asks before it acts (or
takes ``--yes``); ``list`` and ``replay`` also go through the HTTP API (``--api``), which has
no route to drop one."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

import typer

from ..errors import ConveyorError
from .backend import Backend, Target, run_on
from .common import (
    ApiKey,
    ApiUrl,
    Namespace,
    Partitions,
    RedisUrl,
    Yes,
    can_confirm,
    confirm,
    err,
    fail,
    out,
    readable_errors,
)
from .output import print_dead_letters

dlq = typer.Typer(help="List, replay and drop dead letters.", no_args_is_help=True)

#: What --all reads: every dead letter from Redis; the API answers at most 10,000 at once.
ALL_FROM_REDIS = 1_000_000
ALL_FROM_API = 10_000

Ids = Annotated[list[str] | None, typer.Argument(help="Dead-letter ids (from `dlq list`).")]


@dlq.command("list")
@readable_errors
def dlq_list(
    limit: Annotated[int, typer.Option("--limit", "-n", min=1)] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
    redis_url: RedisUrl = None,
    namespace: Namespace = None,
    partitions: Partitions = None,
    api: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """List dead letters, oldest first."""
    target = Target(redis_url, namespace, partitions, api, api_key)
    letters = run_on(target, lambda b: b.dead_letters(limit))
    if as_json:
        for letter in letters:
            out.print(letter.model_dump_json(), highlight=False, soft_wrap=True)
    else:
        print_dead_letters(out, letters)


def _each_letter(
    ids: list[str] | None, all_: bool, yes: bool, verb: str, question: str, target: Target,
    apply: Callable[[Backend, str], Coroutine[Any, Any, Any]],
) -> None:  # fmt: skip
    """Apply ``verb`` to the letters ``ids``, or to all of them once the user said yes to
    ``question`` (formatted with their count). Exits 1 when any of them failed."""
    if bool(ids) == all_:
        fail(f"give dead-letter ids to {verb}, or --all (not both)")
    if all_:
        can_confirm(yes, f"dlq {verb} --all")
    done = "replayed" if verb == "replay" else f"{verb}ped"

    async def go(backend: Backend) -> int:
        targets = ids
        if not targets:
            limit = ALL_FROM_API if target.api else ALL_FROM_REDIS
            targets = [d.id for d in await backend.dead_letters(limit)]
            if not targets:
                out.print("no dead letters")
                return 0
            confirm(question.format(n=len(targets)), yes)
        failures = 0
        for dead_id in targets:
            try:
                result = await apply(backend, dead_id)
                out.print(
                    f"{done} {dead_id}" + (f" -> workflow {result}" if result else ""),
                    highlight=False,
                )
            except ConveyorError as exc:
                failures += 1
                err.print(f"[red]error:[/] {exc}", highlight=False)
        return failures

    if run_on(target, go):
        raise typer.Exit(1)


@dlq.command("replay")
@readable_errors
def dlq_replay(
    ids: Ids = None,
    all_: Annotated[bool, typer.Option("--all", help="Replay every dead letter.")] = False,
    yes: Yes = False,
    redis_url: RedisUrl = None,
    namespace: Namespace = None,
    partitions: Partitions = None,
    api: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Re-run the failed step of dead-lettered workflows.

    --all asks first (or takes --yes).
    """
    target = Target(redis_url, namespace, partitions, api, api_key)
    question = "Replay all {n} dead letters (their failed steps run again)?"
    _each_letter(ids, all_, yes, "replay", question, target, lambda b, i: b.replay(i))


@dlq.command("drop")
@readable_errors
def dlq_drop(
    ids: Ids = None,
    all_: Annotated[bool, typer.Option("--all", help="Drop every dead letter.")] = False,
    yes: Yes = False,
    redis_url: RedisUrl = None,
    namespace: Namespace = None,
    partitions: Partitions = None,
) -> None:
    """Delete dead letters for good.

    --all asks first (or takes --yes). Redis only: the HTTP API has no route for it.
    """
    target = Target(redis_url, namespace, partitions)
    question = "Drop all {n} dead letters for good?"
    _each_letter(ids, all_, yes, "drop", question, target, lambda b, i: b.drop(i))
