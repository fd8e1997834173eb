"""The examples run end to end against a real redis-server that these tests start.

The example modules are loaded from ``examples/`` by path (they are not a package), lazily,
so collecting the suite does not pay for importing scikit-learn.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import redis

from conveyor import App, AsyncClient, Worker, Workflow, WorkflowStatus
from conveyor.embedded import EmbeddedRedis
from tests.helpers import until_async

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def load_example(name: str) -> ModuleType:
    module_name = f"conveyor_examples_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(appendonly=False) as s:
        yield s


@pytest.fixture(scope="module")
def fraud() -> ModuleType:
    return load_example("fraud")


@pytest.fixture(scope="module")
def content() -> ModuleType:
    return load_example("content")


def app_for(workflow: Workflow, server: EmbeddedRedis) -> App:
    namespace = f"ex{uuid.uuid4().hex[:10]}"
    return App(workflows=[workflow], redis_url=server.url, namespace=namespace, partitions=4)


async def run_all(app: App, name: str, inputs: list[Any]) -> list[WorkflowStatus]:
    """Start one workflow per input, run a worker until every queue is empty, read them."""
    async with AsyncClient(app=app) as client:
        ids = [await client.start(name, value) for value in inputs]
        await Worker(app, block_ms=50, promote_interval=0.02).run(until_idle=True)
        return [await client.status(workflow_id) for workflow_id in ids]


# -- fraud -------------------------------------------------------------------------------------

OBVIOUS_FRAUD = {
    "transaction_id": "tx-fraud",
    "account_id": "acct-0001",  # lives in FR
    "amount": 4999.0,
    "currency": "USD",
    "merchant_category": "crypto",
    "country": "NG",
    "timestamp": "2025-03-01T03:12:00+00:00",
    "card_present": False,
}
OBVIOUS_LEGIT = {
    **OBVIOUS_FRAUD,
    "transaction_id": "tx-legit",
    "amount": 12.5,
    "merchant_category": "grocery",
    "country": "FR",
    "timestamp": "2025-03-01T14:05:00+00:00",
    "card_present": True,
}


async def test_fraud_pipeline_scores_and_alerts(fraud: ModuleType, server: EmbeddedRedis) -> None:
    assert fraud.account_profile("acct-0001").home_country == "FR"
    transactions = [*fraud.generate_transactions(8, seed=3), OBVIOUS_FRAUD, OBVIOUS_LEGIT]
    statuses = await run_all(app_for(fraud.fraud, server), "fraud", transactions)

    for tx, status in zip(transactions, statuses, strict=True):
        assert status.status == "completed", status.error
        assert [r.step for r in status.history] == ["ingest", "enrich", "score", "alert"]
        result = status.result
        assert result["transaction_id"] == tx["transaction_id"]
        assert 0.0 <= result["score"] <= 1.0
        assert result["alert"] == (result["score"] >= fraud.ALERT_THRESHOLD)
        assert (result["alert_id"] is not None) == result["alert"]
    *_, fraudulent, legit = (s.result for s in statuses)
    assert fraudulent["alert"] and fraudulent["score"] > 0.99
    assert set(fraudulent["reasons"]) >= {"foreign", "night", "card_not_present"}
    assert not legit["alert"] and legit["score"] < 0.01 and legit["reasons"] == []


async def test_fraud_rejects_an_invalid_transaction_at_ingest(
    fraud: ModuleType, server: EmbeddedRedis
) -> None:
    bad = {**OBVIOUS_LEGIT, "amount": -5, "currency": "dollars"}
    [status] = await run_all(app_for(fraud.fraud, server), "fraud", [bad])
    assert status.status == "failed"
    assert status.error is not None and status.error.type == "StepInputError"
    assert "amount" in status.error.message and "currency" in status.error.message
    assert [(r.step, r.status) for r in status.history] == [("ingest", "failed")]  # no retry


def test_fraud_data_and_model_are_deterministic(fraud: ModuleType) -> None:
    first = fraud.generate_transactions(200, seed=5)
    assert first == fraud.generate_transactions(200, seed=5)
    assert first != fraud.generate_transactions(200, seed=6)
    for tx in first:
        fraud.Transaction.model_validate(tx)
    trained = fraud.model()
    assert trained is fraud.model()  # trained once per process
    assert trained.holdout_auc > 0.95
    assert trained.seconds < 5  # about 0.2 s on a laptop; generous for loaded CI machines


# -- content -----------------------------------------------------------------------------------

PARKED = {"waiting", "completed", "failed", "cancelled"}  # not "running"
APPROVE = {"approved": True, "by": "ana"}


async def run_until_parked(
    app: App, client: AsyncClient, ids: list[str], timeout: float = 5.0
) -> list[WorkflowStatus]:
    """Run a worker until every workflow has finished or parks in a wait, then stop it.

    ``run_all``'s until-idle worker does not fit a workflow that waits for a signal: the
    wait's timeout timer (an hour away) is pending work, so that worker would never be idle.
    """
    worker = Worker(app, block_ms=50, promote_interval=0.02)
    task = asyncio.create_task(worker.run())
    try:

        async def parked() -> list[WorkflowStatus] | None:
            statuses = [await client.status(workflow_id) for workflow_id in ids]
            return statuses if all(s.status in PARKED for s in statuses) else None

        return await until_async(parked, timeout, what=f"{ids} finished or parked")
    finally:
        worker.request_stop()
        await task


def steps_of(status: WorkflowStatus) -> list[str]:
    return [r.step for r in status.history]


async def test_content_loops_back_to_draft_until_the_facts_check(
    content: ModuleType, server: EmbeddedRedis
) -> None:
    app = app_for(content.content, server)
    brief = {"topic": "vector databases", "audience": "ML engineers"}
    async with AsyncClient(app=app) as client:
        workflow_id = await client.start("content", brief)
        [parked] = await run_until_parked(app, client, [workflow_id])
        assert parked.status == "waiting", parked.error
        assert parked.waiting_for == ["approval"]
        [waits] = parked.waits
        assert waits.step == "publish" and waits.since and waits.deadline
        assert 3590 < (waits.deadline - waits.since).total_seconds() <= 3600  # the default
        assert steps_of(parked) == [
            "outline",
            *["draft", "fact_check"] * 3,  # two rounds sent back by the fact checker
            *["review"] * 4,  # fanned out: one reviewer per section
            "edit",  # the join, once, with the notes in section order
        ]
        article = parked.state["article"]  # what the approver reads in `conveyor status`
        assert article["dropped"] == [] and article["notes_applied"] >= 4
        assert "draft" not in parked.state  # the join consumed it

        assert await client.signal(workflow_id, "approval", APPROVE) == "delivered"
        [status] = await run_until_parked(app, client, [workflow_id])
    assert status.status == "completed", status.error
    assert steps_of(status)[-2:] == ["edit", "publish"]
    result = status.result
    assert result["status"] == "published"
    assert result["approved_by"] == "ana" and not result["auto_approved"]
    assert result["verified"] and result["rounds"] == 3
    assert [c["problems"] for c in result["fact_checks"]] == [2, 1, 0]
    assert result["url"] == (
        "https://blog.example.com/posts/vector-databases-a-field-guide-for-ml-engineers"
    )
    assert "[unverified]" not in result["body"]
    assert "more detail follows" not in result["body"]  # the reviewers' notes were applied
    assert result["body"].count("## ") == 4
    assert status.state["fact_checks"] == result["fact_checks"]


async def test_content_stops_at_the_round_limit(content: ModuleType, server: EmbeddedRedis) -> None:
    app = app_for(content.content, server)
    briefs = [
        {"topic": "vector databases", "max_rounds": 1},  # has problems: edited anyway
        {"topic": "Conveyor"},  # the first draft checks out: no loop at all
    ]
    async with AsyncClient(app=app) as client:
        ids = [await client.start("content", brief) for brief in briefs]
        parked = await run_until_parked(app, client, ids)
        assert [s.status for s in parked] == ["waiting", "waiting"]
        for workflow_id in ids:
            await client.signal(workflow_id, "approval", APPROVE)
        limited, clean = await run_until_parked(app, client, ids)
    assert steps_of(limited).count("draft") == 1
    assert not limited.result["verified"] and limited.result["body"].count("[unverified]") == 2
    assert steps_of(clean).count("draft") == 1
    assert clean.result["verified"]
    for status in (limited, clean):
        assert status.result["status"] == "published"
        assert steps_of(status).count("review") == 4 and steps_of(status).count("edit") == 1


async def test_content_one_failed_reviewer_does_not_sink_the_article(
    content: ModuleType, server: EmbeddedRedis
) -> None:
    app = app_for(content.content, server)
    async with AsyncClient(app=app) as client:
        # the fifth heading has no sources: it is written empty and its reviewer refuses it
        workflow_id = await client.start("content", {"topic": "Conveyor", "sections": 5})
        [parked] = await run_until_parked(app, client, [workflow_id])
        assert parked.status == "waiting", parked.error
        reviews = [(r.status, r.attempt) for r in parked.history if r.step == "review"]
        assert sorted(reviews) == [("completed", 1)] * 4 + [("failed", 1)]  # not retried
        [failed] = [r for r in parked.history if r.step == "review" and r.status == "failed"]
        assert failed.error is not None and failed.error.type == "EmptySectionError"
        assert steps_of(parked).count("edit") == 1

        await client.signal(workflow_id, "approval", APPROVE)
        [status] = await run_until_parked(app, client, [workflow_id])
        assert await client.dead_letters() == []  # edit handled it: not a dead letter
    result = status.result
    assert status.status == "completed" and result["status"] == "published"
    [dropped] = result["dropped"]
    assert dropped["heading"] == "Conveyor versus the alternatives"
    assert dropped["error"].startswith("EmptySectionError: ")
    assert "versus the alternatives" not in result["body"]
    assert result["body"].count("## ") == 4


async def test_content_rejected_after_a_malformed_answer_with_cached_reviews(
    content: ModuleType, server: EmbeddedRedis
) -> None:
    app = app_for(content.content, server)
    brief = {"topic": "Conveyor"}
    async with AsyncClient(app=app) as client:
        first = await client.start("content", brief)
        await run_until_parked(app, client, [first])
        second = await client.start("content", brief)  # the same sections, reviewed already
        [parked] = await run_until_parked(app, client, [second])
        assert parked.status == "waiting", parked.error
        reviews = [r for r in parked.history if r.step == "review"]
        assert len(reviews) == 4 and all(r.cached for r in reviews)  # from the shared cache
        assert parked.state["article"] == (await client.status(first)).state["article"]

        await client.signal(second, "approval", {"approved": "maybe"})
        [asked_again] = await run_until_parked(app, client, [second])
        assert asked_again.status == "waiting" and asked_again.waiting_for == ["approval"]
        [ignored] = asked_again.state["ignored_answers"]
        assert ignored["payload"] == {"approved": "maybe"}

        rejection = {"approved": False, "by": "sam", "reason": "too thin"}
        await client.signal(second, "approval", rejection)
        [status] = await run_until_parked(app, client, [second])
    assert status.status == "completed", status.error
    assert steps_of(status).count("publish") == 2  # the malformed answer, then the real one
    assert status.result == {
        "status": "rejected",
        "title": "Conveyor: a field guide for engineers",
        "by": "sam",
        "reason": "too thin",
    }


async def test_content_approval_timeout_follows_the_brief(
    content: ModuleType, server: EmbeddedRedis
) -> None:
    briefs = [
        {"topic": "Conveyor", "approval_timeout": 0.2, "auto_publish_on_timeout": True},
        {"topic": "Conveyor", "approval_timeout": 0.2},  # the default: expire, unpublished
    ]
    # nobody answers: the timers fire, so the until-idle worker of run_all ends
    auto, expired = await run_all(app_for(content.content, server), "content", briefs)
    for status in (auto, expired):
        assert status.status == "completed", status.error
        assert steps_of(status)[-2:] == ["edit", "publish"]
    assert auto.result["status"] == "published"
    assert auto.result["auto_approved"] and auto.result["approved_by"] == "auto"
    assert expired.result == {
        "status": "expired",
        "title": "Conveyor: a field guide for engineers",
        "reason": "no answer within 0.2 s",
    }


# -- the demo runner ---------------------------------------------------------------------------


def test_demo_runs_and_prints_its_summary(server: EmbeddedRedis) -> None:
    env = {**os.environ, "REDIS_URL": server.url, "COLUMNS": "100"}
    env = {k: v for k, v in env.items() if not k.startswith("CONVEYOR_")}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "demo.py"), "--count", "50"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "50/50" in out  # the progress bar's last state
    for row in ("workflows started", "completed", "failed", "alerts raised", "throughput"):
        assert row in out
    lines = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in out.splitlines()
             if line.count("│") == 3}  # fmt: skip
    assert lines["workflows started"] == "50"
    assert lines["completed"] == "50"
    assert lines["failed"] == "0"
    assert lines["steps run"] == "200"
    assert lines["latency p99"].endswith(" ms")
    assert lines["throughput"].endswith(" workflows/s")
    # it ran in a namespace of its own and deleted it
    with redis.Redis.from_url(server.url) as r:
        assert r.keys("demo-*") == []
