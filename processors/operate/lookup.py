"""Finding one verification's records: only the partitions its key can be in, only since a time.

The producers place a record by its key (processors.kafka.partitioner): raw deliveries, expectations
and dead letters under `provider:verification_id` in the partition the key hashes to in their own
topic; events and states in the same partition number as the raw record they came from
(co-partitioning). So a key costs one partition of each topic, not a topic of millions.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from processors.avro.codec import RecordType
from processors.avro.records import (
    dead_letter_from_record,
    delivery_from_record,
    event_from_record,
    expectation_from_record,
    state_from_record,
)
from processors.errors import BrokerError, SerdeError
from processors.kafka import Consumer, KafkaException, config, reader
from processors.kafka.partitioner import DEFAULT, partition_for
from processors.kafka.reader import read_partitions
from processors.kafka.serde import Codec
from processors.operate.timeline import ROLES, Found, Role, Scanned, Undecodable, Value
from processors.settings import KafkaSettings, TopicSettings

_TYPES: dict[Role, RecordType] = {
    "expected": "Expectation",
    "raw": "RawDelivery",
    "events": "VerificationEvent",
    "state": "VerificationState",
    "dlq": "DeadLetter",
}
_FROM_RECORD: dict[Role, Callable[[Mapping[str, Any]], Value]] = {
    "expected": expectation_from_record,
    "raw": delivery_from_record,
    "events": event_from_record,
    "state": state_from_record,
    "dlq": dead_letter_from_record,
}
_CO_PARTITIONED: frozenset[Role] = frozenset({"events", "state"})  # placed by the raw record's partition


def find(
    kafka: KafkaSettings, topics: TopicSettings, key: str, since: datetime, codec: Codec, timeout: float = 30.0
) -> tuple[list[Found], list[Scanned]]:
    """The records of `key` written at or after `since` in the raw, events, state, DLQ and expected
    topics, and what was read to find them."""
    wanted_key, since_ms = key.encode(), int(since.timestamp() * 1000)
    partitioner = str(config.common(kafka).get("partitioner", DEFAULT))
    # A fetch of a partition with nothing new waits fetch.wait.max.ms (500 ms) for records: an
    # interactive read of a few partitions to their end would spend most of its time waiting.
    consumer = Consumer(config.consumer(kafka, None, role="inspect", **{"fetch.wait.max.ms": 10}))
    try:
        raw_count = len(reader.topic_partitions(consumer, topics.raw))
        raw_partition = partition_for(wanted_key, raw_count, partitioner)
        role_of: dict[str, Role] = {}
        wanted: list[tuple[str, int]] = []
        for role in ROLES:
            topic = getattr(topics, role)
            role_of[topic] = role
            partitions = reader.topic_partitions(consumer, topic)
            placed = (
                raw_partition if role in _CO_PARTITIONED else partition_for(wanted_key, len(partitions), partitioner)
            )
            wanted += [(topic, p) for p in (partitions if placed is None else [placed])]
        starts = reader.offsets_since(consumer, wanted, since_ms)
        found: list[Found] = []
        counts: collections.Counter[tuple[str, int]] = collections.Counter()
        for msg in read_partitions(consumer, starts, timeout):
            topic, partition = msg.topic() or "", msg.partition() or 0
            counts[(topic, partition)] += 1
            written_ms = (msg.timestamp() or (0, 0))[1]
            if msg.key() != wanted_key or written_ms < since_ms:
                continue
            role = role_of[topic]
            found.append(
                Found(
                    role,
                    topic,
                    partition,
                    msg.offset() or 0,
                    datetime.fromtimestamp(written_ms / 1000, UTC),
                    _decode(codec, role, topic, msg.value()),
                )
            )
    except KafkaException as exc:
        raise BrokerError(f"Kafka did not answer: {exc.args[0].str()}") from exc
    finally:
        consumer.close()
    return found, [Scanned(t, p, start, counts[(t, p)]) for t, p, start in starts]


def _decode(codec: Codec, role: Role, topic: str, value: bytes | None) -> Value:
    if value is None:
        return None
    try:
        return _FROM_RECORD[role](codec.decode(_TYPES[role], value, topic))
    except (SerdeError, KeyError, ValueError) as exc:
        return Undecodable(f"{_TYPES[role]} at {topic}: {exc}")
