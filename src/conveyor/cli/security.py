"""``conveyor acl``: print the least-privilege Redis ACL user of a namespace (the rules:
:mod:`conveyor.storage.acl`; how to use it: docs/security.md).

Added to the CLI by :func:`register`. No ``from __future__ import annotations`` here: typer
reads the command's annotations at definition time.
"""

import os
from typing import Annotated

import typer

from ..errors import ConfigurationError
from ..storage.acl import DEFAULT_USER, acl_setuser, aclfile_line, parse_version
from .common import Namespace, err, out, readable_errors, settings_from


def register(cli: typer.Typer) -> None:
    """Add the ``acl`` command to ``cli``."""

    @cli.command()
    @readable_errors
    def acl(
        user: Annotated[
            str, typer.Option("--user", help="Name of the ACL user the engine logs in as.")
        ] = DEFAULT_USER,
        password_env: Annotated[
            str | None,
            typer.Option(
                "--password-env",
                metavar="VAR",
                help="Environment variable holding the user's password: the line carries "
                "its SHA-256 (#...), never the password. Without it the user's passwords "
                "are left as they are.",
            ),
        ] = None,
        cluster: Annotated[
            bool, typer.Option("--cluster", help="Also allow Redis Cluster's discovery commands.")
        ] = False,
        redis_version: Annotated[
            str | None,
            typer.Option(
                "--redis-version",
                metavar="X.Y",
                help="The server's version, for rules only some versions accept (CLIENT "
                "SETINFO, WAITAOF, clearselectors). Default: rules every Redis >= 6.2 takes.",
            ),
        ] = None,
        aclfile: Annotated[
            bool,
            typer.Option("--aclfile", help="Print the line for an ACL file instead of a command."),
        ] = False,
        namespace: Namespace = None,
    ) -> None:
        """Print the ACL SETUSER command of a least-privilege Redis user for a namespace.

        The user may run the engine (workers, API, clients, CLI) in one namespace and
        nothing else: its keys and channels only, only the commands Conveyor sends (no
        FLUSHALL, KEYS, CONFIG, DEBUG...). Paste it into redis-cli as an admin. See
        docs/security.md.
        """
        settings = settings_from(None, namespace, None)
        password = None
        if password_env is not None:
            password = os.environ.get(password_env)
            if not password:
                raise ConfigurationError(f"--password-env: {password_env} is not set or empty")
        version = parse_version(redis_version) if redis_version else None
        ns = settings.namespace
        if aclfile:
            line = aclfile_line(ns, user, password=password, cluster=cluster, redis_version=version)
        else:
            command = acl_setuser(
                ns, user, password=password, cluster=cluster, redis_version=version
            )
            line = " ".join(command)
        out.print(line, highlight=False)
        if password is None:
            err.print(
                f"note: no password rule: an existing user {user!r} keeps its passwords, a new "
                "one cannot log in until it has one (use --password-env VAR)",
                highlight=False,
            )
