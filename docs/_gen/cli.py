"""MkDocs hook: lets mkdocs-click document the ``conveyor`` command (docs/reference/cli.md).

mkdocs-click writes the reference from a Click command at build time, so the page follows the
code. Conveyor's command is a Typer app (``conveyor.cli.main.cli``); Typer builds the Click
command it runs with ``typer.main.get_command``, and this hook puts that command where the
page's directive can name it: attribute ``conveyor`` of the module ``_conveyor_cli_docs``.
"""

from __future__ import annotations

import sys
import types
from typing import Any

MODULE = "_conveyor_cli_docs"


def on_config(config: Any) -> Any:
    import typer

    # `mkdocs serve` runs this again on every rebuild: import the command's modules afresh, so
    # the page follows edits to the CLI without a restart
    for name in [m for m in sys.modules if m == "conveyor.cli" or m.startswith("conveyor.cli.")]:
        del sys.modules[name]
    from conveyor.cli.main import cli

    shim = types.ModuleType(MODULE, "The conveyor command as Click sees it (for mkdocs-click).")
    shim.conveyor = typer.main.get_command(cli)  # type: ignore[attr-defined]
    sys.modules[MODULE] = shim
    return config
