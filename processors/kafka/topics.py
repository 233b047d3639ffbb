"""The six topics as frozen specs, and their idempotent creation and checks."""

from __future__ import annotations

from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from processors.errors import BrokerError
from processors.kafka import config
from processors.settings import KafkaSettings, TopicSettings

TopicRole = str  # "raw" | "events" | "state" | "dedup" | "dlq"
ROLES: tuple[TopicRole, ...] = ("raw", "events", "state", "dedup", "dlq", "expected")


@dataclass(frozen=True)
class TopicSpec:
    role: TopicRole
    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str] = field(default_factory=dict)


def specs(t: TopicSettings) -> tuple[TopicSpec, ...]:
    compacted = {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"}
    isr = {"min.insync.replicas": str(t.min_insync_replicas)} if t.min_insync_replicas else {}

    def spec(role: TopicRole, config: dict[str, str]) -> TopicSpec:
        return TopicSpec(role, getattr(t, role), t.partitions, t.replication_factor, config | isr)

    return (
        spec("raw", {"cleanup.policy": "delete", "retention.ms": str(t.raw_retention_ms)}),
        spec("events", {"cleanup.policy": "delete", "retention.ms": str(t.events_retention_ms)}),
        spec("state", compacted),
        spec("dedup", compacted),
        spec("dlq", {"cleanup.policy": "delete", "retention.ms": str(t.dlq_retention_ms)}),
        spec("expected", compacted),
    )


def create(admin: AdminClient, wanted: tuple[TopicSpec, ...], timeout: float = 15.0) -> dict[str, str]:
    """Create the topics that are missing; returns name -> "created" | "exists". Idempotent."""
    futures = admin.create_topics(
        [NewTopic(s.name, s.partitions, s.replication_factor, config=s.config) for s in wanted],
        request_timeout=timeout,
    )
    outcome: dict[str, str] = {}
    for name, future in futures.items():
        try:
            future.result()
            outcome[name] = "created"
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise BrokerError(f"could not create topic {name}: {exc.args[0].str()}") from exc
            outcome[name] = "exists"
    return outcome


def partition_counts(admin: AdminClient, timeout: float = 5.0) -> dict[str, int]:
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise BrokerError(
            f"Kafka did not answer within {timeout:g}s: {exc.args[0].str()} "
            "(check kafka.bootstrap_servers / KAFKA_BOOTSTRAP_SERVERS)"
        ) from exc
    return {name: len(topic.partitions) for name, topic in metadata.topics.items() if not topic.error}


def missing(admin: AdminClient, wanted: tuple[TopicSpec, ...], timeout: float = 5.0) -> list[str]:
    present = partition_counts(admin, timeout)
    return [s.name for s in wanted if s.name not in present]


def create_all(kafka: KafkaSettings, topics: TopicSettings) -> dict[str, str]:
    return create(AdminClient(config.admin(kafka)), specs(topics))
