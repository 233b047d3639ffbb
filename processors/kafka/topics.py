"""The six topics as frozen specs, and their idempotent creation and checks."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import AdminClient, ClusterMetadata, NewTopic  # type: ignore[attr-defined]

from processors import logs
from processors.errors import BrokerError, ConfigError
from processors.kafka import config
from processors.settings import KafkaSettings, TopicSettings

log = logs.get("kycstream.topics")

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
    isr = {"min.insync.replicas": str(t.insync_replicas)} if t.insync_replicas else {}

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


def fit(wanted: tuple[TopicSpec, ...], brokers: int, allow_single_replica: bool = False) -> tuple[TopicSpec, ...]:
    """The specs as a cluster of `brokers` can hold them: one replica on a single broker (the embedded
    broker, a laptop's Kafka); refused when the cluster has too few brokers, or when one replica was
    asked for on a cluster that could keep more (unless `allow_single_replica`)."""
    if brokers == 1:
        return tuple(
            dataclasses.replace(
                s, replication_factor=1, config={k: v for k, v in s.config.items() if k != "min.insync.replicas"}
            )
            for s in wanted
        )
    for s in wanted:
        if s.replication_factor > brokers:
            raise ConfigError(
                f"topic {s.name}: topics.replication_factor is {s.replication_factor} but the cluster has "
                f"{brokers} brokers: set it to at most {brokers} (and topics.min_insync_replicas below it)"
            )
        if s.replication_factor == 1 and not allow_single_replica:
            raise ConfigError(
                f"topic {s.name}: topics.replication_factor is 1 on a cluster of {brokers} brokers: losing one "
                "broker would lose deliveries already answered 200. Set it to 3 (the default), or pass "
                "--allow-single-replica to accept that"
            )
    return wanted


def create(
    admin: AdminClient, wanted: tuple[TopicSpec, ...], timeout: float = 15.0, allow_single_replica: bool = False
) -> dict[str, str]:
    """Create the topics that are missing (as `fit` for the cluster's brokers); returns name ->
    "created" | "exists". Idempotent."""
    brokers = broker_count(admin, timeout)
    fitted = fit(wanted, brokers, allow_single_replica)
    if brokers == 1 and any(s.replication_factor > 1 for s in wanted):
        log.warning("single_broker_cluster", replication_factor=1, configured=max(s.replication_factor for s in wanted))
    futures = admin.create_topics(
        [NewTopic(s.name, s.partitions, s.replication_factor, config=s.config) for s in fitted],
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
    metadata = _metadata(admin, timeout)
    return {name: len(topic.partitions) for name, topic in metadata.topics.items() if not topic.error}


def broker_count(admin: AdminClient, timeout: float = 5.0) -> int:
    return len(_metadata(admin, timeout).brokers)


def _metadata(admin: AdminClient, timeout: float) -> ClusterMetadata:
    try:
        return admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise BrokerError(
            f"Kafka did not answer within {timeout:g}s: {exc.args[0].str()} "
            "(check kafka.bootstrap_servers / KAFKA_BOOTSTRAP_SERVERS)"
        ) from exc


def topic_ids(admin: AdminClient, names: list[str], timeout: float = 10) -> dict[str, str]:
    """Each topic's id: a topic deleted and created again under the same name has a new one."""
    try:
        described = admin.describe_topics(TopicCollection(names), request_timeout=timeout)
        return {name: str(future.result(timeout).topic_id) for name, future in described.items()}
    except KafkaException as exc:
        raise BrokerError(f"Kafka did not describe {names}: {exc.args[0].str()}") from exc


def missing(admin: AdminClient, wanted: tuple[TopicSpec, ...], timeout: float = 5.0) -> list[str]:
    present = partition_counts(admin, timeout)
    return [s.name for s in wanted if s.name not in present]


def create_all(kafka: KafkaSettings, topics: TopicSettings, allow_single_replica: bool = False) -> dict[str, str]:
    admin = AdminClient(config.admin(kafka, role="topics"))
    return create(admin, specs(topics), allow_single_replica=allow_single_replica)
