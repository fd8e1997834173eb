"""Fast JSON encoding for inputs, results, state and history (orjson)."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel


def _default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, set | frozenset):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def dumps(value: Any) -> bytes:
    """Encode ``value`` as JSON bytes; pydantic models are dumped in JSON mode."""
    return orjson.dumps(value, default=_default, option=_OPTIONS)


def loads(data: bytes | str | None) -> Any:
    """Decode JSON bytes; ``None`` and empty input decode to ``None``."""
    if not data:
        return None
    return orjson.loads(data)
