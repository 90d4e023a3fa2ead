"""Kafka ingestion: `ledger.commands.v1` → the same mapping and group-commit path as the gRPC API.

Each record's value is a `ledger.v1.PostTransactionRequest` (the gRPC schema), protobuf or proto3 JSON
by its content-type header (ledger_events/records.py). Per poll:
1. decode; a malformed record is answered MALFORMED_COMMAND;
2. post every decoded command in one `LedgerService.post_transactions` call per client (one durable
   group commit for the lot);
3. in ONE Kafka transaction: one `ledger.v1.TransactionResult` per command to `ledger.results.v1`
   (headers: correlation id, idempotency key, status, reason), rejected and malformed commands to the
   DLQ (`ledger.commands.dlq.v1`, with `reason` headers), and the consumed offsets
   (`send_offsets_to_transaction`); then commit the transaction.
Results and offsets become visible together or not at all: a consumer of results with
`isolation.level=read_committed` sees exactly one result per command, whatever crashes. A crash (or
any failure) before the commit aborts the transaction — at the latest when this ingestor's
`transactional.id` starts again, which fences the old producer — and the records are consumed again;
their idempotency keys make the second write a no-op that returns the original outcome.

Backpressure: when the write queue is full the consumer pauses its partitions, waits the retry hint,
resumes and retries the same records: nothing is dropped, nothing spins.

Identity: a command acts for the client named in its `ledger-client-id` header (the configured
`ingest_client_id` when absent). The ingestion principal may act only for the clients listed in
`ingest_acts_for` (its own always), with `ingest_scopes`; ownership and scopes are then checked exactly
as for a gRPC caller. A command for any other client is answered PERMISSION_DENIED and dead-lettered.
"""

from __future__ import annotations

import asyncio
import enum
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link

from facade.api.gen.ledger.v1 import ledger_pb2
from facade.auth import METHOD_SCOPES, Principal
from facade.background import run_until_stopped
from facade.domain.errors import ErrorKind, LedgerError
from facade.kafka.producing import Record, produce
from facade.kafka.registry import value_serializer
from facade.observability import metrics
from facade.observability.logs import get_logger
from facade.observability.tracing import extract_headers, inject_headers, tracer
from facade.operations import ledger as ops
from facade.operations.convert import item_result
from facade.service import LedgerService
from facade.settings import KafkaSettings
from ledger_events.records import (
    CONTENT_TYPE_HEADER,
    RecordDecodeError,
    ValueEncoding,
    cloud_event_headers,
    decode_value,
    header_value,
)

POLL_RECORDS_MAX = 1000
POLL_TIMEOUT_SECONDS = 0.05
PRODUCE_FLUSH_TIMEOUT_SECONDS = 30.0
LAG_INTERVAL_SECONDS = 1.0
REWIND_TIMEOUT_SECONDS = 10.0
INGEST_SPAN_LINKS_MAX = 128

log = get_logger("ledger.kafka_ingest")


class KafkaResult(enum.Enum):
    """What a command refused with a LedgerError of each kind becomes (the Kafka edge's error table)."""

    RETRY = "RETRY"
    """Nothing was written (the write queue was full): pause the partitions, retry after retry_after_ms."""
    REJECTED = "REJECTED"
    """Answered with a result whose `status` header is REJECTED (and its reason), and dead-lettered."""


KAFKA_RESULT: dict[ErrorKind, KafkaResult] = {
    **dict.fromkeys(ErrorKind, KafkaResult.REJECTED),
    ErrorKind.EXHAUSTED: KafkaResult.RETRY,
}


class IngestError(RuntimeError):
    """Kafka did not acknowledge results/DLQ records: offsets are not committed, records redeliver."""


@dataclass(frozen=True, slots=True)
class _Command:
    message: Message
    request: ledger_pb2.PostTransactionRequest


def _headers(message: Message) -> list[tuple[str, str | bytes | None]]:
    headers = message.headers()
    if headers is None:
        return []
    return list(headers.items()) if isinstance(headers, dict) else list(headers)


