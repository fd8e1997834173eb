"""Metrics, traces and logs of real processes: `conveyor worker` (two processes, or one per
queue), `conveyor api`, scraped and followed over real HTTP. Spans are exported by the
processes themselves over OTLP/HTTP, configured only by the standard OTEL_* variables, to a
receiver this test runs."""

from __future__ import annotations

import gzip
import json
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client.parser import text_string_to_metric_families

from conveyor import AsyncClient
from conveyor.embedded import EmbeddedRedis, free_port
from conveyor.errors import WorkflowFailedError
from conveyor.logs import ContextFilter, bind_step, json_formatter, unbind
from conveyor.observability.tracing import carrier, split, trace_id_of
from tests.helpers import until, until_async
from tests.processes import ROOT, spawn, stop, wait_http

APP = "tests.apps.observed:app"


# -- processes ----------------------------------------------------------------------------------


def base_env(redis: EmbeddedRedis, namespace: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PROMETHEUS_"))}
    env.update({
        "PYTHONPATH": str(ROOT), "REDIS_URL": redis.url, "CONVEYOR_NAMESPACE": namespace,
        "CONVEYOR_PARTITIONS": "4", "CONVEYOR_LOG_FORMAT": "json", **extra,
    })  # fmt: skip
    return env


def samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, by (name, sorted labels)."""
    text = httpx.get(url, timeout=5).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(scrape: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:  # fmt: skip
    return scrape.get((name, tuple(sorted(labels.items()))), 0.0)


# -- metrics --------------------------------------------------------------------------------------


async def test_metrics_of_two_worker_processes_match_what_happened(
    redis7: EmbeddedRedis, namespace: str
) -> None:
    port = free_port()
    client = AsyncClient(redis7.url, namespace, partitions=4)
    worker = spawn(["worker", APP, "--processes", "2", "--metrics-port", str(port),
                    "--metrics-host", "127.0.0.1"], base_env(redis7, namespace))  # fmt: skip
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_http(url, worker)
        # both processes registered (their heartbeats) before anything is started
        heartbeats = await until_async(lambda: live_workers(client))
        pipelines = [await client.start("pipeline", i) for i in range(20)]
        flakies = [await client.start("flaky", i) for i in range(3)]
        broken = [await client.start("broken", i) for i in range(2)]
        for i, wf in enumerate(pipelines):
            assert await client.result(wf, timeout=30) == i * 2 + 1
        for i, wf in enumerate(flakies):
            assert await client.result(wf, timeout=30) == i
        for wf in broken:
            with pytest.raises(WorkflowFailedError):
                await client.result(wf, timeout=30)
        # tracing is off without a configured SDK: the carrier holds only the start time
        assert (await client.status(pipelines[0])).trace_id is None

        def settled() -> Any:
            scrape = samples(url)
            done = value(scrape, "conveyor_workflow_duration_seconds_count",
                         workflow="pipeline", status="completed")  # fmt: skip
            dead = value(scrape, "conveyor_steps_dead_lettered_total",
                         workflow="broken", step="explode", queue="front")  # fmt: skip
            return scrape if done == 20 and dead == 2 else None

        scrape = until(settled, what="the metrics of every workflow")
        for step, queue in (("fetch", "front"), ("score", "back"), ("publish", "front")):
            labels = {"workflow": "pipeline", "step": step, "queue": queue}
            assert value(scrape, "conveyor_steps_started_total", **labels) == 20
            assert value(scrape, "conveyor_steps_completed_total", **labels) == 20
            assert value(scrape, "conveyor_steps_failed_total", **labels) == 0
            assert value(scrape, "conveyor_step_duration_seconds_count", **labels) == 20
            assert value(scrape, "conveyor_step_duration_seconds_bucket", le="+Inf", **labels) == 20
        once = {"workflow": "flaky", "step": "once", "queue": "front"}
        assert value(scrape, "conveyor_steps_started_total", **once) == 6  # 2 attempts each
        assert value(scrape, "conveyor_steps_failed_total", **once) == 3
        assert value(scrape, "conveyor_steps_retried_total", **once) == 3
        assert value(scrape, "conveyor_steps_completed_total", **once) == 3
        assert value(scrape, "conveyor_steps_dead_lettered_total", **once) == 0
        explode = {"workflow": "broken", "step": "explode", "queue": "front"}
        assert value(scrape, "conveyor_steps_started_total", **explode) == 2
        assert value(scrape, "conveyor_steps_failed_total", **explode) == 2
        assert value(scrape, "conveyor_steps_completed_total", **explode) == 0
        for wf, status, count in (("pipeline", "completed", 20), ("flaky", "completed", 3),
                                  ("broken", "failed", 2), ("broken", "completed", 0)):  # fmt: skip
            assert value(scrape, "conveyor_workflow_duration_seconds_count",
                         workflow=wf, status=status) == count  # fmt: skip
        # end to end includes the flaky step's retry backoff (50 ms)
        assert value(scrape, "conveyor_workflow_duration_seconds_sum",
                     workflow="flaky", status="completed") >= 3 * 0.05  # fmt: skip
        assert value(scrape, "conveyor_steps_in_flight") == 0
        # the scrape is the sum over the two processes: it matches their own counters
        beats = await until_async(lambda: live_workers(client))
        assert {b["pid"] for b in beats} == {b["pid"] for b in heartbeats}
        total = await until_async(lambda: completed_total(client, 20 * 3 + 3))
        completed = sum(v for (n, _), v in scrape.items() if n == "conveyor_steps_completed_total")
        assert completed == total == 63
    finally:
        await client.close()
        output = stop(worker)
    assert "Traceback" not in output.replace("ValueError: cannot handle", ""), output


def test_every_series_exists_at_zero_before_the_first_event(
    redis7: EmbeddedRedis, namespace: str
) -> None:
    """A counter that appears at its first increment is invisible to increase() over the
    window holding it: a worker and the API publish every series their app can produce at
    0 from the start, and no _created series."""
    ports = free_port(), free_port()
    env = base_env(redis7, namespace)
    worker = spawn(["worker", APP, "--metrics-port", str(ports[0]),
                    "--metrics-host", "127.0.0.1"], env)  # fmt: skip
    api = spawn(["api", APP, "--port", str(ports[1]), "--no-auth"], env)
    try:
        wait_http(f"http://127.0.0.1:{ports[0]}/metrics", worker)
        wait_http(f"http://127.0.0.1:{ports[1]}/healthz", api)
        scrape = samples(f"http://127.0.0.1:{ports[0]}/metrics")
        steps = [("pipeline", "fetch", "front"), ("pipeline", "score", "back"),
                 ("pipeline", "publish", "front"), ("flaky", "once", "front"),
                 ("broken", "explode", "front")]  # fmt: skip
        for workflow, step, queue in steps:
            labels = {"workflow": workflow, "step": step, "queue": queue}
            for name in ("started", "completed", "failed", "retried", "dead_lettered",
                         "limited", "dropped"):  # fmt: skip
                assert (f"conveyor_steps_{name}_total", tuple(sorted(labels.items()))) in scrape
                assert value(scrape, f"conveyor_steps_{name}_total", **labels) == 0
            assert value(scrape, "conveyor_step_duration_seconds_count", **labels) == 0
        for queue in ("front", "back"):
            assert ("conveyor_tasks_reclaimed_total", (("queue", queue),)) in scrape
        for workflow in ("pipeline", "flaky", "broken"):
            key = (("status", "failed"), ("workflow", workflow))
            assert ("conveyor_workflow_duration_seconds_count", key) in scrape
        api_scrape = samples(f"http://127.0.0.1:{ports[1]}/metrics")
        for workflow in ("pipeline", "flaky", "broken"):
            assert ("conveyor_workflows_started_total", (("workflow", workflow),)) in api_scrape
            for reason in ("backpressure", "rate_limit"):
                key = (("reason", reason), ("workflow", workflow))
                assert value(api_scrape, "conveyor_enqueue_refused_total", **dict(key)) == 0
                assert ("conveyor_enqueue_refused_total", key) in api_scrape
        created = [n for n, _ in (*scrape, *api_scrape) if n.endswith("_created")]
        assert not created, created
    finally:
        stop(worker)
        stop(api)


async def live_workers(client: AsyncClient, want: int = 2) -> list[dict[str, Any]] | None:
    keys = client.store.keys
    names = await client.store.redis.zrange(keys.workers, 0, -1)
    raw = [await client.store.redis.get(keys.worker(n.decode())) for n in names]
    beats = [json.loads(r) for r in raw if r]
    return beats if len(beats) == want else None


async def completed_total(client: AsyncClient, want: int) -> int | None:
    beats = await live_workers(client)
    total = sum(b["stats"]["completed"] for b in beats or [])
    return total if total == want else None


# -- traces and logs ----------------------------------------------------------------------------


@dataclass
class OtlpReceiver:
    """An OTLP/HTTP trace endpoint: what the processes' exporters send, decoded."""

    port: int
    spans: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, body: bytes) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        with self.lock:
            for rs in request.resource_spans:
                resource = {a.key: a.value.string_value for a in rs.resource.attributes}
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        attrs = {}
                        for a in span.attributes:
                            v = a.value
                            attrs[a.key] = (
                                v.string_value if v.HasField("string_value") else v.int_value
                            )
                        self.spans.append({
                            "service": resource.get("service.name"),
                            "name": span.name,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent": span.parent_span_id.hex() or None,
                            "attributes": attrs,
                            "status": span.status.code,
                            "kind": span.kind,
                            "events": [e.name for e in span.events],
                        })  # fmt: skip

    def named(self, name: str) -> list[dict[str, Any]]:
        with self.lock:
            return [s for s in self.spans if s["name"] == name]

    def of_step(self, name: str) -> list[dict[str, Any]]:
        """The spans of step ``workflow.step`` (each named ``process <queue>``)."""
        with self.lock:
            return [
                s for s in self.spans
                if f"{s['attributes'].get('workflow.name')}.{s['attributes'].get('step')}" == name
            ]  # fmt: skip


