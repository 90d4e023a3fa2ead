"""The service's Kafka topics: provisioned when missing, verified when present.

Brokers in production run with `auto.create.topics.enable=false` (ours do too), so a façade that
assumed its topics exist would publish into nothing: its producer retries UNKNOWN_TOPIC_OR_PART until
the delivery timeout while change capture stalls. At start (and with `ledger kafka init`) the service
therefore creates each missing topic with the partition count, replication factor and
`min.insync.replicas` from settings, and refuses to start when a topic exists with another partition
count (keys would move to other partitions: per-account order breaks) or with fewer replicas than the
setting (acknowledged entries could be lost with one broker).

`TopicHealth` answers "can records be delivered": every topic present, and no delivery failed since
the last success. It is a dependency's health (readiness detail and a metric), not a reason to pull a
façade that can still serve writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

if TYPE_CHECKING:
    from confluent_kafka.admin import ClusterMetadata  # type: ignore[attr-defined]

from facade.settings import KafkaSettings

__all__ = [
    "KafkaUnreachableError",
    "TopicError",
    "TopicHealth",
    "TopicRole",
    "TopicSpec",
    "ensure_topics",
    "provision_in_background",
    "topic_specs",
]

ADMIN_TIMEOUT_SECONDS = 30.0
"""Bound on each admin request (metadata, create)."""
KAFKA_START_TIMEOUT_SECONDS = 5.0
"""How long start-up waits for cluster metadata before serving without Kafka (provisioning later)."""

TOPICS_MAX = 8
"""The service owns five topics; a bound so a mis-set list can never fan out unboundedly."""


class TopicRole(enum.Enum):
    ENTRIES = "entries"
    COMMANDS = "commands"
    RESULTS = "results"
    DLQ = "dlq"
    CHECKPOINTS = "checkpoints"


class TopicError(RuntimeError):
    """A topic is missing and could not be created, or exists with settings that break the guarantees."""


class KafkaUnreachableError(TopicError):
    """No cluster metadata within the bound: nothing is known about the topics yet (retry later)."""


@dataclass(frozen=True, slots=True)
class TopicSpec:
    role: TopicRole
    name: str
    partitions: int
    replication_factor: int
    config: Mapping[str, str]


def topic_specs(settings: KafkaSettings) -> list[TopicSpec]:
    """Every topic the service reads or writes, with what it needs of each."""
    base = {"min.insync.replicas": str(settings.topic_min_insync_replicas)}
    # Entries are the system of record's change stream: append-only (delete policy, no compaction:
    # a key is an account, and every entry of it matters), retained for the configured time.
    entries = {**base, "cleanup.policy": "delete", "retention.ms": str(settings.entries_retention_ms)}
    names = {
        TopicRole.ENTRIES: (settings.entries_topic, entries),
        TopicRole.COMMANDS: (settings.commands_topic, base),
        TopicRole.RESULTS: (settings.results_topic, base),
        TopicRole.DLQ: (settings.commands_dlq_topic, base),
        TopicRole.CHECKPOINTS: (settings.checkpoints_topic, {**base, "cleanup.policy": "delete", "retention.ms": "-1"}),
    }
    specs = [
        TopicSpec(role, name, settings.topic_partitions, settings.topic_replication_factor, config)
        for role, (name, config) in names.items()
    ]
    assert len(specs) <= TOPICS_MAX
    assert len({spec.name for spec in specs}) == len(specs), "two roles share one topic name"
    return specs


def _admin(settings: KafkaSettings) -> AdminClient:
    return AdminClient({"bootstrap.servers": settings.bootstrap_servers, "client.id": f"{settings.client_id}-admin"})


def _metadata(admin: AdminClient, timeout_seconds: float = ADMIN_TIMEOUT_SECONDS) -> ClusterMetadata:
    try:
        return admin.list_topics(timeout=timeout_seconds)
    except KafkaException as error:
        raise KafkaUnreachableError(f"Kafka cluster metadata unavailable: {error.args[0]}") from error


def ensure_topics(
    settings: KafkaSettings, specs: Sequence[TopicSpec] | None = None, *, timeout_seconds: float = ADMIN_TIMEOUT_SECONDS
) -> list[str]:
    """Creates the missing topics, verifies the present ones; returns the names it created.

    Blocking (admin requests): call it off the event loop. Raises `TopicError` with every problem found.
    """
    assert settings.bootstrap_servers, "Kafka is not configured"
    specs = list(specs if specs is not None else topic_specs(settings))
    assert 0 < len(specs) <= TOPICS_MAX
    admin = _admin(settings)
    metadata = _metadata(admin, timeout_seconds)
    brokers = len(metadata.brokers)
    problems: list[str] = []
    missing: list[TopicSpec] = []
    for spec in specs:
        topic = metadata.topics.get(spec.name)
        if topic is None or topic.error is not None:
            missing.append(spec)
            continue
        partitions = len(topic.partitions)
        if partitions != spec.partitions:
            problems.append(
                f"topic {spec.name} ({spec.role.value}) has {partitions} partitions, settings say {spec.partitions}: "
                "a different count moves keys to other partitions and breaks per-account order "
                "(set LEDGER_KAFKA__TOPIC_PARTITIONS to match, or recreate the topic)"
            )
        replicas = min((len(p.replicas) for p in topic.partitions.values()), default=0)
        if replicas < spec.replication_factor:
            problems.append(
                f"topic {spec.name} ({spec.role.value}) has replication factor {replicas}, settings require "
                f"{spec.replication_factor} (reassign its partitions, or lower LEDGER_KAFKA__TOPIC_REPLICATION_FACTOR)"
            )
    if missing and brokers < max(spec.replication_factor for spec in missing):
        problems.append(
            f"cannot create {', '.join(s.name for s in missing)}: replication factor "
            f"{max(s.replication_factor for s in missing)} needs that many brokers, the cluster has {brokers}"
        )
    if problems:
        raise TopicError("; ".join(problems))
    created: list[str] = []
    if missing:
        futures = admin.create_topics(
            [NewTopic(s.name, num_partitions=s.partitions, replication_factor=s.replication_factor,
                      config=dict(s.config)) for s in missing],
            operation_timeout=ADMIN_TIMEOUT_SECONDS,
        )  # fmt: skip
        for name, future in futures.items():
            try:
                future.result(timeout=ADMIN_TIMEOUT_SECONDS)
                created.append(name)
            except KafkaException as error:
                # Another façade may have created it in the meantime: that is the outcome we wanted,
                # and the verification below still checks what it created.
                if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    problems.append(f"creating topic {name}: {error.args[0].str()}")
        if problems:
            raise TopicError("; ".join(problems))
        _wait_visible(admin, [s.name for s in missing])
    assert all(name in {s.name for s in specs} for name in created)
    return created


def _wait_visible(admin: AdminClient, names: Sequence[str]) -> None:
    """Until cluster metadata lists every new topic with leaders (bounded): a producer that starts
    before that sees UNKNOWN_TOPIC_OR_PART for its first records."""
    deadline = time.monotonic() + ADMIN_TIMEOUT_SECONDS
    while True:
        topics = _metadata(admin).topics
        if all(
            name in topics
            and topics[name].error is None
            and all(p.leader >= 0 for p in topics[name].partitions.values())
            for name in names
        ):
            return
        if time.monotonic() > deadline:
            raise TopicError(f"topics {', '.join(names)} created but not visible within {ADMIN_TIMEOUT_SECONDS} s")
        time.sleep(0.1)


class TopicHealth:
    """Whether the service's records can be delivered: topics present, last delivery not failed.

    The entries publisher reports each batch's outcome here; the readiness check asks `problem()`.
    """

    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings
        self._names = [spec.name for spec in topic_specs(settings)]
        self._admin = _admin(settings)
        self.delivery_error: str | None = None
        self.provisioning_error: str | None = None
        """Set when topics provisioned after start turned out mis-set (a start-time check refuses instead)."""

    def delivered(self) -> None:
        self.delivery_error = None

    def failed(self, reason: str) -> None:
        self.delivery_error = reason

    def problem(self, timeout_seconds: float) -> str | None:
        """None when healthy, else the reason. Blocking (one metadata request)."""
        try:
            metadata = self._admin.list_topics(timeout=timeout_seconds)
        except KafkaException as error:
            return f"cluster metadata unavailable: {error.args[0]}"
        if not metadata.brokers:
            return "no brokers in the cluster metadata"
        missing = [n for n in self._names if n not in metadata.topics or metadata.topics[n].error is not None]
        if self.provisioning_error is not None:
            return self.provisioning_error
        if missing:
            return f"topics missing: {', '.join(missing)}"
        return None if self.delivery_error is None else f"records undeliverable: {self.delivery_error}"


PROVISION_RETRY_SECONDS_MIN = 1.0
PROVISION_RETRY_SECONDS_MAX = 30.0


async def provision_in_background(settings: KafkaSettings, stop: asyncio.Event, health: TopicHealth) -> None:
    """Kafka was unreachable at start: the façade serves writes anyway (Kafka is a dependency, not the
    system of record), and the topics are provisioned once a broker answers. A mismatch found then is
    reported by the health check (and logged) rather than stopping a running façade."""
    delay = PROVISION_RETRY_SECONDS_MIN
    while not stop.is_set():
        try:
            # A short metadata bound per attempt: stopping the service waits for the attempt under way.
            await asyncio.to_thread(ensure_topics, settings, timeout_seconds=KAFKA_START_TIMEOUT_SECONDS)
            health.provisioning_error = None
            return
        except KafkaUnreachableError:
            pass
        except TopicError as error:
            health.provisioning_error = str(error)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, PROVISION_RETRY_SECONDS_MAX)
