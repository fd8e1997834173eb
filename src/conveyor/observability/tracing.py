"""OpenTelemetry tracing, optional: ``pip install 'conveyor[otel]'``.

One workflow is one trace. Every task a workflow creates carries a *trace carrier* (its
``trace`` field, stored opaquely by the Lua scripts like the request id): the workflow's start
time in ms and the W3C ``traceparent`` of the span that caused the task. The API request's
span (or a ``start`` span of the client) is the root; each step runs in a span whose parent
is the span of the step that enqueued it, so a fan-out's branches hang under the step that
fanned out, its join under the branch that completed the group, a child workflow's steps
under the step that started it and the parent's continuation under the child's last step.
Tasks created by an outside event (a signal, a cancellation) hang under the workflow's root
span, which the workflow's hash keeps.

Tracing is on when a real TracerProvider is installed: by :func:`setup_tracing` (the
``conveyor`` commands call it; it configures OTLP export from the standard ``OTEL_*``
variables) or by the application itself. Otherwise, and when the SDK is not installed,
:data:`TRACING` is disabled and every hook is one attribute check: the carrier then holds
only the start time.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

# the carrier's wire format is storage's (re-exported: metrics.py and tests use these names)
from ..storage.carriers import carrier as carrier
from ..storage.carriers import split as split
from ..storage.carriers import trace_id_of as trace_id_of

if TYPE_CHECKING:
    from ..storage.records import Task

log = logging.getLogger("conveyor.tracing")

_PROPAGATOR = TraceContextTextMapPropagator()
INSTRUMENTATION = "conveyor"
MESSAGING_SYSTEM = "conveyor"  # messaging.system of step spans
OTLP_PROTOCOL = "http/protobuf"  # the one OTEL_EXPORTER_OTLP_PROTOCOL the `otel` extra exports


def _traceparent(span: trace.Span) -> str:
    """The W3C traceparent of ``span`` (formatted here: the propagator's inject costs 5x)."""
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return ""
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"


def _context_of(traceparent: str) -> otel_context.Context | None:
    """The parent context a carrier's traceparent names (parsed here, as above; anything
    malformed goes through the propagator, which ignores it as the spec says)."""
    parts = traceparent.split("-")
    if len(parts) != 4 or parts[0] != "00" or len(parts[1]) != 32 or len(parts[2]) != 16:
        return _PROPAGATOR.extract({"traceparent": traceparent}) if traceparent else None
    try:
        ctx = SpanContext(
            int(parts[1], 16), int(parts[2], 16), is_remote=True,
            trace_flags=TraceFlags(int(parts[3], 16)),
        )  # fmt: skip
    except ValueError:
        return None
    return trace.set_span_in_context(NonRecordingSpan(ctx)) if ctx.is_valid else None


# -- the switch ---------------------------------------------------------------------------------


class Tracing:
    """Conveyor's spans. ``enabled`` is decided when a process starts serving (see
    :meth:`refresh`): with no TracerProvider configured it stays False and nothing is traced."""

    def __init__(self) -> None:
        self.enabled = False
        self.tracer: trace.Tracer | None = None
        # the provider's sampler follows the parent's decision (OpenTelemetry's default):
        # a step of an unsampled trace then needs no span at all
        self.parent_based = False

    def refresh(self) -> bool:
        """Turn tracing on when a real TracerProvider is installed (the SDK's, or any other
        than OpenTelemetry's default proxy / no-op ones) and CONVEYOR_TRACING is not off.
        Workers, clients and the API call it as they start, so a provider the application
        installed first is used. It never turns tracing off."""
        if self.enabled:
            return True
        provider = trace.get_tracer_provider()
        from ..settings import RuntimeSettings

        off = not RuntimeSettings().tracing
        real = not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)
        if real and not off:
            self.enabled, self.tracer = True, provider.get_tracer(INSTRUMENTATION)
            self.parent_based = _parent_based(getattr(provider, "sampler", None))
        return self.enabled

    # -- producing: the root of a workflow's trace --------------------------------------------

    def start_carrier(self, started_ms: int, workflow: str) -> str:
        """The carrier of a new workflow: under the active span (the API request's), else
        under a short ``start <workflow>`` span that roots the workflow's trace."""
        if not self.enabled or self.tracer is None:
            return str(started_ms)
        span = trace.get_current_span()
        if span.get_span_context().is_valid:
            return carrier(started_ms, _traceparent(span))
        with self.tracer.start_as_current_span(
            f"start {workflow}", kind=SpanKind.PRODUCER, attributes={"workflow.name": workflow}
        ) as root:
            return carrier(started_ms, _traceparent(root))

    def child_carrier(self, started_ms: int, parent: str) -> str:
        """The carrier of a child workflow started by the step whose carrier is ``parent``."""
        return carrier(started_ms, split(parent)[1])

    # -- consuming: a span per step -----------------------------------------------------------

    def start_step(self, task: Task, group: str = "") -> trace.Span | None:
        """Start the span of one step attempt, under the span that enqueued the task; its
        carrier becomes what the step's transition passes on (``task.carry``). Named and
        attributed as OpenTelemetry's messaging conventions say of a consumer's ``process``
        span; ``group`` is the stream's consumer group."""
        if self.tracer is None:
            return None
        started, traceparent = split(task.trace)
        if self.parent_based and traceparent and not _sampled(traceparent):
            return None  # the trace was not sampled: its steps would not be either
        attributes: dict[str, str | int] = {
            "messaging.system": MESSAGING_SYSTEM,
            "messaging.operation.name": "process",
            "messaging.operation.type": "process",
            "messaging.destination.name": task.queue,
            "workflow.id": task.workflow_id,
            "workflow.name": task.workflow,
            "step": task.step,
            "attempt": task.attempt,
            "queue": task.queue,
            "task": task.task,
        }
        if group:
            attributes["messaging.consumer.group.name"] = group
        if task.entry_id:
            attributes["messaging.message.id"] = task.entry_id.decode()
        span = self.tracer.start_span(
            f"process {task.queue}",
            context=_context_of(traceparent),
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        )
        task.carry = carrier(started or 0, _traceparent(span)) if started else ""
        return span

    @staticmethod
    def attach(span: trace.Span) -> object:
        """Make ``span`` current while its step runs (the step's own spans and logs nest
        under it); returns the token for :meth:`detach`."""
        return otel_context.attach(trace.set_span_in_context(span))

    @staticmethod
    def detach(token: object) -> None:
        otel_context.detach(token)  # type: ignore[arg-type, unused-ignore]

    @staticmethod
    def end_step(span: trace.Span | None, kind: str, error: BaseException | None) -> None:
        if span is None:
            return
        span.set_attribute("outcome", kind)
        if error is not None:
            span.set_attribute("error.type", error_type(error))
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        span.end()


