"""The least-privilege ACL user (conveyor.storage.acl, `conveyor acl`) on real servers of every
available version: the whole engine runs under it (worker, client, HTTP API, exporter, CLI,
every flow feature) without a single refusal in the server's ACL LOG, and everything else is
refused with NOPERM."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import redis
from redis.exceptions import NoPermissionError, RedisClusterException, ResponseError
from typer.testing import CliRunner

from conveyor import AsyncClient, WorkflowFailedError
from conveyor.api.settings import hash_token
from conveyor.cli.main import cli
from conveyor.embedded import EmbeddedRedis, free_port, server_version
from conveyor.errors import ConfigurationError
from conveyor.observability.queues import QueueExporter
from conveyor.settings import Settings
from conveyor.storage.acl import (
    acl_rules,
    acl_setuser,
    aclfile_line,
    allowed_commands,
    key_pattern,
    parse_version,
    password_rules,
)
from conveyor.storage.connection import connect
from conveyor.storage.store import Store
from tests.conftest import SERVERS, running
from tests.helpers import until, until_async
from tests.processes import ROOT, spawn, stop, wait_http
from tests.security.apps import app as security_app
from tests.topologies import LocalCluster

from .conftest import (
    ADMIN_PASSWORD,
    NO_RETRY,
    AclUser,
    admin_of,
    app_for,
    version_of,
)

APP = "tests.security.apps:app"
TOKEN = "cvk_security_admin"
SECRET = "from a secret: @/#"  # needs URL-encoding, so the URL form is tested too

# -- the rules, without a server ---------------------------------------------------------------


def test_rules_confine_keys_and_channels_and_start_from_nothing() -> None:
    rules = acl_rules("shop")
    assert rules[:6] == ["on", "resetkeys", "~shop:*", "resetchannels", "&shop:*", "-@all"]
    assert all(r.startswith("+") for r in rules[6:])  # after -@all: only additions
    for forbidden in ("flushall", "flushdb", "keys", "scan", "config", "debug", "shutdown",
                      "eval", "monitor", "acl", "+@all", "allkeys", "allchannels", "nopass"):  # fmt: skip
        assert f"+{forbidden}" not in rules and forbidden not in rules
    assert "+cluster|slots" not in rules and "+cluster|slots" in acl_rules("shop", cluster=True)


def test_versioned_rules() -> None:
    portable = allowed_commands()
    assert "client|setinfo" not in portable and "waitaof" not in portable
    assert "client|setinfo" in allowed_commands(redis_version=(6, 2))  # any subcommand there
    assert "client|setinfo" not in allowed_commands(redis_version=(7, 0))  # 7.0 refuses it
    assert {"client|setinfo", "waitaof"} <= set(allowed_commands(redis_version=(7, 2)))
    assert "clearselectors" in acl_rules("x", redis_version=(7, 0))
    assert "clearselectors" not in acl_rules("x", redis_version=(6, 2))
    assert parse_version("7.2.4") == (7, 2) and parse_version("8") == (8, 0)
    for bad in ("6.0", "x", ""):
        with pytest.raises(ConfigurationError):
            parse_version(bad)


def test_password_forms_never_carry_the_plain_password() -> None:
    digest = hashlib.sha256(b"s3cret").hexdigest()
    assert password_rules("s3cret") == ["resetpass", f"#{digest}"]
    assert password_rules(f"#{digest.upper()}") == ["resetpass", f"#{digest}"]
    assert password_rules(">s3cret") == ["resetpass", ">s3cret"]
    assert password_rules(None) == []
    for bad in ("", "#abc", "> spaced out", ">"):
        with pytest.raises(ConfigurationError):
            password_rules(bad)
    with pytest.raises(ConfigurationError):
        acl_setuser("ns", "two words")
    with pytest.raises(ConfigurationError):
        acl_rules("tab\tns")


def test_glob_characters_of_a_namespace_are_escaped() -> None:
    assert key_pattern("a*") == "a\\*:*"
    assert key_pattern("x?[y]\\") == "x\\?\\[y\\]\\\\:*"


# -- on a real server ----------------------------------------------------------------------------


@pytest.mark.parametrize("cluster", [False, True])
@pytest.mark.parametrize("exact", [False, True])
def test_every_server_takes_the_rules(acl_redis: EmbeddedRedis, exact: bool, cluster: bool) -> None:
    version = version_of(acl_redis) if exact else None
    with admin_of(acl_redis) as admin:
        admin.execute_command(
            *acl_setuser("shop", "probe", password="pw", cluster=cluster, redis_version=version)
        )
        user = admin.acl_getuser("probe")
        admin.acl_deluser("probe")
    assert _patterns(user["keys"], "~") == _patterns(user["channels"], "&") == ["shop:*"]
    assert "+evalsha" in user["commands"] and "+@all" not in user["commands"]


def _patterns(value: str | list[str], sigil: str) -> list[str]:
    """ACL GETUSER's patterns, however the server version and redis-py spell them."""
    items = value.split() if isinstance(value, str) else value
    return [(i.decode() if isinstance(i, bytes) else i).lstrip(sigil) for i in items]


