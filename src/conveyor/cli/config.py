"""``conveyor config``: the effective settings, where each came from, secrets masked."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from .common import Namespace, Partitions, RedisUrl, out, readable_errors, settings_from


@readable_errors
def config(
    app: Annotated[
        str | None,
        typer.Argument(help="An App, as MODULE:ATTRIBUTE, whose own arguments count too."),
    ] = None,
    redis_url: RedisUrl = None,
    namespace: Namespace = None,
    partitions: Partitions = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Print the effective settings: each variable, its value and where it came from.

    Sources: argument (a command-line option, or the App's own keyword), environment, default.
    Passwords and API keys are masked.
    """
    from ..loader import load_app
    from ..settings import (
        ApiEnvironment,
        ClientSettings,
        LogSettings,
        RedisSecrets,
        RuntimeSettings,
        effective,
    )

    given = {"redis_url": redis_url, "namespace": namespace, "partitions": partitions}
    given = {k: v for k, v in given.items() if v is not None}
    if app is not None:
        loaded = load_app(app).configured(**given)
        rows = effective(loaded.settings, loaded.arguments)
    else:
        rows = effective(settings_from(redis_url, namespace, partitions), given)
    for group in (LogSettings, RuntimeSettings, RedisSecrets, ApiEnvironment, ClientSettings):
        rows += effective(group())
    if as_json:
        for row in rows:
            out.print(json.dumps(row), highlight=False, markup=False)
        return
    width = max(len(row["name"]) for row in rows)
    for row in rows:
        out.print(f"{row['name']:<{width}}  {_shown(row['value'])}  ({row['source']})",
                  highlight=False, markup=False)  # fmt: skip


def _shown(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
