"""Restoring one raw partition's stores from their changelogs, before the partition is processed.

Outputs are co-partitioned with the raw topic (events, state and dedup records of raw partition p
go to partition p of their topics), so partition p of each changelog holds exactly what the owner
of raw partition p needs. Restores read to partition EOF, never trusting high watermarks, and
never rely on the broker having compacted anything: tombstones and expiry are applied here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from processors.dedup import DedupStore, MemoryDedupStore, SqliteDedupStore
from processors.errors import BrokerError
from processors.kafka.serde import Codec, dedup_from_record, event_from_record, state_from_record
from processors.model import VerificationEvent, VerificationState


@dataclass
class PartitionStores:
    """What the owner of one raw partition holds: its dedup keys and its verifications' states."""

    partition: int
    dedup: DedupStore
    states: dict[str, VerificationState] = field(default_factory=dict)
    expired: list[str] = field(default_factory=list)  # found expired while restoring: to tombstone
    repair_from: int = -1  # events-topic offset from which events may lack their dedup record
    restored_keys: int = 0


def new_store(kind: str, state_dir: Path, topic: str, partition: int) -> DedupStore:
    if kind == "sqlite":
        return SqliteDedupStore(state_dir / f"dedup-{topic}-{partition}.sqlite")
    return MemoryDedupStore()


def read_partition(consumer: Consumer, topic: str, partition: int, start: int, timeout: float) -> Iterator[Message]:
    """Every record of topic/partition from `start` up to its end (partition EOF)."""
    consumer.assign([TopicPartition(topic, partition, start if start >= 0 else OFFSET_BEGINNING)])
    deadline = time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                raise BrokerError(f"restoring {topic}[{partition}] did not reach its end within {timeout:g}s")
            for msg in consumer.consume(10_000, 0.5):
                error = msg.error()
                if error is None:
                    yield msg
                elif error.code() == KafkaError._PARTITION_EOF:
                    return
                else:
                    raise BrokerError(f"restoring {topic}[{partition}] failed: {error.str()}")
    finally:
        consumer.unassign()


def restore_dedup(
    consumer: Consumer, codec: Codec, topic: str, stores: PartitionStores, now: datetime, timeout: float
) -> None:
    now_s = int(now.timestamp())
    decode = codec.decode
    for msg in read_partition(consumer, topic, stores.partition, OFFSET_BEGINNING, timeout):
        key = (msg.key() or b"").decode()
        value = msg.value()
        if value is None:
            stores.dedup.discard(key)
            continue
        record = dedup_from_record(decode("DedupRecord", value, topic))
        stores.repair_from = max(stores.repair_from, record.events_offset)
        expires_s = int(record.expires_at.timestamp())
        if expires_s > now_s:
            stores.dedup.add(key, expires_s)
        else:
            stores.dedup.discard(key)
            stores.expired.append(key)
    stores.restored_keys = len(stores.dedup)


def restore_states(consumer: Consumer, codec: Codec, topic: str, stores: PartitionStores, timeout: float) -> None:
    for msg in read_partition(consumer, topic, stores.partition, OFFSET_BEGINNING, timeout):
        key = (msg.key() or b"").decode()
        value = msg.value()
        if value is None:
            stores.states.pop(key, None)
        else:
            stores.states[key] = state_from_record(codec.decode("VerificationState", value, topic))


def unmarked_events(
    consumer: Consumer, codec: Codec, topic: str, stores: PartitionStores, timeout: float
) -> Iterator[tuple[int, VerificationEvent]]:
    """Events written after the last acknowledged dedup records (a crash between the two)."""
    for msg in read_partition(consumer, topic, stores.partition, stores.repair_from, timeout):
        if msg.value() is None:
            continue
        event = event_from_record(codec.decode("VerificationEvent", msg.value() or b"", topic))
        if event.idempotency_key not in stores.dedup:
            yield msg.offset() or 0, event
