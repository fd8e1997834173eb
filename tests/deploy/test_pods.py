"""The chart's pods, run as processes (tests/deploy/pods.py says how a pod is emulated):
for the dev and production profiles, every rendered Deployment's container is started with
its own args and environment, its probes must pass at the manifest's paths and ports, a
workflow goes through the dispatcher and the worker started that way, and the worker's
preStop hook drains it to a clean exit within its grace period."""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from conveyor.api.settings import hash_token, new_token
from tests.helpers import until

from .helm import Pod, by_kind, find, pod, render
from .pods import Cluster, Running, wait_ok

REDIS_PASSWORD = "s3cret/:@ pass"  # would break a URL: it must travel as REDIS_PASSWORD
TOKEN = new_token()
SECRETS = {
    ("conveyor-redis", "redis-password"): REDIS_PASSWORD,
    ("conveyor-api-keys", "api-keys"): f"ci:{hash_token(TOKEN)}:submit,read",
}
#: one pod network per profile: the two tests may run at once (xdist)
NETWORKS = {"dev": 41, "production": 42}


@pytest.fixture
def redis_standin(tmp_path: Path) -> Iterator[str]:
    """For production: Bitnami's Redis master, which the chart does not render, as a
    redis-server with its password at a pod address of its own, port 6379."""
    address = f"127.0.{NETWORKS['production']}.200"
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed"
    process = subprocess.Popen(
        [binary, "--bind", address, "--port", "6379", "--requirepass", REDIS_PASSWORD,
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_redis(address)
        yield address
    finally:
        process.terminate()
        process.wait(10)


def wait_redis(address: str, timeout: float = 20) -> None:
    """What the Redis pod's exec probe (``redis-cli ping`` with REDISCLI_AUTH) checks, from
    outside the pod: it answers PING with the Secret's password."""
    client = redis.Redis(host=address, port=6379, password=REDIS_PASSWORD, socket_timeout=1)

    def pings() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    try:
        until(pings, timeout, what=f"Redis at {address} answering PING")
    finally:
        client.close()


def start_checked(cluster: Cluster, template: Pod) -> Running:
    """Start a pod and wait for its probes, as the kubelet gates readiness: the startup
    probe first, then liveness and readiness."""
    extra = []
    if template.component == "worker":
        # the worker binds its metrics port on all interfaces unless told otherwise: in
        # its own network namespace that is the pod's address
        extra = ["--metrics-host", cluster.address()]
    running = cluster.start(template, extra)
    container = template.container
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        if kind in container:
            assert "httpGet" in container[kind], (template.name, kind)
            body = wait_ok(running.http_action(container[kind]), running).text
            assert body.strip(), (template.name, kind)
    return running


@pytest.mark.timeout(180)
@pytest.mark.parametrize("profile", ["dev", "production"])
def test_rendered_deployments_run_serve_their_probes_and_a_workflow(
    profile: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    objects = render(profile)
    external = {}
    if profile == "production":
        external["conveyor-redis-master"] = request.getfixturevalue("redis_standin")
    cluster = Cluster(objects, SECRETS, tmp_path, NETWORKS[profile], external)
    try:
        if profile == "dev":  # the chart's own Redis StatefulSet, run as its pod would
            store = cluster.start(pod(objects, "redis"), ["--bind", cluster.address()])
            wait_redis(store.address)
            assert store.process.poll() is None
            aof = list((tmp_path / "conveyor-redis" / "data").rglob("*.aof"))
            assert aof, "the dev Redis writes no AOF on its volume"
        deployments = {d["metadata"]["name"]: d for d in by_kind(objects, "Deployment")}
        assert sorted(deployments) == [
            "conveyor-dispatcher", "conveyor-exporter", "conveyor-worker"
        ]  # fmt: skip
        started = {
            component: start_checked(cluster, pod(objects, component))
            for component in ("exporter", "worker", "dispatcher")
        }

        # a workflow through the dispatcher's port and the worker, as a client would
        dispatcher = started["dispatcher"]
        headers = {"Authorization": f"Bearer {TOKEN}"} if profile == "production" else {}
        submitted = httpx.post(
            dispatcher.url("http", "/v1/workflows/demo"), json="k8s", headers=headers, timeout=10
        )
        assert submitted.status_code == 202, submitted.text
        workflow_id = submitted.json()["id"]
        result = httpx.get(
            dispatcher.url("http", f"/v1/workflows/{workflow_id}/result"),
            params={"wait": 30}, headers=headers, timeout=40,
        )  # fmt: skip
        assert result.status_code == 200, result.text
        assert result.json()["result"] == {"message": "HELLO, K8S!!!"}
        if profile == "production":  # keys from the Secret: no token, no entry
            anonymous = httpx.post(
                dispatcher.url("http", "/v1/workflows/demo"), json="x", timeout=10
            )
            assert anonymous.status_code == 401

        # the exporter, started the same way, serves the metric the autoscaler reads
        scrape = httpx.get(started["exporter"].url("metrics", "/metrics"), timeout=10).text
        assert 'conveyor_queue_backlog{queue="default"}' in scrape
        assert "conveyor_redis_up 1.0" in scrape
        if profile == "production":
            hpa = find(objects, "HorizontalPodAutoscaler")
            metric = hpa["spec"]["metrics"][0]["external"]["metric"]["name"]
            assert f"{metric}{{" in scrape

        # the worker's preStop hook drains it; it exits 0 within its grace period
        worker = started["worker"]
        template = pod(objects, "worker")
        hook = template.container["lifecycle"]["preStop"]
        assert httpx.get(worker.http_action(hook), timeout=5).is_success
        grace = template.spec["terminationGracePeriodSeconds"]
        assert worker.process.wait(grace) == 0, worker.output()
    finally:
        outputs = cluster.stop_all()
    for running in cluster.running:
        code, output = running.process.returncode, outputs.get(running.name)
        if running.pod.component in ("dispatcher", "exporter"):
            # uvicorn shuts down gracefully, then re-raises the SIGTERM it caught
            assert code in (0, -signal.SIGTERM), (running.name, output)
            assert "Finished server process" in str(output), (running.name, output)
        else:
            assert code == 0, (running.name, output)
    assert "stopped" in outputs["conveyor-worker"]