def _is_partition_eof(message: Message) -> bool:
    error = message.error()
    return error is not None and error.code() == KafkaError._PARTITION_EOF


def _ingest_parentage(commands: Sequence[_Command]) -> tuple[otel_context.Context, list[Link]]:
    """One span per consumed batch: a child of the first command's producer span (its traceparent
    header), linking every traced command in the batch."""
    contexts = [extract_headers(_headers(c.message)) for c in commands[:INGEST_SPAN_LINKS_MAX]]
    spans = [trace.get_current_span(context).get_span_context() for context in contexts]
    return contexts[0], [Link(span) for span in spans if span.is_valid]


CLIENT_HEADER = "ledger-client-id"
"""The record header naming the client a command acts for."""
ACTS_FOR_ANY = "*"
POST_SCOPE = METHOD_SCOPES["/ledger.v1.Ledger/PostTransactions"]
"""A command is a PostTransactions call: it needs what that RPC needs."""
TRANSACTION_TIMEOUT_SECONDS = 30.0
"""Bound on each transactional request (init, send offsets, commit, abort)."""


def transactional_id(settings: KafkaSettings) -> str:
    return settings.ingest_transactional_id or f"{settings.client_id}-ingest-{socket.gethostname()}"


class CommandIngestor:
    def __init__(self, service: LedgerService, settings: KafkaSettings, client_id: str = "kafka-ingest") -> None:
        assert settings.bootstrap_servers, "Kafka is not configured"
        self._service = service
        self._settings = settings
        self._client_default = client_id
        self._acts_for = frozenset({client_id, *settings.ingest_acts_for})
        self._scopes = frozenset(settings.ingest_scopes)
        self._encoding = ValueEncoding(settings.results_encoding)
        self._serialize = value_serializer(
            settings, message_type=ledger_pb2.TransactionResult, topic=settings.results_topic, encoding=self._encoding
        )
        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.bootstrap_servers,
                "group.id": settings.consumer_group,
                "client.id": f"{settings.client_id}-ingest",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                # Static membership, one stable identity per façade (as its transactional.id): a
                # restarted façade takes its partitions back at once instead of waiting out the
                # session timeout of the member it was before the crash.
                "group.instance.id": transactional_id(settings),
            }
        )
        self._producer = self._new_producer()
        self._transactions_ready = False
        self._consumer.subscribe([settings.commands_topic])
        self._lag_recorded_at = 0.0
        self._results_context: otel_context.Context | None = None

    def _new_producer(self) -> Producer:
        return Producer(
            {
                "bootstrap.servers": self._settings.bootstrap_servers,
                "client.id": f"{self._settings.client_id}-results",
                "transactional.id": transactional_id(self._settings),
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 2,
                "transaction.timeout.ms": int(TRANSACTION_TIMEOUT_SECONDS * 2 * 1000),
            }
        )

    def _principal(self, client_id: str) -> Principal | None:
        """The principal a command acts as, or None when the ingestion principal may not act for it or
        lacks the scope a gRPC caller of PostTransactions needs."""
        if POST_SCOPE not in self._scopes:
            return None
        if client_id in self._acts_for or ACTS_FOR_ANY in self._acts_for:
            return Principal(client_id, self._scopes)
        return None

    async def run(self, stop: asyncio.Event) -> None:
        """Ingests until `stop` is set. A failed round (transaction not committed, broker trouble) is
        retried with backoff from the last committed offsets: its commands are consumed again and,
        being idempotent, post once; the aborted round's results were never visible."""

        async def round_() -> float:
            await self.run_once()
            return 0.0

        async def rewind() -> None:
            await asyncio.to_thread(self._rewind)

        await run_until_stopped(stop, round_, component="kafka_ingest", recover=rewind)

    def _rewind(self) -> None:
        """Seeks every assigned partition back to its committed offset (the earliest when none)."""
        assignment = self._consumer.assignment()
        if not assignment:
            return
        for partition in self._consumer.committed(assignment, timeout=REWIND_TIMEOUT_SECONDS):
            offset = partition.offset if partition.offset >= 0 else OFFSET_BEGINNING
            self._consumer.seek(TopicPartition(partition.topic, partition.partition, offset))

    async def run_once(self) -> int:
        """Processes one poll's records; returns how many commands it handled."""
        if not self._transactions_ready:
            await asyncio.to_thread(self._init_transactions)
        messages: list[Message] = await asyncio.to_thread(
            self._consumer.consume, POLL_RECORDS_MAX, POLL_TIMEOUT_SECONDS
        )
        messages = [m for m in messages if not _is_partition_eof(m)]
        if not messages:
            self._record_lag()
            return 0
        assert len(messages) <= POLL_RECORDS_MAX
        answered: list[tuple[_Command, ledger_pb2.TransactionResult]] = []
        by_client: dict[str, list[_Command]] = {}
        for message in messages:
            if message.error():
                raise IngestError(f"consume failed: {message.error()}")
            try:
                request = decode_value(
                    ledger_pb2.PostTransactionRequest,
                    message.value(),
                    header_value(message.headers(), CONTENT_TYPE_HEADER),
                )
            except RecordDecodeError as error:
                malformed = LedgerError(ErrorKind.INVALID, "MALFORMED_COMMAND", str(error))
                answered.append((_Command(message, ledger_pb2.PostTransactionRequest()), item_result(malformed)))
                continue
            client_id = header_value(message.headers(), CLIENT_HEADER) or self._client_default
            if self._principal(client_id) is None:
                denied = LedgerError(
                    ErrorKind.PERMISSION_DENIED,
                    "PERMISSION_DENIED",
                    f"the ingestion principal may not act for client {client_id!r} (or lacks scope {POST_SCOPE})",
                )
                answered.append((_Command(message, request), item_result(denied)))
                continue
            by_client.setdefault(client_id, []).append(_Command(message, request))
        for client_id, commands in by_client.items():
            results = await self._post_with_backpressure(client_id, commands)
            answered.extend(zip(commands, results, strict=True))
        await asyncio.to_thread(self._publish_transaction, answered)
        self._record_lag()
        return len(messages)

    def _init_transactions(self) -> None:
        """Registers the transactional.id: aborts whatever a previous instance with the same id left open
        (a crash mid-round), and fences that instance's producer."""
        self._producer.init_transactions(TRANSACTION_TIMEOUT_SECONDS)
        self._transactions_ready = True

    def _publish_transaction(self, answered: Sequence[tuple[_Command, ledger_pb2.TransactionResult]]) -> None:
        """Results, dead letters and consumed offsets in one Kafka transaction."""
        errors: list[str] = []
        self._producer.begin_transaction()
        try:
            for command, result in answered:
                self._publish_result(command, result, errors)
            self._commit()
        except Exception as error:
            self._abort()
            if isinstance(error, KafkaException):
                raise IngestError(f"results transaction failed: {error.args[0]}") from error
            raise
        if errors:  # commit_transaction raises when a record failed; this is the belt to its braces.
            raise AssertionError(f"transaction committed with failed records: {errors[:3]}")

    def _commit(self) -> None:
        """Adds the consumed offsets to the open transaction and commits it: results, dead letters and
        offsets become visible together."""
        positions = [p for p in self._consumer.position(self._consumer.assignment()) if p.offset >= 0]
        self._producer.send_offsets_to_transaction(
            positions, self._consumer.consumer_group_metadata(), TRANSACTION_TIMEOUT_SECONDS
        )
        self._producer.commit_transaction(TRANSACTION_TIMEOUT_SECONDS)

    def _abort(self) -> None:
        """Aborts the open transaction; a producer in a fatal state (fenced, say) is replaced."""
        try:
            self._producer.abort_transaction(TRANSACTION_TIMEOUT_SECONDS)
        except KafkaException as error:
            log.warning("kafka ingest abort failed; new producer", error=str(error.args[0]))
            self._producer = self._new_producer()
            self._transactions_ready = False
        metrics.kafka_producer_errors_total.labels(self._settings.results_topic).inc()

    def _record_lag(self) -> None:
        """Consumer lag per assigned partition: high watermark minus position. Both are local reads
        (the watermark librdkafka cached from its last fetch), at most once per LAG_INTERVAL_SECONDS."""
        now = time.monotonic()
        if now - self._lag_recorded_at < LAG_INTERVAL_SECONDS:
            return
        self._lag_recorded_at = now
        for partition in self._consumer.position(self._consumer.assignment()):
            _low, high = self._consumer.get_watermark_offsets(partition, cached=True)
            if high < 0 or partition.offset < 0:
                continue  # Nothing fetched yet: unknown, not zero.
            metrics.kafka_consumer_lag.labels(partition.topic, str(partition.partition)).set(
                max(0, high - partition.offset)
            )

    async def _post_with_backpressure(
        self, client_id: str, commands: list[_Command]
    ) -> Sequence[ledger_pb2.TransactionResult]:
        principal = self._principal(client_id)
        assert principal is not None and commands
        while True:
            parent, links = _ingest_parentage(commands)
            with tracer().start_as_current_span("kafka.ingest", context=parent, links=links) as span:
                span.set_attribute("messaging.batch.message_count", len(commands))
                self._results_context = trace.set_span_in_context(span)
                try:
                    # The PostTransactions operation, as over gRPC and HTTP: one result per command.
                    batch = ledger_pb2.PostTransactionsRequest(transactions=[c.request for c in commands])
                    response = await ops.post_transactions(self._service, principal, batch, None)
                    return response.results
                except LedgerError as error:
                    if KAFKA_RESULT[error.kind] != KafkaResult.RETRY:
                        raise
                    retry_after = int(error.metadata.get("retry_after_ms", "50")) / 1000
            metrics.backpressure_rejections_total.labels("kafka").inc()
            metrics.retries_total.labels("kafka_ingest").inc()
            assignment = self._consumer.assignment()
            self._consumer.pause(assignment)
            await asyncio.sleep(retry_after)
            self._consumer.resume(assignment)

    def _publish_result(self, command: _Command, value: ledger_pb2.TransactionResult, errors: list[str]) -> None:
        request = command.request
        refused = value.HasField("error")
        status = KafkaResult.REJECTED.value if refused else "POSTED"
        reason = value.error.reason if refused else ""
        headers: list[tuple[str, str | bytes | None]] = [
            ("idempotency_key", request.idempotency_key.encode()),
            ("correlation_id", request.metadata.correlation_id.encode()),
            ("status", status.encode()),
            ("reason", reason.encode()),
            *inject_headers(self._results_context),  # Results continue the trace of the batch that wrote them.
        ]
        where = f"{command.message.topic()}/{command.message.partition()}/{command.message.offset()}"
        headers += cloud_event_headers(
            value, event_id=where, time_ns=time.time_ns(), source=self._settings.client_id, encoding=self._encoding
        )
        self._produce(self._settings.results_topic, command.message.key(), self._serialize(value), headers, errors)
        if refused:
            self._dead_letter(command.message, value.error.reason, value.error.message, errors)

    def _dead_letter(self, message: Message, reason: str, detail: str, errors: list[str]) -> None:
        headers: list[tuple[str, str | bytes | None]] = [
            ("reason", reason.encode()),
            ("reason_detail", detail.encode()),
            ("source_topic", (message.topic() or "").encode()),
            ("source_partition", str(message.partition()).encode()),
            ("source_offset", str(message.offset()).encode()),
        ]
        self._produce(self._settings.commands_dlq_topic, message.key(), message.value() or b"", headers, errors)

    def _produce(
        self,
        topic: str,
        key: bytes | str | None,
        value: bytes,
        headers: list[tuple[str, str | bytes | None]],
        errors: list[str],
    ) -> None:
        def on_delivery(error: KafkaError | None, _message: Message) -> None:
            if error is not None:
                errors.append(f"{topic}: {error}")

        produce(self._producer, Record(topic, key, value, headers), on_delivery)

    def close(self) -> None:
        self._producer.flush(PRODUCE_FLUSH_TIMEOUT_SECONDS)
        self._consumer.close()