@pytest.fixture
def otlp() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver(free_port())

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path == "/v1/traces":
                receiver.add(body)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", receiver.port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield receiver
    server.shutdown()
    server.server_close()


def test_one_workflow_is_one_trace_across_the_api_and_two_worker_processes(
    redis7: EmbeddedRedis, namespace: str, otlp: OtlpReceiver
) -> None:
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp.port}",
            "OTEL_BSP_SCHEDULE_DELAY": "100"}  # fmt: skip
    api_port = free_port()
    api = spawn(["api", APP, "--port", str(api_port), "--no-auth"],
                base_env(redis7, namespace, **otel))  # fmt: skip
    front = spawn(["worker", APP, "--queues", "front"],
                  base_env(redis7, namespace, OTEL_SERVICE_NAME="worker-front", **otel))  # fmt: skip
    back = spawn(["worker", APP, "--queues", "back"],
                 base_env(redis7, namespace, OTEL_SERVICE_NAME="worker-back", **otel))  # fmt: skip
    base = f"http://127.0.0.1:{api_port}"
    outputs: dict[str, str] = {}
    try:
        wait_http(f"{base}/healthz", api)
        # the caller's own trace context: the API's span joins it
        trace_id, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
        headers = {"traceparent": f"00-{trace_id}-{caller_span}-01", "X-Request-ID": "req-42"}
        with httpx.Client(base_url=base, timeout=30) as http:
            started = http.post("/v1/workflows/pipeline", json=1, headers=headers)
            assert started.status_code == 202, started.text
            wf_id = started.json()["id"]
            result = http.get(f"/v1/workflows/{wf_id}/result", params={"wait": 25})
            assert result.status_code == 200 and result.json()["result"] == 3, result.text
            assert http.get(f"/v1/workflows/{wf_id}").json()["trace_id"] == trace_id
            failed = http.post("/v1/workflows/broken", json=7).json()["id"]
            http.get(f"/v1/workflows/{failed}/result", params={"wait": 25})

        request_spans = until(lambda: otlp.named("POST /v1/workflows/{name}"), what="request")
        spans = {
            name: until(lambda n=name: otlp.of_step(n), what=f"span of {name}")
            for name in ("pipeline.fetch", "pipeline.score", "pipeline.publish", "broken.explode")
        }  # fmt: skip
        [request] = [s for s in request_spans if s["trace_id"] == trace_id]
        assert request["service"] == "conveyor-api" and request["parent"] == caller_span
        fetch, score, publish = (
            next(s for s in spans[f"pipeline.{n}"] if s["trace_id"] == trace_id)
            for n in ("fetch", "score", "publish")
        )
        # each step under the one that enqueued it, the first under the API request
        assert fetch["parent"] == request["span_id"]
        assert score["parent"] == fetch["span_id"]
        assert publish["parent"] == score["span_id"]
        # ... across two worker processes
        assert (fetch["service"], score["service"], publish["service"]) == (
            "worker-front",
            "worker-back",
            "worker-front",
        )
        # OpenTelemetry's messaging conventions for a consumer's process span, and ours
        assert (fetch["name"], score["name"]) == ("process front", "process back")
        assert fetch["kind"] == score["kind"] == 5  # SPAN_KIND_CONSUMER
        entry_id = fetch["attributes"].pop("messaging.message.id")
        assert re.fullmatch(r"\d+-\d+", entry_id), entry_id  # the task's stream entry
        assert fetch["attributes"] == {
            "messaging.system": "conveyor", "messaging.operation.name": "process",
            "messaging.operation.type": "process", "messaging.destination.name": "front",
            "messaging.consumer.group.name": "agents",
            "workflow.id": wf_id, "workflow.name": "pipeline", "step": "fetch", "attempt": 1,
            "queue": "front", "task": 1, "outcome": "completed",
        }  # fmt: skip
        assert score["attributes"]["queue"] == "back" and score["attributes"]["task"] == 2
        assert score["attributes"]["messaging.destination.name"] == "back"
        assert "error.type" not in score["attributes"]
        # an error is recorded on the failing step's span
        [explode] = [s for s in spans["broken.explode"] if s["attributes"]["workflow.id"] == failed]
        assert explode["status"] == 2  # STATUS_CODE_ERROR
        assert "exception" in explode["events"]
        assert explode["attributes"]["outcome"] == "dead"
        assert explode["attributes"]["error.type"] == "ValueError"
        assert explode["trace_id"] != trace_id  # another workflow, another trace
    finally:
        outputs = {"api": stop(api), "front": stop(front), "back": stop(back)}

    # the log lines of the workflow, from both worker processes, join on workflow_id and
    # carry the trace id and the request id
    lines = []
    for name in ("front", "back"):
        for raw in outputs[name].splitlines():
            if raw.startswith("{"):
                record = json.loads(raw)
                record["from"] = name
                lines.append(record)
    mine = [r for r in lines if r.get("workflow_id") == wf_id]
    steps = {r["message"]: r for r in mine if r["logger"] == "tests.observed"}
    assert set(steps) == {"fetching 1", "scoring 1", "publishing 2"}, mine
    assert {r["from"] for r in steps.values()} == {"front", "back"}
    for record in steps.values():
        assert record["trace_id"] == trace_id
        assert record["request_id"] == "req-42"
        assert record["workflow"] == "pipeline" and record["attempt"] == 1
        assert record["level"] == "INFO" and record["time"]
    assert steps["scoring 1"]["step"] == "score" and steps["scoring 1"]["from"] == "back"
    # the failed step's warning is joined to its workflow too
    assert any(r.get("workflow_id") == failed and r["level"] == "WARNING" for r in lines)