def error_type(error: BaseException) -> str:
    """``error.type`` of a span: the exception's fully qualified class name."""
    cls = type(error)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _sampled(traceparent: str) -> bool:
    """The sampled bit of a traceparent's flags (other bits, such as W3C level 2's random
    bit, say nothing about sampling)."""
    try:
        return bool(int(traceparent[-2:], 16) & 1)
    except ValueError:
        return True


def _parent_based(sampler: object) -> bool:
    try:
        from opentelemetry.sdk.trace.sampling import ParentBased
    except ImportError:
        return False
    return isinstance(sampler, ParentBased)


TRACING = Tracing()


def current_trace_id() -> str | None:
    """The active span's trace id as 32 hex digits (for logs), or None."""
    if not TRACING.enabled:
        return None
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


def setup_tracing(service_name: str) -> bool:
    """Configure the OpenTelemetry SDK for a ``conveyor`` process from the standard
    ``OTEL_*`` variables, when the SDK is installed and export is asked for
    (``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, or
    ``OTEL_TRACES_EXPORTER`` = ``otlp`` | ``console``). Does nothing when the application
    configured a provider itself, or with ``OTEL_SDK_DISABLED=true``. An exporter or an
    ``OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL`` it cannot honour (only ``http/protobuf``) is
    refused with one error line, and nothing is exported. Returns whether tracing is on."""
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return TRACING.refresh()
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return TRACING.refresh()  # the application set one up
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "").lower()
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if exporter_name == "none" or not (exporter_name or endpoint):
        return TRACING.refresh()
    if exporter_name not in ("", "otlp", "console"):
        log.error(
            "OTEL_TRACES_EXPORTER=%s is not supported (use otlp, console or none): tracing is off",
            exporter_name,
        )
        return TRACING.refresh()
    if exporter_name != "console":
        # only the OTLP/HTTP exporter is installed: sending to a gRPC collector would fail on
        # every batch, so another protocol is refused at start instead
        name = (
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
            if os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            else "OTEL_EXPORTER_OTLP_PROTOCOL"
        )
        protocol = os.environ.get(name, "").strip().lower()
        if protocol not in ("", OTLP_PROTOCOL):
            log.error(
                "%s=%s is not supported (only %s, OTLP over HTTP): tracing is off",
                name, protocol, OTLP_PROTOCOL,
            )  # fmt: skip
            return TRACING.refresh()
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SpanExporter,
        )
    except ImportError:
        log.warning(
            "OTEL_* tracing variables are set but the OpenTelemetry SDK is not installed: "
            "pip install 'conveyor[otel]'"
        )
        return TRACING.refresh()
    exporter: SpanExporter
    if exporter_name == "console":
        exporter = ConsoleSpanExporter()
    else:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            log.warning("the OTLP exporter is not installed: pip install 'conveyor[otel]'")
            return TRACING.refresh()
        exporter = OTLPSpanExporter()  # endpoint, headers, timeout: from OTEL_EXPORTER_OTLP_*
    resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if not os.environ.get("OTEL_SERVICE_NAME") and "service.name=" not in os.environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    ):
        resource = resource.merge(Resource({"service.name": service_name}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return TRACING.refresh()


def shutdown_tracing() -> None:
    """Flush spans still buffered (a worker process about to exit)."""
    provider = trace.get_tracer_provider()
    shutdown = getattr(provider, "shutdown", None)
    if TRACING.enabled and callable(shutdown):
        shutdown()
