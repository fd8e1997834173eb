"""Real Redis topologies on loopback ports for the HA tests: a Cluster of 3 masters and 3
replicas, and a master with a replica watched by 3 Sentinels. Every process is a real
redis-server started here (never the machine's own Redis on 6379), and each can be killed
and restarted to exercise failovers."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import redis

from conveyor.embedded import EmbeddedRedis, find_redis_server, free_port

#: How long a node may be unreachable before the others fail it over (Cluster and Sentinel).
NODE_TIMEOUT_MS = 1000


def command(port: int, *args: str, timeout: float = 2.0) -> str:
    """One command by redis-cli (text reply), for setting up and inspecting topologies."""
    cli = shutil.which("redis-cli") or str(find_redis_server().with_name("redis-cli"))
    done = subprocess.run(
        [cli, "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return done.stdout


def info(port: int, section: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in command(port, "INFO", section).splitlines():
        key, sep, value = line.strip().partition(":")
        if sep:
            fields[key] = value
    return fields


@dataclass
class Failover:
    """One killed master: its port, its successor's, and when (unix seconds) it was killed,
    a replica took over, and the old master was back as a replica (0: not revived)."""

    old: int
    new: int
    killed_at: float
    promoted_at: float
    rejoined_at: float = 0.0


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, subprocess.SubprocessError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


def cluster_args() -> list[str]:
    return [
        "--cluster-enabled", "yes",
        "--cluster-config-file", "nodes.conf",
        "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
        # the bus port would be port + 10000, past 65535 for high free ports
        "--cluster-port", str(free_port()),
        # a replica whose link to its master broke long ago may still take over
        "--cluster-replica-validity-factor", "0",
    ]  # fmt: skip


class Topology:
    """Start on ``with``, close (every process, and the temporary folder) on leaving it."""

    def start(self) -> Self:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class LocalCluster(Topology):
    """``with LocalCluster(tmp) as c: c.url`` is ``redis+cluster://`` with every node."""

    def __init__(self, root: Path | None = None, *, masters: int = 3, appendonly: bool = True):
        self._tmp = None if root else tempfile.mkdtemp(prefix="conveyor-cluster-")
        self.root = Path(root or self._tmp or ".")
        self.masters = masters
        self.nodes = [
            EmbeddedRedis(self.root / f"node{i}", appendonly=appendonly, extra_args=cluster_args())
            for i in range(masters * 2)
        ]

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.ports]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(self.addresses)

    def start(self) -> Self:
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli") or str(find_redis_server().with_name("redis-cli"))
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *self.addresses,
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            capture_output=True,
            check=True,
            timeout=30,
        )
        wait_until(self.healthy, 30, "the cluster to form")
        return self

    def healthy(self) -> bool:
        """Every live node says the cluster is ok and sees the expected masters."""
        live = [n for n in self.nodes if n.process is not None]
        return all(
            info_ok(command(n.port, "CLUSTER", "INFO"))
            and len(self.master_ports(n.port)) == self.masters
            for n in live
        )

    def master_ports(self, via: int | None = None) -> list[int]:
        port = via or next(n.port for n in self.nodes if n.process is not None)
        masters = []
        for line in command(port, "CLUSTER", "NODES").splitlines():
            fields = line.split()
            if len(fields) > 8 and "master" in fields[2] and "fail" not in fields[2]:
                masters.append(int(fields[1].split("@")[0].rsplit(":", 1)[1]))
        return sorted(masters)

    def node_ids(self) -> dict[int, str]:
        """Port -> cluster node id, of every live node."""
        ids = {}
        port = next(n.port for n in self.nodes if n.process is not None)
        for line in command(port, "CLUSTER", "NODES").splitlines():
            fields = line.split()
            if len(fields) > 2 and "fail" not in fields[2]:
                ids[int(fields[1].split("@")[0].rsplit(":", 1)[1])] = fields[0]
        return ids

    def move_slot(self, slot: int, source: int, target: int, batch: int = 10) -> int:
        """Migrate ``slot`` with its keys from master ``source`` to master ``target`` the
        way resharding does (IMPORTING/MIGRATING, MIGRATE in small batches, SETSLOT NODE):
        clients get ASK for keys already moved, then MOVED. Returns the keys moved."""
        ids = self.node_ids()
        src, dst = redis.Redis(port=source), redis.Redis(port=target)
        try:
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target])
            moved = 0
            while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch):
                src.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
                moved += len(keys)
                time.sleep(0.01)  # let clients run into ASK meanwhile
            for port in self.master_ports():
                redis.Redis(port=port).execute_command(
                    "CLUSTER", "SETSLOT", slot, "NODE", ids[target]
                )
            return moved
        finally:
            src.close()
            dst.close()

    def node(self, port: int) -> EmbeddedRedis:
        return next(n for n in self.nodes if n.port == port)

    def kill_master(self, port: int | None = None) -> Failover:
        """SIGKILL a master (the first one when not named); wait until a replica took its
        slots and the cluster is ok again."""
        victim = port or self.master_ports()[0]
        before = set(self.master_ports())
        killed_at = time.time()
        self.node(victim).stop(graceful=False)
        wait_until(
            lambda: victim not in self.master_ports() and self.healthy(),
            30,
            f"a replica to take over from {victim}",
        )
        (new,) = set(self.master_ports()) - before
        return Failover(victim, new, killed_at, time.time())

    def revive(self, port: int) -> float:
        """Restart a killed node: it rejoins as a replica of the master that replaced it.
        Returns when it was in sync (unix seconds)."""
        self.node(port).start()
        wait_until(
            lambda: (
                info(port, "replication").get("role") == "slave"
                and info(port, "replication").get("master_link_status") == "up"
            ),
            30,
            f"node {port} to rejoin",
        )
        return time.time()

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)


