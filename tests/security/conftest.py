"""Servers for the security tests: a redis-server per available version whose default user
needs a password (the admin), and a least-privilege ACL user per test made with
:mod:`conveyor.storage.acl` for that test's namespace."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from conveyor import App
from conveyor.embedded import EmbeddedRedis, server_version
from conveyor.storage.acl import acl_setuser, parse_version
from tests.conftest import SERVERS, VERSION_IDS, VERSIONS

ADMIN_PASSWORD = "admin-only-secret"


#: test clients fail at once on a refused login (redis-py retries AuthenticationError, a
#: ConnectionError, with a backoff of seconds by default)
NO_RETRY = Retry(NoBackoff(), 0)


def guarded_server(binary: Path) -> EmbeddedRedis:
    """A server whose default user (the admin here) has a password: nobody gets in unnamed."""
    args = ["--requirepass", ADMIN_PASSWORD]
    if parse_version(server_version(binary)) >= (7, 0):
        # 7.0 refuses DEBUG to everyone by default: allow it, so that the ACL is what refuses
        args += ["--enable-debug-command", "yes"]
    return EmbeddedRedis(binary=binary, appendonly=False, extra_args=args)


@pytest.fixture(scope="session", params=VERSION_IDS)
def acl_redis(request: pytest.FixtureRequest) -> Iterator[EmbeddedRedis]:
    """One guarded server per available Redis version."""
    with guarded_server(Path(VERSIONS[request.param])) as server:
        yield server


@pytest.fixture(scope="session")
def acl_redis_first() -> Iterator[EmbeddedRedis]:
    """A guarded server of the first available version only (for the slow process tests)."""
    with guarded_server(SERVERS[0]) as server:
        yield server


def admin_of(server: EmbeddedRedis) -> redis.Redis:
    return redis.Redis(port=server.port, password=ADMIN_PASSWORD, socket_timeout=5)


def version_of(server: EmbeddedRedis) -> tuple[int, int]:
    return parse_version(server.version)


@dataclass
class AclUser:
    """A user made from the rules of :func:`acl_setuser`, for one namespace."""

    server: EmbeddedRedis
    name: str
    password: str
    namespace: str

    @property
    def url(self) -> str:
        return f"redis://{self.name}:{self.password}@127.0.0.1:{self.server.port}/0"

    def client(self, password: str | None = None) -> redis.Redis:
        return redis.Redis(
            port=self.server.port,
            username=self.name,
            password=password or self.password,
            socket_timeout=5,
            retry=NO_RETRY,
        )

    def denials(self) -> list[dict[str, str]]:
        """What the server refused this user (its ACL LOG entries): commands, keys, channels."""
        with admin_of(self.server) as admin:
            log = admin.execute_command("ACL", "LOG", "128")
        entries = [
            {k.decode(): v.decode() if isinstance(v, bytes) else str(v) for k, v in e.items()}
            for e in log
        ]
        return [e for e in entries if e["username"] == self.name]


@contextlib.contextmanager
def user_on(server: EmbeddedRedis, namespace: str) -> Iterator[AclUser]:
    """The engine's user for ``namespace``, with the rules for the server's version."""
    user = AclUser(server, f"u-{namespace}", uuid.uuid4().hex, namespace)
    version = version_of(server)
    with admin_of(server) as admin:
        admin.execute_command(
            *acl_setuser(namespace, user.name, password=user.password, redis_version=version)
        )
    try:
        yield user
    finally:
        with admin_of(server) as admin:
            admin.execute_command("ACL", "DELUSER", user.name)


@pytest.fixture
def acl_user(acl_redis: EmbeddedRedis, namespace: str) -> Iterator[AclUser]:
    with user_on(acl_redis, namespace) as user:
        yield user


@pytest.fixture
def acl_user_first(acl_redis_first: EmbeddedRedis, namespace: str) -> Iterator[AclUser]:
    with user_on(acl_redis_first, namespace) as user:
        yield user


def app_for(base: App, url: str, namespace: str, **settings: Any) -> App:
    return App(
        workflows=list(base.workflows.values()),
        redis_url=url,
        namespace=namespace,
        **{"partitions": 4, "visibility_timeout": 2.0, "max_deliveries": 3, **settings},
    )