async def test_a_grpc_protocol_is_refused_in_one_line_and_nothing_is_exported(
    redis7: EmbeddedRedis, namespace: str, otlp: OtlpReceiver
) -> None:
    """Only the OTLP/HTTP exporter is installed: OTEL_EXPORTER_OTLP_PROTOCOL=grpc is refused
    at start, naming the variable and what is supported, and no span goes anywhere."""
    env = base_env(redis7, namespace, OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{otlp.port}",
                   OTEL_EXPORTER_OTLP_PROTOCOL="grpc", OTEL_BSP_SCHEDULE_DELAY="100")  # fmt: skip
    client = AsyncClient(redis7.url, namespace, partitions=4)
    worker = spawn(["worker", APP], env)
    try:
        await until_async(lambda: live_workers(client, want=1))  # registered the workflows
        wf = await client.start("pipeline", 1)
        assert await client.result(wf, timeout=30) == 3
    finally:
        await client.close()
        output = stop(worker)  # a traced worker flushes its spans as it stops
    refusals = [
        json.loads(line) for line in output.splitlines()
        if line.startswith("{") and "OTEL_EXPORTER_OTLP_PROTOCOL" in line
    ]  # fmt: skip
    assert len(refusals) == 1, output
    assert refusals[0]["level"] == "ERROR"
    assert "OTEL_EXPORTER_OTLP_PROTOCOL=grpc" in refusals[0]["message"]
    assert "http/protobuf" in refusals[0]["message"]
    assert otlp.spans == []


