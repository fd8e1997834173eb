"""``conveyor``: run workers and dev mode, start and inspect workflows, handle dead letters.

The commands live by concern: serve.py (worker, dev, api, api-key), workflows.py (start,
status, result, list, events, signal, cancel), dlq.py, observe.py (exporter, top), scale.py
(autoscale-sim) and security.py (acl); common.py holds what they share. Every command's
docstring is a one-line summary (what ``conveyor --help`` lists), a blank line, then detail.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from .. import __version__
from . import dlq, observe, scale, security, serve, workflows
from .common import out

cli = typer.Typer(
    name="conveyor",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        out.print(f"conveyor {__version__}", highlight=False)
        raise typer.Exit()


@cli.callback()
def main(
    version: Annotated[
        bool | None,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = None,
) -> None:
    """Durable, high-throughput agentic workflows on Redis Streams."""


serve.register(cli)
workflows.register(cli)
cli.add_typer(dlq.dlq, name="dlq")
observe.register(cli)
scale.register(cli)
security.register(cli)


def run() -> None:
    try:
        cli()
    except KeyboardInterrupt:
        sys.exit(130)