def test_no_allowed_command_is_dangerous_or_admin_except_info() -> None:
    # 7.0+ lists subcommands in its categories; 6.2 only whole commands
    binary = next((b for b in SERVERS if parse_version(server_version(b)) >= (7, 0)), None)
    if binary is None:
        pytest.skip("needs Redis 7.0+ (categories by subcommand)")
    with (
        EmbeddedRedis(binary=binary, appendonly=False) as server,
        redis.Redis(port=server.port) as admin,
    ):
        risky = {
            c.decode()
            for category in ("dangerous", "admin")
            for c in admin.execute_command("ACL", "CAT", category)
        }
    allowed = allowed_commands(cluster=True, redis_version=(7, 2))
    flagged = {c for c in allowed if c in risky or c.split("|")[0] in risky}
    # INFO is @dangerous (it shows server details; no data): the startup check needs it
    assert flagged == {"info"}


def test_forbidden_commands_keys_and_channels_get_noperm(acl_user: AclUser) -> None:
    ns = acl_user.namespace
    with acl_user.client() as r, admin_of(acl_user.server) as admin:
        admin.set("other:secret", "x")
        # positive controls: what the engine needs works
        r.set(f"{ns}:k", "v")
        assert r.get(f"{ns}:k") == b"v"
        assert r.publish(f"{ns}:chan", "hi") == 0
        assert "aof_enabled" in r.info("persistence") and "used_memory" in r.info("memory")
        assert r.execute_command("WAIT", 0, 0) == 0
        sha = r.script_load("return redis.call('GET', KEYS[1])")
        assert r.evalsha(sha, 1, f"{ns}:k") == b"v"

        refused: list[tuple[Any, ...]] = [
            ("FLUSHALL",), ("FLUSHDB",), ("KEYS", "*"), ("SCAN", "0"),
            ("CONFIG", "GET", "maxmemory"), ("CONFIG", "SET", "maxmemory-policy", "allkeys-lru"),
            ("DEBUG", "SLEEP", "0"), ("SHUTDOWN", "ABORT"), ("ACL", "SETUSER", "x", "on"),
            ("ACL", "LIST"), ("CLIENT", "LIST"), ("CLIENT", "KILL", "ID", "1"),
            ("EVAL", "return 1", "0"),
            ("SCRIPT", "FLUSH"), ("SLOWLOG", "GET"), ("SAVE",), ("BGREWRITEAOF",),
            ("SWAPDB", "0", "1"), ("MIGRATE", "127.0.0.1", "1", "k", "0", "1"),
            ("GET", "other:secret"), ("SET", "other:secret", "mine"), ("DEL", "other:secret"),
            ("XADD", "other:stream", "*", "f", "v"), ("HSET", "other:h", "f", "v"),
            ("GET", f"{ns}x:k"), ("COPY", f"{ns}:k", "other:copy"),
            ("PUBLISH", "other:chan", "hi"),
            ("EVALSHA", sha, "1", "other:secret"),
        ]  # fmt: skip
        for command in refused:
            with pytest.raises(NoPermissionError):
                r.execute_command(*command)
        with pytest.raises(NoPermissionError), r.pubsub() as pubsub:
            pubsub.subscribe("other:chan")
            pubsub.get_message(timeout=1)
        # inside a script the caller's rules apply too: an undeclared key, a forbidden command
        for body in ("return redis.call('GET', 'other:secret')", "return redis.call('FLUSHALL')"):
            sneaky = r.script_load(body)
            with pytest.raises(ResponseError, match=r"(?i)no permissions|can't|NOPERM"):
                r.evalsha(sneaky, 0)
        assert admin.get("other:secret") == b"x" and admin.dbsize() >= 2


