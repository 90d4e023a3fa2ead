"""Every Prometheus metric the service exports, defined once.

Latency histograms use buckets fine enough below 100 ms to read p95/p99 against the < 100 ms
write-latency requirement (and the < 25 ms goal). Label values are bounded sets (RPC names, status
names, topic names): never ids or free text.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Gauge, Histogram

from facade.observability.forwarded import ForwardedHistogram

LATENCY_BUCKETS_SECONDS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.035, 0.05,
    0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 4096, 8189)

# Edges (gRPC, HTTP, Kafka ingestion).
request_duration_seconds = Histogram(
    "ledger_request_duration_seconds",
    "Request latency by edge, method and gRPC status code.",
    ["edge", "method", "code"],
    buckets=LATENCY_BUCKETS_SECONDS,
    registry=None,  # Exported by request_durations_exported, with the front processes' calls.
)
request_durations_exported = ForwardedHistogram(
    request_duration_seconds, LATENCY_BUCKETS_SECONDS, ("edge", "method", "code")
)
"""The request histogram on /metrics: this process's calls plus the front processes' (facade.fronts)."""
REGISTRY.register(request_durations_exported)
transactions_total = Counter(
    "ledger_transactions_total",
    "Domain transactions by outcome: created, deduplicated (idempotent replay), rejected.",
    ["outcome", "reason"],
)
deduplicated_requests_total = Counter(
    "ledger_deduplicated_requests_total",
    "Transactions answered from an earlier identical request (idempotency key replay).",
)
retries_total = Counter("ledger_retries_total", "Retries performed, by component.", ["component"])
backpressure_rejections_total = Counter(
    "ledger_backpressure_rejections_total",
    "Requests refused because the write queue was full (RESOURCE_EXHAUSTED / consumer paused).",
    ["edge"],
)
write_queue_depth = Gauge("ledger_write_queue_depth", "Transfers waiting for the group-commit batcher.")
write_throughput_transfers_per_second = Gauge(
    "ledger_write_throughput_transfers_per_second",
    "The group-commit batcher's recently measured commit rate (the basis of admission control).",
)
event_loop_lag_seconds = Gauge(
    "ledger_event_loop_lag_seconds", "Moving average of how late a short timer fires on the service's event loop."
)
write_expected_wait_seconds = Gauge(
    "ledger_write_expected_wait_seconds", "Admission's estimate of how long a new write would take to be answered."
)
write_limit = Gauge(
    "ledger_write_limit", "Admission's adaptive limit on single-transaction writes in progress (facade.write_limit)."
)
retry_pace_seconds = Gauge("ledger_retry_pace_seconds", "The least retry hint a refused write gets now (RetryPacer).")
dropped_transactions_total = Counter(
    "ledger_dropped_transactions_total",
    "Queued transactions dropped before reaching the engine: their caller gave up (deadline, cancelled).",
    ["cause"],
)
dependency_up = Gauge(
    "ledger_dependency_up",
    "1 when the dependency answered its last readiness/health probe, else 0 (engine, metadata, kafka, ...).",
    ["dependency"],
)

# Engine.
engine_batch_size = Histogram(
    "ledger_engine_batch_size", "Events per engine create call.", ["operation"], buckets=BATCH_SIZE_BUCKETS
)
engine_batch_duration_seconds = Histogram(
    "ledger_engine_batch_duration_seconds",
    "Engine create call latency (durable), by operation.",
    ["operation"],
    buckets=LATENCY_BUCKETS_SECONDS,
)
engine_results_total = Counter(
    "ledger_engine_results_total", "Engine create results by status name.", ["operation", "status"]
)
journal_fsync_seconds = Histogram(
    "ledger_journal_fsync_seconds",
    "Embedded engine: write + fdatasync time per journal append.",
    buckets=LATENCY_BUCKETS_SECONDS,
)

# Kafka and change capture.
kafka_consumer_lag = Gauge(
    "ledger_kafka_consumer_lag", "Messages behind the partition high watermark.", ["topic", "partition"]
)
kafka_producer_errors_total = Counter(
    "ledger_kafka_producer_errors_total", "Records Kafka failed to acknowledge.", ["topic"]
)
change_capture_lag_seconds = Gauge(
    "ledger_change_capture_lag_seconds", "Now minus the engine timestamp of the last change published.", ["sink"]
)
change_capture_published_total = Counter(
    "ledger_change_capture_published_total", "Changes published by change capture.", ["sink"]
)
projection_lag_seconds = Gauge(
    "ledger_projection_lag_seconds", "Now minus the engine timestamp of the last change projected."
)

# Consistency between engine, metadata store, checkpoints and read model (facade.consistency).
consistency_ok = Gauge(
    "ledger_consistency_ok",
    "1 while the engine, the metadata store and the checkpoints agree; 0 once an inconsistency is found.",
)
consistency_rounds_total = Counter(
    "ledger_consistency_rounds_total",
    "Continuous consistency check rounds by result: ok, inconsistent, error (could not check).",
    ["result"],
)

# Audit evidence: signed checkpoints and the background self-audit (facade.audit).
audit_checkpoints_total = Counter("ledger_audit_checkpoints_total", "Signed checkpoints sealed by this process.")
audit_last_verified_timestamp = Gauge(
    "ledger_audit_last_verified_timestamp",
    "Engine time (Unix seconds) of the last checkpoint the self-audit recomputed from the read model and found intact.",
)
audit_failures_total = Counter(
    "ledger_audit_failures_total",
    "Self-audit failures by check: root, chain, ledger_sums, balances, error (could not check).",
    ["check"],
)
