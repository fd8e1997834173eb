"""Shared limits: rate parsing and Limit definitions (pure), then the GCRA rate script and the
leased concurrency script through :class:`Limiter` against real Redis. Timing assertions
keep wide margins (0.5x to 1.5x the expectation) so a loaded machine does not make them flaky."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aredis
from redis.exceptions import ResponseError

from conveyor.embedded import EmbeddedRedis
from conveyor.errors import DefinitionError
from conveyor.limits import Limit, Rate, as_limit, parse_rate
from conveyor.storage.connection import connect
from conveyor.storage.limits import Limiter, concurrency_key, rate_key
from conveyor.storage.scripts import ScriptRegistry

# -- parse_rate ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "units", "period"),
    [
        ("100/s", 100, 1),
        ("100/sec", 100, 1),
        ("100/second", 100, 1),
        ("90000/min", 90000, 60),
        ("90000/m", 90000, 60),
        ("5/h", 5, 3600),
        ("5/hour", 5, 3600),
        ("1000/d", 1000, 86400),
        ("1000/day", 1000, 86400),
        ("10/2s", 10, 2),
        ("2.5/s", 2.5, 1),
        (" 100 / s ", 100, 1),
        ("10 / 2 s", 10, 2),
        ("3/1.5min", 3, 90),
    ],
)
def test_parse_rate_accepts(text: str, units: float, period: float) -> None:
    rate = parse_rate(text)
    assert rate == Rate(units, period)
    assert rate.interval == pytest.approx(period / units)


@pytest.mark.parametrize(
    "text",
    ["", "100", "/s", "100/", "100/x", "100/S", "100/ms", "0/s", "0.0/min", "-1/s", "100/0s",
     "1e3/s", "inf/s", "nan/s", "100/s/s", "100 per second", "ten/s", "100//s"],
)  # fmt: skip
def test_parse_rate_rejects(text: str) -> None:
    with pytest.raises(DefinitionError) as info:
        parse_rate(text)
    assert repr(text) in str(info.value)
    assert "100/s" in str(info.value)  # shows the accepted form


def test_parse_rate_rejects_a_non_string() -> None:
    with pytest.raises(DefinitionError):
        parse_rate(100)  # type: ignore[arg-type]


@pytest.mark.parametrize(("units", "period"), [(0, 1), (1, 0), (-1, 1), (float("inf"), 1)])
def test_rate_rejects_non_positive_values(units: float, period: float) -> None:
    with pytest.raises(DefinitionError):
        Rate(units, period)


# -- Limit ---------------------------------------------------------------------------------


def test_limit_parses_its_rate_and_defaults_burst_to_one_period() -> None:
    limit = Limit("llm", "90000/min")
    assert limit.parsed == Rate(90000, 60)
    assert limit.burst is None
    assert limit.capacity == 90000
    assert limit.interval_ms == pytest.approx(60000 / 90000)
    assert limit.tolerance_ms == pytest.approx(60000)
    assert Limit("llm", Rate(10, 1), burst=3).capacity == 3
    assert Limit("llm", "10/s") == Limit("llm", "10/s")


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"name": "bad name", "rate": "1/s"}, "invalid limit name"),
        ({"name": "", "rate": "1/s"}, "invalid limit name"),
        ({"name": "llm", "rate": "1/fortnight"}, "invalid rate"),
        ({"name": "llm", "rate": "1/s", "burst": 0}, "invalid burst"),
        ({"name": "llm", "rate": "1/s", "burst": -2}, "invalid burst"),
        ({"name": "llm", "rate": "1/s", "cost": 3}, "cost of limit 'llm'"),
    ],
)
def test_limit_rejects_bad_definitions(kwargs: dict[str, Any], error: str) -> None:
    with pytest.raises(DefinitionError, match=error):
        Limit(**kwargs)


def test_cost_of() -> None:
    assert Limit("llm", "1/s").cost_of({"anything": 1}) == 1.0
    limit = Limit("llm", "1/s", cost=lambda data: data["tokens"])
    assert limit.cost_of({"tokens": 250}) == 250.0
    assert isinstance(limit.cost_of({"tokens": 250}), float)
    assert limit.cost_of({"tokens": 0}) == 0.0


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({}, "raised KeyError"),
        ({"tokens": -1}, "returned -1"),
        ({"tokens": "12"}, "not a number"),
        ({"tokens": None}, "not a number"),
        ({"tokens": True}, "not a number"),
        ({"tokens": float("nan")}, "returned nan"),
    ],
)
def test_cost_of_a_broken_cost_function_names_the_limit(data: Any, error: str) -> None:
    limit = Limit("llm", "1/s", cost=lambda d: d["tokens"])
    with pytest.raises(ValueError, match=error) as info:
        limit.cost_of(data)
    assert "'llm'" in str(info.value)


def test_as_limit() -> None:
    limit = Limit("shared", "5/s")
    assert as_limit(limit, "step") is limit
    assert as_limit("100/s", "step") == Limit("step", "100/s")
    assert as_limit(Rate(1, 2), "step").parsed == Rate(1, 2)
    with pytest.raises(DefinitionError):
        as_limit(100, "step")  # type: ignore[arg-type]


# -- key names -----------------------------------------------------------------------------


def test_key_names() -> None:
    assert rate_key("ns", "llm") == "ns:rate:llm"
    assert (
        concurrency_key("ns", "tenant", "acme-1:eu_west.2")
        == "ns:concurrency:tenant:acme-1:eu_west.2"
    )


@pytest.mark.parametrize("key", ["", "tenant/ü x*{p1}\n", "a" * 101, "é" * 10_000, "x" * 1_000_000])
def test_concurrency_key_bounds_odd_and_long_keys(key: str) -> None:
    built = concurrency_key("ns", "tenant", key)
    part = built.removeprefix("ns:concurrency:tenant:")
    assert len(part) <= 80
    assert all(c.isascii() and (c.isalnum() or c in "_.:-~") for c in part)
    assert concurrency_key("ns", "tenant", key) == built  # stable
    assert concurrency_key("ns", "tenant", key + "!") != built


def test_concurrency_key_keeps_a_plain_key_readable_and_distinct_from_hashed_ones() -> None:
    assert concurrency_key("ns", "t", "a" * 100).endswith(":" + "a" * 100)
    hashed = concurrency_key("ns", "t", "a b")
    assert hashed.startswith("ns:concurrency:t:a_b~")
    assert concurrency_key("ns", "t", "a_b") != hashed


# -- rate, against Redis -------------------------------------------------------------------


@pytest.fixture
def limiter(redis: aredis.Redis, namespace: str) -> Limiter:
    return Limiter(redis, namespace, ScriptRegistry())


@pytest.fixture
async def other_redis(redis_server: EmbeddedRedis) -> AsyncIterator[aredis.Redis]:
    """A second connection, as a second worker process would have."""
    client: Any = connect(redis_server.url)
    yield client
    await client.aclose()


def near(value: float, expected: float) -> bool:
    return 0.5 * expected <= value <= 1.5 * expected


async def test_a_full_burst_is_granted_then_the_next_waits_one_interval(
    limiter: Limiter, redis: aredis.Redis, namespace: str
) -> None:
    limit = Limit("llm", "5/s")  # burst 5, one unit per 200 ms
    assert await limiter.take([(limit, 1)] * 5) == [0.0] * 5
    [wait] = await limiter.take([(limit, 1)])
    assert near(wait, 0.2)
    await asyncio.sleep(wait + 0.05)
    assert await limiter.take([(limit, 1)]) == [0.0]
    # the state is one string (the TAT, ms) that expires about when the bucket is full again
    assert set(await redis.keys(f"{namespace}:*")) == {rate_key(namespace, "llm").encode()}
    tat = float(await redis.get(rate_key(namespace, "llm")) or 0)
    now = time.time() * 1000
    assert now < tat < now + 1500
    assert 500 < await redis.pttl(rate_key(namespace, "llm")) <= 2000 + 100


async def test_an_explicit_burst(limiter: Limiter) -> None:
    limit = Limit("llm", "1/s", burst=2)
    waits = await limiter.take([(limit, 1), (limit, 1), (limit, 1)])
    assert waits[:2] == [0.0, 0.0] and near(waits[2], 1.0)


async def test_a_refused_take_writes_nothing(limiter: Limiter) -> None:
    limit = Limit("llm", "1/s", burst=5)
    assert await limiter.take([(limit, 5)]) == [0.0]
    for _ in range(3):  # refusals do not queue up: the wait stays one interval
        [wait] = await limiter.take([(limit, 1)])
        assert near(wait, 1.0)


async def test_a_cost_takes_that_many_units(limiter: Limiter) -> None:
    limit = Limit("llm", "10/s", burst=25)
    assert await limiter.take([(limit, 10), (limit, 10)]) == [0.0, 0.0]
    [wait] = await limiter.take([(limit, 10)])  # 5 left, 5 more units take 500 ms
    assert near(wait, 0.5)
    assert await limiter.take([(limit, 5)]) == [0.0]
    [wait] = await limiter.take([(limit, 10)])
    assert near(wait, 1.0)


async def test_a_cost_above_the_burst_passes_when_the_bucket_is_full(limiter: Limiter) -> None:
    limit = Limit("llm", "50/s", burst=10)
    assert await limiter.take([(limit, 50)]) == [0.0]  # capped to 10: the bucket is now empty
    [wait] = await limiter.take([(limit, 50)])
    assert near(wait, 0.2)  # waits for a full bucket (10 units, 200 ms), not for 50 (1 s)
    await asyncio.sleep(wait + 0.05)
    assert await limiter.take([(limit, 50)]) == [0.0]


async def test_limits_are_separate_by_name_and_batched_in_one_call(limiter: Limiter) -> None:
    a, b = Limit("a", "1/s", burst=1), Limit("b", "1/s", burst=1)
    waits = await limiter.take([(a, 1), (b, 1), (a, 1), (b, 1)])
    assert waits[:2] == [0.0, 0.0]
    assert near(waits[2], 1.0) and near(waits[3], 1.0)
    assert await limiter.take([]) == []


async def test_two_workers_share_one_budget(
    limiter: Limiter, other_redis: aredis.Redis, namespace: str
) -> None:
    other = Limiter(other_redis, namespace, ScriptRegistry())
    mine, theirs = Limit("llm", "5/5s"), Limit("llm", "5/5s")  # same name: one budget
    assert await limiter.take([(mine, 3)]) == [0.0]
    assert await other.take([(theirs, 2)]) == [0.0]
    [wait] = await limiter.take([(mine, 1)])
    assert near(wait, 1.0)
    [wait] = await other.take([(theirs, 1)])
    assert near(wait, 1.0)


async def test_charge_pushes_later_takes_back_and_a_negative_charge_refunds(
    limiter: Limiter,
) -> None:
    limit = Limit("llm", "1/s", burst=10)
    assert await limiter.take([(limit, 1)]) == [0.0]
    await limiter.charge([(limit, 9)])  # it really cost 10: the bucket is empty
    [wait] = await limiter.take([(limit, 1)])
    assert near(wait, 1.0)
    await limiter.charge([(limit, 5)])  # debt beyond the burst: waited out by later takes
    [wait] = await limiter.take([(limit, 1)])
    assert near(wait, 6.0)
    await limiter.charge([(limit, -9)])  # refund: 4 units back
    assert await limiter.take([(limit, 3)]) == [0.0]
    [wait] = await limiter.take([(limit, 2)])
    assert wait > 0
    await limiter.charge([(limit, -1000)])  # a refund never goes past a full bucket
    assert await limiter.take([(limit, 10)]) == [0.0]
    [wait] = await limiter.take([(limit, 1)])
    assert near(wait, 1.0)


async def test_a_refund_to_a_full_bucket_deletes_the_key(
    limiter: Limiter, redis: aredis.Redis, namespace: str
) -> None:
    limit = Limit("llm", "10/s")
    assert await limiter.take([(limit, 2)]) == [0.0]
    await limiter.charge([(limit, -2), (limit, 0)])
    assert await redis.exists(rate_key(namespace, "llm")) == 0


async def test_push_back_stops_every_take_for_that_long(
    limiter: Limiter, other_redis: aredis.Redis, namespace: str
) -> None:
    limit = Limit("api", "10/s")  # a full bucket: 10 units would pass at once
    other = Limiter(other_redis, namespace, ScriptRegistry())
    await limiter.push_back(limit, 0.3)
    pushed = time.monotonic()
    await other.push_back(limit, 0.05)  # a shorter push does not shorten the wait
    [wait] = await other.take([(limit, 1)])
    assert near(wait, 0.3)
    while await other.take([(limit, 1)]) != [0.0]:
        assert time.monotonic() - pushed < 2.0
        await asyncio.sleep(0.02)
    assert time.monotonic() - pushed >= 0.25
    # after the push the bucket refills at its rate: no full burst at once
    [wait] = await limiter.take([(limit, 5)])
    assert wait > 0


async def test_push_back_of_a_slow_rate_waits_the_push_not_an_interval(limiter: Limiter) -> None:
    limit = Limit("slow", "5/h")  # one unit per 12 minutes
    await limiter.push_back(limit, 0.3)
    [wait] = await limiter.take([(limit, 1)])
    assert near(wait, 0.3)
    await asyncio.sleep(wait + 0.05)
    assert await limiter.take([(limit, 1)]) == [0.0]


async def test_bad_amounts_are_rejected_before_redis(limiter: Limiter) -> None:
    limit = Limit("llm", "10/s")
    with pytest.raises(ValueError, match="'llm'"):
        await limiter.take([(limit, -1)])
    with pytest.raises(ValueError, match="'llm'"):
        await limiter.charge([(limit, float("nan"))])
    with pytest.raises(ValueError, match="'llm'"):
        await limiter.push_back(limit, -1)


async def test_an_unknown_mode_is_an_error_reply(limiter: Limiter, namespace: str) -> None:
    scripts = limiter.scripts
    with pytest.raises(ResponseError, match="unknown mode"):
        await limiter._run([scripts.args("rate", [rate_key(namespace, "x")], ["bogus"])])
    with pytest.raises(ResponseError, match="unknown mode"):
        await limiter._run(
            [scripts.args("concurrency", [concurrency_key(namespace, "x", "k")], ["bogus", "h"])]
        )


# -- concurrency, against Redis ------------------------------------------------------------


async def holders(redis: aredis.Redis, namespace: str, name: str, key: str) -> set[bytes]:
    members: list[Any] = await redis.zrange(concurrency_key(namespace, name, key), 0, -1)
    return set(members)


async def test_enter_grants_up_to_max_and_leave_frees_a_slot(
    limiter: Limiter, redis: aredis.Redis, namespace: str
) -> None:
    waits = await limiter.enter([("tenant", "acme", 2, h, 30.0) for h in ("h1", "h2", "h3")])
    assert waits == [0.0, 0.0, 1.0]  # the hint is capped at 1 s (the leases last 30 s)
    assert await holders(redis, namespace, "tenant", "acme") == {b"h1", b"h2"}
    assert 29_000 < await redis.pttl(concurrency_key(namespace, "tenant", "acme")) <= 30_000
    assert await limiter.enter([("tenant", "other", 2, "h3", 30.0)]) == [0.0]  # another key
    await limiter.leave([("tenant", "acme", "h1")])
    await limiter.leave([("tenant", "acme", "h1")])  # leaving twice is harmless
    assert await limiter.enter([("tenant", "acme", 2, "h3", 30.0)]) == [0.0]
    assert await holders(redis, namespace, "tenant", "acme") == {b"h2", b"h3"}
    await limiter.leave([("tenant", "acme", "h2"), ("tenant", "acme", "h3")])
    assert await redis.exists(concurrency_key(namespace, "tenant", "acme")) == 0
    assert await limiter.enter([]) == []


async def test_the_same_holder_entering_twice_counts_once(
    limiter: Limiter, redis: aredis.Redis, namespace: str
) -> None:
    waits = await limiter.enter([("tenant", "acme", 2, h, 30.0) for h in ("h1", "h1", "h2", "h3")])
    assert waits[:3] == [0.0, 0.0, 0.0] and waits[3] > 0
    assert await holders(redis, namespace, "tenant", "acme") == {b"h1", b"h2"}


async def test_an_expired_lease_frees_its_slot(
    limiter: Limiter, redis: aredis.Redis, namespace: str
) -> None:
    assert await limiter.enter([("tenant", "acme", 1, "h1", 0.4)]) == [0.0]
    [wait] = await limiter.enter([("tenant", "acme", 1, "h2", 0.4)])
    assert near(wait, 0.4)  # the hint: until h1's lease expires
    await asyncio.sleep(wait + 0.05)
    assert await limiter.enter([("tenant", "acme", 1, "h2", 30.0)]) == [0.0]
    assert await holders(redis, namespace, "tenant", "acme") == {b"h2"}
    assert await limiter.renew([("tenant", "acme", "h1", 30.0)]) == [False]  # h1 lost it
    assert await holders(redis, namespace, "tenant", "acme") == {b"h2"}


async def test_renew_keeps_a_lease_alive(
    limiter: Limiter, redis: aredis.Redis, namespace: str
) -> None:
    assert await limiter.enter([("tenant", "acme", 1, "h1", 0.6)]) == [0.0]
    for _ in range(6):  # 0.9 s in all, one and a half leases
        await asyncio.sleep(0.15)
        assert await limiter.renew([("tenant", "acme", "h1", 0.6)]) == [True]
        [wait] = await limiter.enter([("tenant", "acme", 1, "h2", 0.6)])
        assert wait > 0
    assert await redis.pttl(concurrency_key(namespace, "tenant", "acme")) <= 600
    await limiter.leave([("tenant", "acme", "h1")])
    assert await limiter.renew([("tenant", "acme", "h1", 0.3), ("tenant", "none", "h1", 1.0)]) == [
        False,
        False,
    ]
    assert await redis.exists(concurrency_key(namespace, "tenant", "acme")) == 0


async def test_the_key_lives_as_long_as_its_longest_lease(
    limiter: Limiter, redis: aredis.Redis, namespace: str
) -> None:
    await limiter.enter([("tenant", "acme", 3, "long", 20.0), ("tenant", "acme", 3, "short", 0.5)])
    assert 19_000 < await redis.pttl(concurrency_key(namespace, "tenant", "acme")) <= 20_000
    await limiter.renew([("tenant", "acme", "short", 1.0)])  # renewing a shorter one: unchanged
    assert 19_000 < await redis.pttl(concurrency_key(namespace, "tenant", "acme")) <= 20_000


async def test_two_workers_share_the_slots(
    limiter: Limiter, other_redis: aredis.Redis, namespace: str
) -> None:
    other = Limiter(other_redis, namespace, ScriptRegistry())
    assert await limiter.enter([("tenant", "acme", 1, "worker-1", 30.0)]) == [0.0]
    [wait] = await other.enter([("tenant", "acme", 1, "worker-2", 30.0)])
    assert wait > 0
    await limiter.leave([("tenant", "acme", "worker-1")])
    assert await other.enter([("tenant", "acme", 1, "worker-2", 30.0)]) == [0.0]


@pytest.mark.parametrize("key", ["tenant/ü x*{p1}\n", "é" * 10_000])
async def test_odd_and_long_concurrency_keys_work_and_are_bounded(
    limiter: Limiter, redis: aredis.Redis, namespace: str, key: str
) -> None:
    waits = await limiter.enter([("tenant", key, 1, "h1", 30.0), ("tenant", key, 1, "h2", 30.0)])
    assert waits[0] == 0.0 and waits[1] > 0
    [stored] = [k async for k in redis.scan_iter(match=f"{namespace}:*")]  # every node
    assert isinstance(stored, bytes)
    assert stored.decode() == concurrency_key(namespace, "tenant", key)
    assert len(stored) <= len(f"{namespace}:concurrency:tenant:") + 80
    await limiter.leave([("tenant", key, "h1")])
    assert await limiter.enter([("tenant", key, 1, "h2", 30.0)]) == [0.0]


async def test_enter_needs_at_least_one_holder(limiter: Limiter) -> None:
    with pytest.raises(ValueError, match="'tenant'"):
        await limiter.enter([("tenant", "acme", 0, "h1", 1.0)])