def test_a_namespace_with_glob_characters_reaches_only_its_own_keys(
    acl_redis: EmbeddedRedis,
) -> None:
    with admin_of(acl_redis) as admin:
        admin.execute_command(*acl_setuser("g*", "globber", password="pw"))
        admin.set("gold:k", "x")
        try:
            with redis.Redis(port=acl_redis.port, username="globber", password="pw") as r:
                r.set("g*:k", "mine")
                with pytest.raises(NoPermissionError):
                    r.get("gold:k")
        finally:
            admin.acl_deluser("globber")
            admin.delete("g*:k", "gold:k")


def test_applying_the_rules_again_keeps_the_password_unless_one_is_given(
    acl_user: AclUser,
) -> None:
    with admin_of(acl_user.server) as admin:
        admin.execute_command(*acl_setuser("elsewhere", acl_user.name))  # no password: kept
        with acl_user.client() as r:
            r.set("elsewhere:k", "v")  # the new rules apply at once
            with pytest.raises(NoPermissionError):
                r.get(f"{acl_user.namespace}:k")
        admin.execute_command(*acl_setuser("elsewhere", acl_user.name, password="rotated"))
    with pytest.raises(redis.AuthenticationError), acl_user.client() as r:
        r.ping()
    port = acl_user.server.port
    with redis.Redis(port=port, username=acl_user.name, password="rotated") as r:
        assert r.ping()


def test_aclfile_line_on_a_server_whose_default_user_is_off(tmp_path: Path) -> None:
    aclfile = tmp_path / "users.acl"
    aclfile.write_text(
        "user default off\n"
        f"user admin on >{ADMIN_PASSWORD} ~* &* +@all\n"
        + aclfile_line("shop", password="pw", redis_version=(6, 2))
        + "\n"
    )
    with EmbeddedRedis(
        binary=SERVERS[-1], appendonly=False, extra_args=["--aclfile", str(aclfile)]
    ) as server:
        with (
            redis.Redis(port=server.port, retry=NO_RETRY) as anonymous,
            pytest.raises(redis.AuthenticationError),
        ):
            anonymous.ping()
        with redis.Redis(port=server.port, username="conveyor", password="pw") as r:
            r.xadd("shop:{p0}:q:default", {"f": "v"})
            with pytest.raises(NoPermissionError):
                r.execute_command("FLUSHALL")
        with redis.Redis(port=server.port, username="admin", password=ADMIN_PASSWORD) as admin:
            admin.execute_command(*acl_setuser("shop", "twin", password="pw", redis_version=(6, 2)))
            loaded, made = admin.acl_getuser("conveyor"), admin.acl_getuser("twin")
    assert loaded == made  # the file line and the command make the same user


# -- the whole engine under the user -------------------------------------------------------------


async def test_worker_client_and_exporter_run_every_feature_without_a_refusal(
    acl_user: AclUser,
) -> None:
    app = app_for(security_app, acl_user.url, acl_user.namespace)
    async with AsyncClient(app=app) as client, running(app):
        tour = await client.start("tour", 2, idempotency_key="once")
        assert await client.start("tour", 2, idempotency_key="once") == tour
        doomed = await client.start("doomed", 1)
        parked = await client.start("waiter", 1)
        later = await client.start("batched", "late", delay=0.05)
        batch = [await client.start("batched", f"t{i}") for i in range(5)]
        await until_async(
            lambda: _status(client, tour, "waiting"), what="the tour waits for its signal"
        )
        assert await client.signal(tour, "approve", {"ok": True}) == "delivered"
        result = await client.result(tour, timeout=10)
        assert result == {"total": 4 + 9 + 16, "answer": {"ok": True}, "child": 58}
        spawned = next(h.task for h in (await client.status(tour)).history if h.step == "spawn")
        child = await client.status(f"{tour}~{spawned}")  # retried once, then succeeded
        assert [h.status for h in child.history] == ["failed", "completed"]
        assert [await client.result(i, timeout=10) for i in [*batch, later]] == [
            "T0", "T1", "T2", "T3", "T4", "LATE",
        ]  # fmt: skip
        with pytest.raises(WorkflowFailedError):
            await client.result(doomed, timeout=10)
        (letter,) = await client.dead_letters()
        assert await client.replay(letter.id) == doomed
        with pytest.raises(WorkflowFailedError):
            await client.result(doomed, timeout=10)
        await until_async(lambda: _status(client, parked, "waiting"), what="parked")
        assert await client.cancel(parked) == "cancelled"
        await until_async(lambda: _cleaned(client, parked), what="the on_cancel step ran")
        for letter in await client.dead_letters():
            await client.drop(letter.id)
        assert await client.dead_letters() == []
        # the queue exporter (also behind `conveyor exporter` and the API's /metrics/queues)
        settings = Settings(acl_user.url, acl_user.namespace, partitions=4)
        redis_client = connect(acl_user.url)
        try:
            text = (await QueueExporter(Store(redis_client, settings)).render()).decode()
        finally:
            await redis_client.aclose()
    assert "conveyor_redis_up 1.0" in text and 'conveyor_workers{queue="default"} 1.0' in text
    assert acl_user.denials() == []