def test_an_unsupported_traces_protocol_is_refused(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The signal-specific variable wins over the general one, and is checked the same way
    (refused before any provider is installed)."""
    from conveyor.observability.tracing import setup_tracing

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json")
    with caplog.at_level("ERROR", logger="conveyor.tracing"):
        assert setup_tracing("test") is False
    [record] = caplog.records
    assert record.getMessage().startswith("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/json")


# -- units ------------------------------------------------------------------------------------


def test_the_carrier_holds_the_start_time_and_the_traceparent() -> None:
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert split(carrier(1700, tp)) == (1700, tp)
    assert split(carrier(1700)) == (1700, "")
    assert split("") == (None, "") and split("junk") == (None, "")
    assert trace_id_of(carrier(1, tp)) == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert trace_id_of(carrier(1)) is None


def test_json_log_lines_carry_the_step_context() -> None:
    import logging

    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    token = bind_step("wf1", "pipeline", "fetch", 2, "req-1")
    try:
        ContextFilter().filter(record)
    finally:
        unbind(token)
    line = json.loads(json_formatter().format(record))
    assert line["message"] == "hello you" and line["level"] == "INFO"
    assert (line["workflow_id"], line["step"], line["attempt"], line["request_id"]) == (
        "wf1",
        "fetch",
        2,
        "req-1",
    )
    assert "trace_id" not in line  # tracing is off in this process
    # outside a step, nothing is added
    other = logging.LogRecord("x", logging.INFO, __file__, 1, "bye", (), None)
    ContextFilter().filter(other)
    assert "workflow_id" not in json.loads(json_formatter().format(other))


# -- span parents in every flow (in process, with a private provider) ------------------------


@pytest.fixture
def spans() -> Iterator[Any]:
    """Tracing on in this process with an in-memory exporter, without installing a global
    TracerProvider (other tests in this process must stay untraced)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from conveyor.observability.tracing import TRACING

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    TRACING.enabled, TRACING.tracer = True, provider.get_tracer("conveyor")
    try:
        yield exporter
    finally:
        TRACING.enabled, TRACING.tracer = False, None
        provider.shutdown()


async def test_spans_follow_fan_outs_children_retries_and_signals(
    make_app: Callable[..., Any], client_for: Callable[..., Any], spans: Any
) -> None:
    from conveyor import Workflow, fan_out, start_child, wait
    from tests.conftest import drain

    attempts: dict[int, int] = {}
    child = Workflow("child")

    @child.step(start=True)
    async def grow(ctx: Any, n: int) -> int:
        return n * 10

    flow = Workflow("flow")

    @flow.step(start=True)
    async def split_up(ctx: Any, n: int) -> Any:
        return fan_out(branch, [1, 2, 3], then=join)

    @flow.step(retries=1, backoff=0.01)
    async def branch(ctx: Any, item: int) -> int:
        attempts[item] = attempts.get(item, 0) + 1
        if item == 2 and ctx.attempt == 1:
            raise RuntimeError("flaky branch")
        return item

    @flow.step
    async def join(ctx: Any, items: list[int]) -> Any:
        return start_child(child, sum(items), then=adopt)

    @flow.step
    async def adopt(ctx: Any, grown: int) -> Any:
        return wait("go", then=finish)

    @flow.step
    async def finish(ctx: Any, payload: Any) -> Any:
        return payload

    app = make_app(flow, child)
    client = client_for(app)
    wf_id = await client.start("flow", 1)
    await drain(app)
    assert await client.signal(wf_id, "go", "ok") == "delivered"
    await drain(app)
    assert await client.result(wf_id, timeout=5) == "ok"

    finished = spans.get_finished_spans()
    by_id = {s.context.span_id: s for s in finished}
    named: dict[str, list[Any]] = {}
    for s in finished:
        # a step's span is named after its queue: find it by workflow and step
        step = s.attributes.get("step")
        name = f"{s.attributes['workflow.name']}.{step}" if step else s.name
        named.setdefault(name, []).append(s)
    assert {s.name for s in finished} == {"start flow", "process default"}
    [root] = named["start flow"]  # no request span: the client roots the trace
    assert {s.context.trace_id for s in finished} == {root.context.trace_id}

    def parent(s: Any) -> Any:
        return by_id.get(s.parent.span_id) if s.parent else None

    [split_span] = named["flow.split_up"]
    assert parent(split_span) is root
    branches = named["flow.branch"]
    assert len(branches) == 4  # three items, one retried
    assert all(parent(b) is split_span for b in branches)
    [failed] = [b for b in branches if b.attributes["outcome"] == "retried"]
    assert failed.attributes["attempt"] == 1 and failed.status.status_code.name == "ERROR"
    assert [e.name for e in failed.events] == ["exception"]
    assert failed.attributes["error.type"] == "RuntimeError"
    assert failed.kind.name == "CONSUMER"
    assert failed.attributes["messaging.destination.name"] == "default"
    assert "error.type" not in split_span.attributes
    [join_span] = named["flow.join"]
    assert parent(join_span) in branches  # the branch whose return completed the group
    [grow_span] = named["child.grow"]
    assert parent(grow_span) is join_span
    assert grow_span.attributes["workflow.id"] == f"{wf_id}~{join_span.attributes['task']}"
    [adopt_span] = named["flow.adopt"]
    assert parent(adopt_span) is grow_span  # resumed by the child's end: under its last step
    [finish_span] = named["flow.finish"]
    assert parent(finish_span) is root  # resumed by a signal: under the workflow's root
    assert (await client.status(wf_id)).trace_id == format(root.context.trace_id, "032x")


def test_metrics_of_two_api_processes_are_one_scrape(redis7: EmbeddedRedis, namespace: str) -> None:
    """`conveyor api --workers 2`: whichever process answers /metrics counts every request."""
    port = free_port()
    api = spawn(["api", APP, "--port", str(port), "--no-auth", "--workers", "2"],
                base_env(redis7, namespace))  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/healthz", api)
        for i in range(40):  # new connections: uvicorn's processes share the socket
            with httpx.Client(base_url=base, timeout=10) as http:
                assert http.post("/v1/workflows/pipeline", json=i).status_code == 202
                assert http.post("/v1/workflows/nope", json=i).status_code == 404
        route = {"method": "POST", "route": "/v1/workflows/{name}"}
        # each process writes its tallies to the shared files once a second
        until(lambda: value(samples(f"{base}/metrics"), "conveyor_http_requests_total",
                                 status="404", **route) == 40, what="both processes' requests")  # fmt: skip
        for _ in range(5):  # then every answer, from either process, is the sum of both
            scrape = samples(f"{base}/metrics")
            assert value(scrape, "conveyor_http_requests_total", status="202", **route) == 40
            assert value(scrape, "conveyor_http_requests_total", status="404", **route) == 40
            assert value(scrape, "conveyor_http_request_duration_seconds_count",
                         status="202", **route) == 40  # fmt: skip
            assert value(scrape, "conveyor_workflows_started_total", workflow="pipeline") == 40
        queues = samples(f"{base}/metrics/queues")
        assert value(queues, "conveyor_queue_backlog", queue="front") == 40
    finally:
        stop(api)


def test_steps_of_an_unsampled_trace_make_no_span(spans: Any) -> None:
    """With a parent-based sampler (OpenTelemetry's default), a task whose carrier says
    "not sampled" runs without a span and passes the same carrier on."""
    from conveyor.observability.tracing import TRACING
    from conveyor.storage.records import Task

    def task(flags: str) -> Task:
        tp = f"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{flags}"
        return Task("s", b"1-0", 0, "q", "wf", "w", "s", 1, 1, b"1", None, None,
                    trace=carrier(5, tp))  # fmt: skip

    TRACING.parent_based = True
    try:
        for flags in ("00", "02"):  # 02: W3C level 2's random bit, not sampled
            unsampled = task(flags)
            assert TRACING.start_step(unsampled) is None and unsampled.carry is None
        sampled = task("01")
        span = TRACING.start_step(sampled)
        assert span is not None and sampled.carry is not None
        assert split(sampled.carry)[0] == 5 and split(sampled.carry)[1].endswith("-01")
        span.end()
    finally:
        TRACING.parent_based = False
