"""Runs the API with uvicorn: ``conveyor api MODULE:app``. With ``--workers N`` uvicorn
forks N processes, each building the app from the environment (``create_from_env``), so the
App reference and settings travel as environment variables."""

from __future__ import annotations

import json
import os
from typing import Any

from fastapi import FastAPI

from ..errors import ConfigurationError
from ..loader import load_app
from ..logs import setup_logging
from ..observability.metrics import prepare_multiprocess, remove_multiprocess
from ..observability.tracing import setup_tracing
from ..settings import ApiEnvironment
from .app import create_app
from .settings import ApiSettings


def create_from_env() -> FastAPI:
    """uvicorn factory: the App named by CONVEYOR_API_APP, with the command line's settings
    (CONVEYOR_API_ARGUMENTS) above the environment's, and the API's from the environment."""
    if os.environ.get("CONVEYOR_LOG_FORMAT"):
        setup_logging()  # a worker process uvicorn started: configure it as its parent
    env = ApiEnvironment()
    if not env.app:
        raise ConfigurationError(
            "CONVEYOR_API_APP is not set (run the API with `conveyor api MODULE:app`)"
        )
    app = load_app(env.app).configured(**env.arguments)
    setup_tracing("conveyor-api")  # before the app: its middleware depends on it
    return create_app(app, ApiSettings.from_env())


def uvicorn_options(host: str, port: int, workers: int, log_level: str) -> dict[str, Any]:
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "workers": workers,
        "log_level": log_level.lower(),
        "factory": True,
        "access_log": False,  # one log line per request costs more than the request
        "log_config": None,  # uvicorn's lines go through ours (JSON or console, as set)
        "timeout_graceful_shutdown": 10,
    }
    try:
        import uvloop  # noqa: F401

        options["loop"] = "uvloop"
    except ImportError:
        pass
    try:
        import httptools  # noqa: F401

        options["http"] = "httptools"
    except ImportError:
        pass
    return options


def run(
    app_ref: str,
    *,
    host: str,
    port: int,
    workers: int,
    auth: bool | None,
    log_level: str,
    arguments: dict[str, Any] | None = None,
) -> None:
    """Serve ``app_ref`` with the engine settings ``arguments`` (the command line's, above
    the environment): they travel to uvicorn's processes as CONVEYOR_API_* variables."""
    import uvicorn

    os.environ["CONVEYOR_API_APP"] = app_ref
    os.environ["CONVEYOR_API_ARGUMENTS"] = json.dumps(
        {k: v for k, v in (arguments or {}).items() if v is not None}
    )
    created = None
    if workers > 1:
        # each API process writes its metrics to a shared directory; /metrics of any of
        # them answers for all (prometheus-client's multiprocess mode)
        created = prepare_multiprocess()
    if auth is False:
        os.environ["CONVEYOR_API_AUTH"] = "off"
    # fail here, with a readable error, rather than in every forked worker
    create_from_env()
    try:
        uvicorn.run(
            "conveyor.api.server:create_from_env",
            **uvicorn_options(host, port, workers, log_level),
        )
    finally:
        if created is not None and created[1]:
            remove_multiprocess(created[0])
