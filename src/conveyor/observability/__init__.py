"""Observability: Prometheus metrics, the queue exporter, OpenTelemetry tracing and the
live terminal view (docs/observability.md)."""