def info_ok(text: str) -> bool:
    return "cluster_state:ok" in text


class Sentinel:
    """One redis-server in Sentinel mode, watching ``master_name``."""

    def __init__(self, folder: Path, master_name: str, master_port: int, quorum: int) -> None:
        self.folder = folder
        self.master = (master_name, master_port, quorum)
        folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "sentinel.conf"
        self.log = folder / "sentinel.log"
        self.port = free_port()
        self.fresh = True  # not started yet: its port may still move
        self.process: subprocess.Popen[bytes] | None = None

    def _write_config(self) -> None:
        name, master_port, quorum = self.master
        self.config.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            f"dir {self.folder}\n"
            f"logfile {self.log}\n"
            f"sentinel monitor {name} 127.0.0.1 {master_port} {quorum}\n"
            f"sentinel down-after-milliseconds {name} {NODE_TIMEOUT_MS}\n"
            f"sentinel failover-timeout {name} 10000\n"
            f"sentinel parallel-syncs {name} 1\n"
        )

    def start(self) -> None:
        # the port picked may be taken before the Sentinel binds it: then pick another. A
        # restart keeps the config the Sentinel rewrote (the master it knows now).
        for _ in range(5):
            if self.fresh:
                self._write_config()
            self.process = subprocess.Popen(
                [str(find_redis_server()), str(self.config), "--sentinel"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            wait_until(
                lambda: (self.process is not None and self.process.poll() is not None)
                or _answers(self.port),
                10, f"sentinel on {self.port}",
            )  # fmt: skip
            if self.process.poll() is None:
                self.fresh = False
                return
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            if not self.fresh or f"{self.port}: bind: Address already in use" not in log:
                raise RuntimeError(f"sentinel on {self.port} exited at start:\n{log[-2000:]}")
            self.port = free_port()
        raise RuntimeError("no free port for a sentinel after 5 tries")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None


def _answers(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
        s.sendall(b"PING\r\n")
        return s.recv(16).startswith(b"+PONG")


class SentinelGroup(Topology):
    """A master, ``replicas`` replicas and 3 Sentinels (quorum 2). ``url`` is the
    ``redis+sentinel://`` URL of the group; :meth:`failover` kills the current master."""

    MASTER_NAME = "conveyor"

    def __init__(self, root: Path | None = None, *, replicas: int = 1, appendonly: bool = True):
        self._tmp = None if root else tempfile.mkdtemp(prefix="conveyor-sentinel-")
        self.root = Path(root or self._tmp or ".")
        self.servers = [
            EmbeddedRedis(self.root / f"redis{i}", appendonly=appendonly)
            for i in range(replicas + 1)
        ]
        self.sentinels: list[Sentinel] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.MASTER_NAME}"

    def start(self) -> Self:
        master, *replicas = self.servers
        master.start()
        for replica in replicas:
            replica.extra_args = ["--replicaof", "127.0.0.1", str(master.port)]
            replica.start()
        wait_until(
            lambda: (
                int(info(master.port, "replication").get("connected_slaves", 0)) == len(replicas)
            ),
            15,
            "the replicas to connect",
        )
        self.sentinels = [
            Sentinel(self.root / f"sentinel{i}", self.MASTER_NAME, master.port, quorum=2)
            for i in range(3)
        ]
        for sentinel in self.sentinels:
            sentinel.start()
        wait_until(self._sentinels_agree, 15, "the sentinels to find each other")
        return self

    def master_ports(self) -> list[int | None]:
        """The master's port as each Sentinel reports it (None: no answer)."""
        ports: list[int | None] = []
        for sentinel in self.sentinels:
            reply = command(
                sentinel.port, "SENTINEL", "get-master-addr-by-name", self.MASTER_NAME
            ).split()
            ports.append(int(reply[1]) if len(reply) == 2 else None)
        return ports

    def master_port(self) -> int:
        """The master's port as the Sentinels report it (the first one that answers)."""
        for sentinel in self.sentinels:
            reply = command(
                sentinel.port, "SENTINEL", "get-master-addr-by-name", self.MASTER_NAME
            ).split()
            if len(reply) == 2:
                return int(reply[1])
        raise RuntimeError("no sentinel knows the master")

    def _sentinels_agree(self) -> bool:
        for sentinel in self.sentinels:
            fields = command(sentinel.port, "SENTINEL", "master", self.MASTER_NAME).split("\n")
            pairs = dict(zip(fields[0::2], fields[1::2], strict=False))
            if int(pairs.get("num-other-sentinels", 0)) < len(self.sentinels) - 1:
                return False
            if int(pairs.get("num-slaves", 0)) < len(self.servers) - 1:
                return False
        return True

    def server(self, port: int) -> EmbeddedRedis:
        return next(s for s in self.servers if s.port == port)

    def failover(self, *, revive: bool = True) -> Failover:
        """SIGKILL the master, wait until the Sentinels promoted a replica that accepts
        writes, then (``revive``) restart the old master, which rejoins as a replica."""
        old = self.master_port()
        killed_at = time.time()
        self.server(old).stop(graceful=False)
        wait_until(lambda: self.master_port() != old, 30, "the sentinels to promote a replica")
        new = self.master_port()
        wait_until(lambda: info(new, "replication").get("role") == "master", 30, "the new master")
        done = Failover(old, new, killed_at, time.time())
        if revive:
            # Restart it only once every Sentinel knows of the promotion (they learn it from
            # each other within seconds). Sooner, a Sentinel that still names the old master
            # may send clients to it while it runs as a master again, and what they write
            # there is discarded when it is made a replica (see docs/operations.md).
            wait_until(
                lambda: self.master_ports() == [new] * len(self.sentinels),
                30,
                "every sentinel to know the new master",
            )
            self.server(old).start()
            # the sentinels reconfigure it as a replica of the new master; on a loaded machine
            # they were seen to leave it a master for over a minute, so after a while the
            # harness does what they would (the node being revived is not under test)
            rejoined = lambda: info(old, "replication").get("master_link_status") == "up"  # noqa: E731
            try:
                wait_until(rejoined, 30, f"{old} to rejoin as a replica")
            except TimeoutError:
                command(old, "REPLICAOF", "127.0.0.1", str(new))
                wait_until(rejoined, 60, f"{old} to rejoin as a replica")
            done.rejoined_at = time.time()
        return done

    def close(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers:
            server.close()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
