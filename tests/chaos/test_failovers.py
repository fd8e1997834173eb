"""Redis masters killed under load behind Sentinel and in a Cluster.

- Sentinel, ``durability=replicated``: the master (with 2 replicas) is SIGKILLed again and
  again; no acknowledged workflow may be lost, and each failover's write outage is measured.
- Sentinel, ``durability=fast``: the same faults, and the loss they cause is measured and
  reported, not required to be 0 (replication is asynchronous: that is what the other mode
  is for).
- Cluster (3 masters, 3 replicas), ``durability=replicated``: masters SIGKILLed in turn; no
  acknowledged workflow lost, outage measured.

Load goes through the Python client and the HTTP API alike; the same worker and API
processes carry on through every failover (no restart)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from conveyor import AsyncClient
from tests.apps import chaos
from tests.topologies import Failover, LocalCluster, SentinelGroup

from .checker import ACCEPTED, Checker, ClientSubmitter, endless, reruns
from .conftest import Lab
from .harness import rounded, sized

SENTINEL_FAILOVERS = sized(2, 10)
CLUSTER_KILLS = sized(2, 5)
UP = sized((1.0, 2.0), (3.0, 6.0))  # seconds of load between two kills
RATE = sized(80.0, 200.0)  # submissions per second, half through each way in

pytestmark = pytest.mark.timeout(sized(300, 2400))


def write_outage(checker: Checker, killed_at: float) -> float | None:
    """Seconds from the kill to the first acknowledged start that was *sent* after it (an
    answer read after the kill may have been written by the old master just before)."""
    answers = [
        s.answered_at
        for s in checker.submissions
        if s.outcome == ACCEPTED and s.sent_at >= killed_at
    ]
    return min(answers) - killed_at if answers else None


async def run_with_failovers(
    lab: Lab,
    url: str,
    durability: str,
    failovers: int,
    fail: Callable[[], Awaitable[Failover]],
    seed: int,
) -> tuple[list[Failover], list[float | None]]:
    """Workers, the API and load on ``url``; ``fail`` a master ``failovers`` times; drain.
    Returns the failovers and each one's write outage (kill -> first acknowledged start)."""
    rng = random.Random(seed)
    env = lab.env(url, CHAOS_STEP_MS="5", CONVEYOR_DURABILITY=durability)
    fleet = lab.fleet(env, "--concurrency", "32")
    workers = await fleet.start(2)
    api = lab.api(env)
    await api.ready()
    client = ClientSubmitter(
        AsyncClient(url, lab.namespace, partitions=4, app=chaos.app, durability=durability)
    )
    checker = lab.checker(url, [client, lab.http(api)])
    stop = asyncio.Event()
    load = asyncio.create_task(checker.submit_all(endless(), rate=RATE, stop=stop))
    done: list[Failover] = []
    began = time.monotonic()
    for _ in range(failovers):
        await asyncio.sleep(rng.uniform(*UP))
        done.append(await fail())
    await asyncio.sleep(2.0)
    stop.set()
    await load
    drained = await checker.drain(sized(90, 300))
    same = [p.alive for p in workers] + [api.popen.poll() is None]
    exits = await fleet.stop()
    verdict = await checker.verdict()
    outages = [write_outage(checker, f.killed_at) for f in done]
    lab.report.add(
        seed=seed, durability=durability, failovers=len(done),
        seconds=rounded(time.monotonic() - began), drain_s=rounded(drained),
        promotion_s=[rounded(f.promoted_at - f.killed_at) for f in done],
        rejoin_s=[rounded(f.rejoined_at - f.killed_at) if f.rejoined_at else None
                  for f in done],
        write_outage_s=[rounded(o) for o in outages],
        worst_write_outage_s=rounded(max((o for o in outages if o is not None), default=None)),
        reruns=reruns(lab.attempts.read()), latency=checker.latency(),
        **verdict.figures(),
    )  # fmt: skip
    report = lab.report
    report.require("same_processes", same, "all alive", all(same))
    unexpected = fleet.unexpected_exits()
    report.require("unexpected_worker_exits", len(unexpected), "== 0", not unexpected)
    report.require("clean_stops", sorted(set(exits.values())), "all 0",
                   all(code == 0 for code in exits.values()))  # fmt: skip
    report.require("duplicate_commits", verdict.duplicate_commits, "== 0",
                   verdict.duplicate_commits == 0)  # fmt: skip
    report.require("errors", verdict.errors, "== 0", verdict.errors == 0)
    report.require("accepted", verdict.accepted, "> 0", verdict.accepted > 0)
    report.require("write_recovered", outages, "after every failover",
                   all(o is not None for o in outages))  # fmt: skip
    if durability == "replicated":
        for name in ("lost", "unexpected", "wrong_results"):
            value = getattr(verdict, name)
            report.require(name, value, "== 0", value == 0)
    return done, outages


@pytest.mark.parametrize("durability", ["replicated", "fast"])
async def test_sentinel_failovers(lab: Lab, tmp_path: Path, durability: str) -> None:
    seed = random.randrange(1 << 30)
    with SentinelGroup(tmp_path / "sentinel", replicas=2) as group:

        async def fail() -> Failover:
            return await asyncio.to_thread(group.failover)

        done, _ = await run_with_failovers(
            lab, group.url, durability, SENTINEL_FAILOVERS, fail, seed
        )
        lab.report.require(
            "failovers", len(done), f"== {SENTINEL_FAILOVERS}", len(done) == SENTINEL_FAILOVERS
        )
        lab.report.require(
            "new_master_each_time",
            [f.new != f.old for f in done],
            "all",
            all(f.new != f.old for f in done),
        )
        lab.report.assert_met()


async def test_cluster_master_kills(lab: Lab, tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)
    with LocalCluster(tmp_path / "cluster") as cluster:
        rng = random.Random(seed + 1)

        async def fail() -> Failover:
            def kill_one() -> Failover:
                victim = rng.choice(cluster.master_ports())
                done = cluster.kill_master(victim)
                # back as a replica, so the promoted master can confirm replicated writes
                done.rejoined_at = cluster.revive(victim)
                return done

            return await asyncio.to_thread(kill_one)

        done, _ = await run_with_failovers(
            lab, cluster.url, "replicated", CLUSTER_KILLS, fail, seed
        )
        lab.report.require("kills", len(done), f"== {CLUSTER_KILLS}", len(done) == CLUSTER_KILLS)
        lab.report.assert_met()
