"""The Kafka plumbing every role shares, and the only package that imports confluent_kafka:
client configuration (config; msk: Amazon MSK IAM tokens), topics, the Avro serde and a schema
registry's subjects (registry), partitioning, producers that survive a
full queue (producer), reading to the end (reader), the embedded broker, each role's Kafka
resources (access). The roles (gateway, normalizer, reconcile, operate) use the client classes
re-exported here, never confluent_kafka itself (ruff TID251)."""

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    ConsumerGroupState,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, ConfigResource  # type: ignore[attr-defined]

__all__ = [
    "OFFSET_BEGINNING",
    "OFFSET_END",
    "AdminClient",
    "ConfigResource",
    "Consumer",
    "ConsumerGroupState",
    "KafkaError",
    "KafkaException",
    "Message",
    "Producer",
    "TopicCollection",
    "TopicPartition",
]