async def _status(client: AsyncClient, workflow_id: str, status: str) -> bool:
    return (await client.status(workflow_id)).status == status


async def _cleaned(client: AsyncClient, workflow_id: str) -> bool:
    steps = [h.step for h in (await client.status(workflow_id)).history]
    return "cleanup" in steps


def test_worker_and_api_processes_and_the_cli_without_a_refusal(acl_user_first: AclUser) -> None:
    user = acl_user_first
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "REDIS_URL": user.url,
        "CONVEYOR_NAMESPACE": user.namespace,
        "CONVEYOR_PARTITIONS": "4",
        "CONVEYOR_API_KEYS": f"ops:{hash_token(TOKEN)}:admin",
    }
    worker = spawn(["worker", APP, "--concurrency", "8", "--log-level", "WARNING"], env)
    api = spawn(["api", APP, "--port", str(port), "--log-level", "WARNING"], env)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/readyz", api)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
            tour = http.post("/v1/workflows/tour", json=3).json()["id"]
            doomed = http.post("/v1/workflows/doomed", json=1).json()["id"]
            until(lambda: _reached(http, tour, "waiting", worker), 60, f"{tour} waiting")
            signal = http.post(f"/v1/workflows/{tour}/signals/approve", json="yes")
            assert signal.json()["outcome"] == "delivered"
            done = http.get(f"/v1/workflows/{tour}/result", params={"wait": 20}).json()
            assert done["result"] == {"total": 9 + 16 + 25, "answer": "yes", "child": 100}
            events = http.get(f"/v1/workflows/{tour}/events").text
            assert "event: emit" in events and "event: end" in events
            failed = http.get(f"/v1/workflows/{doomed}/result", params={"wait": 20}).json()
            assert failed["status"] == "failed"
            (letter,) = http.get("/v1/dlq").json()["items"]
            assert http.post(f"/v1/dlq/{letter['id']}/replay").json()["workflow_id"] == doomed
            assert http.get("/v1/queues").status_code == 200
            assert http.get("/v1/waits").status_code == 200
            assert tour in [i["id"] for i in http.get("/v1/workflows").json()["items"]]
            assert "conveyor_redis_up 1.0" in http.get("/metrics/queues").text
        # the CLI's commands (in this process: the same code, without 1.5 s of start each)
        cli_env = {k: env[k] for k in ("REDIS_URL", "CONVEYOR_NAMESPACE", "CONVEYOR_PARTITIONS")}
        status = _cli(["status", tour], cli_env)
        assert "completed" in status and "child" in status
        assert "doomed" in _cli(["dlq", "list"], cli_env)  # a table, ids wrapped at 80 columns
        assert "default" in _cli(["top", "--once"], cli_env)
        started = _cli(
            ["start", "batched", "--input", '"cli"', "--wait", "--timeout", "20"], cli_env
        )
        assert '"CLI"' in started
    finally:
        outputs = [stop(api, timeout=15), stop(worker, timeout=15)]
    assert not any("NOPERM" in o or "Traceback" in o for o in outputs), outputs
    assert worker.returncode == 0
    assert user.denials() == []


def _cli(args: list[str], env: dict[str, str]) -> str:
    result = CliRunner().invoke(cli, args, env=env)
    assert result.exit_code == 0, (args, result.output, result.exception)
    return result.stdout


def _reached(http: httpx.Client, workflow_id: str, status: str, worker: Any) -> bool:
    if worker.poll() is not None:
        raise AssertionError(f"the worker exited:\n{stop(worker)}")
    return bool(http.get(f"/v1/workflows/{workflow_id}").json()["status"] == status)


