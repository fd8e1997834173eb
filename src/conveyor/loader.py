"""Load ``module:attribute`` (or ``path/to/file.py:attribute``) references, e.g. an App."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from .errors import ConfigurationError


def load_object(reference: str) -> Any:
    module_ref, sep, attr = reference.partition(":")
    if not sep or not module_ref or not attr:
        raise ConfigurationError(
            f"expected MODULE:ATTRIBUTE (e.g. myproject.workflows:app), got {reference!r}"
        )
    if module_ref.endswith(".py") or "/" in module_ref:
        path = Path(module_ref).resolve()
        if not path.exists():
            raise ConfigurationError(f"no such file: {module_ref}")
        name = path.stem
        if str(path.parent) not in sys.path:
            sys.path.insert(0, str(path.parent))
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ConfigurationError(f"cannot import {module_ref}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    else:
        if "" not in sys.path and str(Path.cwd()) not in sys.path:
            sys.path.insert(0, str(Path.cwd()))
        try:
            module = importlib.import_module(module_ref)
        except ModuleNotFoundError as exc:
            if exc.name and module_ref.startswith(exc.name):
                raise ConfigurationError(f"cannot import module {module_ref!r}: {exc}") from exc
            raise
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigurationError(f"module {module_ref!r} has no attribute {attr!r}") from None


def load_app(reference: str) -> Any:
    from .app import App

    app = load_object(reference)
    if not isinstance(app, App):
        raise ConfigurationError(f"{reference} is a {type(app).__name__}, not a conveyor App")
    return app
