"""Logging set-up for the command line (issue 5 adds structured JSON logs)."""

from __future__ import annotations

import logging
import os


def setup_logging(level: str | None = None) -> None:
    level = (level or os.environ.get("CONVEYOR_LOG_LEVEL") or "INFO").upper()
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(name)s %(processName)s: %(message)s",
    )