async def test_the_engine_on_a_cluster_needs_the_cluster_rules_on_every_node(
    namespace: str,
) -> None:
    with LocalCluster(masters=3, appendonly=False) as cluster:
        nodes = [redis.Redis(port=port, retry=NO_RETRY) for port in cluster.ports]
        for cluster_rules, user in ((False, "plain"), (True, "clustered")):
            for node in nodes:  # ACLs are per node: a Cluster does not spread them
                node.execute_command(
                    *acl_setuser(namespace, user, password="pw", cluster=cluster_rules)
                )
        hosts = ",".join(cluster.addresses)
        plain = connect(f"redis+cluster://plain:pw@{hosts}")
        with pytest.raises(RedisClusterException, match="Cluster mode is not enabled"):
            await plain.ping()  # redis-py's words for a refused CLUSTER SLOTS
        await plain.aclose()
        app = app_for(security_app, f"redis+cluster://clustered:pw@{hosts}", namespace)
        async with AsyncClient(app=app) as client, running(app):
            tour = await client.start("tour", 2)
            await until_async(lambda: _status(client, tour, "waiting"), what="the tour waits")
            assert await client.signal(tour, "approve", "ok") == "delivered"
            assert (await client.result(tour, timeout=10))["child"] == 58
        denied = {
            user: [e[b"object"] for n in nodes for e in n.execute_command("ACL", "LOG")
                   if e[b"username"] == user.encode()]
            for user in ("plain", "clustered")
        }  # fmt: skip
        for node in nodes:
            node.close()
    assert denied["plain"] and set(denied["plain"]) == {b"cluster|slots"}
    assert denied["clustered"] == []


# -- `conveyor acl` ------------------------------------------------------------------------------


def test_the_printed_command_makes_a_working_least_privilege_user(
    acl_redis: EmbeddedRedis, namespace: str
) -> None:
    env = {"CONVEYOR_NAMESPACE": namespace, "NEW_REDIS_PASSWORD": SECRET}
    args = ["acl", "--user", "printed", "--password-env", "NEW_REDIS_PASSWORD"]
    done = CliRunner().invoke(cli, [*args, "--redis-version", acl_redis.version], env=env)
    assert done.exit_code == 0, done.output
    (line,) = done.stdout.splitlines()
    assert line.startswith("ACL SETUSER printed on resetpass #") and SECRET not in line
    assert f"~{namespace}:*" in line and done.stderr == ""
    with admin_of(acl_redis) as admin:
        admin.execute_command(*shlex.split(line))  # what redis-cli does with the pasted line
        try:
            url = f"redis://printed:{quote(SECRET, safe='')}@127.0.0.1:{acl_redis.port}/0"
            app = app_for(security_app, url, namespace)

            async def start_and_read() -> str:
                async with AsyncClient(app=app) as client:
                    wf = await client.start("tour", 1)
                    return (await client.status(wf)).status

            assert asyncio.run(start_and_read()) == "running"
            with (
                redis.Redis(port=acl_redis.port, username="printed", password=SECRET) as r,
                pytest.raises(NoPermissionError),
            ):
                r.execute_command("FLUSHALL")
        finally:
            admin.acl_deluser("printed")
        assert [e for e in admin.execute_command("ACL", "LOG") if e[b"username"] == b"printed"]


def test_acl_command_prints_readable_errors_and_notes() -> None:
    plain = CliRunner().invoke(cli, ["acl", "--aclfile", "--cluster", "--namespace", "shop"])
    assert plain.exit_code == 0, plain.output
    assert plain.stdout.startswith("user conveyor on resetkeys ~shop:*")
    assert "+cluster|slots" in plain.stdout and "no password rule" in plain.stderr
    for args, message in (
        (["--redis-version", "6.0"], "needs 6.2 or newer"),
        (["--redis-version", "seven"], "invalid Redis version"),
        (["--password-env", "NOT_SET_ANYWHERE_XYZ"], "NOT_SET_ANYWHERE_XYZ is not set"),
        (["--user", "two words"], "invalid user name"),
        (["--namespace", "a b"], "namespace must be a name without spaces or braces"),
    ):
        failed = CliRunner().invoke(cli, ["acl", *args])
        lines = [line for line in failed.stderr.splitlines() if line.strip()]
        assert failed.exit_code == 1 and isinstance(failed.exception, SystemExit), failed.output
        assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines
