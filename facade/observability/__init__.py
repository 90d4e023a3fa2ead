"""Observability: Prometheus metrics, structured JSON logs, OpenTelemetry traces. One place each."""
