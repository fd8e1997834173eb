"""The Redis errors that reach callers of storage, under the names they catch, so that no
module outside ``storage/`` imports redis (tests/storage/test_boundary.py checks it).

``UNAVAILABLE`` (a passing outage: back off and try again) is connection.py's.
"""

from __future__ import annotations

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, RedisError, ResponseError

from .connection import UNAVAILABLE, NoReplicasError

__all__ = [
    "UNAVAILABLE",
    "NoReplicasError",
    "OutOfMemoryError",
    "RedisConnectionError",
    "RedisError",
    "ResponseError",
]
