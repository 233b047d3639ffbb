"""Reading a topic without joining a group: from the start, from the last N, or from the end.

"Caught up" is decided by partition EOF, never by comparing offsets with high watermarks
(the embedded broker under-reports them).
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, KafkaException, Message, TopicPartition

from processors.errors import BrokerError
from processors.kafka import config
from processors.settings import KafkaSettings

Start = Literal["beginning", "end"] | int  # int: the last N records of each partition


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    headers: tuple[tuple[str, str | bytes | None], ...]


@dataclass(frozen=True, slots=True)
class CaughtUp:
    """Every partition has reached its end at least once."""


def topic_partitions(consumer: Consumer, topic: str) -> list[int]:
    """The topic's partition numbers; BrokerError when Kafka does not answer or the topic is absent."""
    try:
        metadata = consumer.list_topics(topic, timeout=10)
    except KafkaException as exc:
        raise BrokerError(f"Kafka did not answer: {exc.args[0].str()}") from exc
    info = metadata.topics.get(topic)
    if info is None or info.error is not None or not info.partitions:
        raise BrokerError(f"topic {topic} does not exist (run `kycstream topics create`)")
    return sorted(info.partitions)


def follow(
    kafka: KafkaSettings, topic: str, start: Start, idle_timeout: float | None = None
) -> Iterator[Record | CaughtUp]:
    """Yield the topic's records from `start`, and one CaughtUp when all partitions hit their end.

    Stops after `idle_timeout` seconds without a record (None: never).
    """
    consumer = Consumer(config.consumer(kafka, f"kycstream-reader-{uuid.uuid4()}", role="reader"))
    try:
        partitions = topic_partitions(consumer, topic)
        consumer.assign([_start(consumer, topic, p, start) for p in partitions])
        pending = set(partitions)
        last_seen = time.monotonic()
        while True:
            msg = consumer.poll(0.2)
            if msg is None:
                if idle_timeout is not None and time.monotonic() - last_seen > idle_timeout:
                    return
                continue
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    if pending:
                        pending.discard(msg.partition() or 0)
                        if not pending:
                            yield CaughtUp()
                    continue
                raise BrokerError(f"reading {topic} failed: {error.str()}")
            last_seen = time.monotonic()
            yield Record(
                topic=msg.topic() or topic,
                partition=msg.partition() or 0,
                offset=msg.offset() or 0,
                key=msg.key(),
                value=msg.value(),
                timestamp_ms=(msg.timestamp() or (0, 0))[1],
                headers=tuple(_header_list(msg.headers())),
            )
    finally:
        consumer.close()


def latest_first(items: Iterable[Record | CaughtUp], count: int) -> Iterator[Record | CaughtUp]:
    """`items` (as `follow` yields them from the last `count` of each partition) with the records before
    CaughtUp held back and cut to the `count` latest of them by timestamp, yielded just before it;
    everything after passes as it comes. Partitions are read one after another, so the last `count`
    read are not the last `count` written."""
    backlog: dict[int, deque[Record]] = {}
    items = iter(items)
    for item in items:
        if isinstance(item, CaughtUp):
            held = sorted((r for records in backlog.values() for r in records), key=lambda r: r.timestamp_ms)
            yield from held[-count:]
            yield item
            break
        backlog.setdefault(item.partition, deque(maxlen=count)).append(item)
    yield from items


def _start(consumer: Consumer, topic: str, partition: int, start: Start) -> TopicPartition:
    if start == "beginning":
        return TopicPartition(topic, partition, OFFSET_BEGINNING)
    if start == "end":
        return TopicPartition(topic, partition, OFFSET_END)
    low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10, cached=False)
    # A high watermark that under-reports only makes us start earlier; callers keep the last N.
    return TopicPartition(topic, partition, max(low, high - int(start)))


def offsets_since(consumer: Consumer, wanted: list[tuple[str, int]], since_ms: int) -> list[tuple[str, int, int]]:
    """(topic, partition, first offset at or after `since_ms`) of each wanted partition; partitions with
    nothing since are left out. Only a starting hint: not every broker answers it exactly (the embedded
    one answers 0), so readers still compare record timestamps with `since_ms`."""
    if not wanted:
        return []
    try:
        found = consumer.offsets_for_times([TopicPartition(t, p, since_ms) for t, p in wanted], timeout=30)
    except KafkaException as exc:
        raise BrokerError(f"Kafka did not answer: {exc.args[0].str()}") from exc
    return [(tp.topic, tp.partition, tp.offset) for tp in found if tp.offset >= 0]


def read_all(kafka: KafkaSettings, topic: str, timeout: float = 30.0) -> list[Record]:
    """Every record currently in the topic (read to partition EOF)."""
    records: list[Record] = []
    deadline = time.monotonic() + timeout
    for item in follow(kafka, topic, "beginning", idle_timeout=timeout):
        if isinstance(item, CaughtUp):
            return records
        records.append(item)
        if time.monotonic() > deadline:
            break
    raise BrokerError(f"could not read {topic} to its end within {timeout:g}s")


def committed_offsets(kafka: KafkaSettings, group: str, topic: str, partitions: list[int]) -> dict[int, int]:
    """The group's committed offset of each partition of `topic` (partitions without one left out),
    asked without joining the group."""
    consumer = Consumer(config.consumer(kafka, group))
    try:
        committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
    except KafkaException as exc:
        raise BrokerError(f"Kafka did not answer: {exc.args[0].str()}") from exc
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in committed if tp.offset >= 0}


def unprocessed(kafka: KafkaSettings, group: str, topic: str, timeout: float = 30.0) -> int:
    """How many records of `topic` lie past the group's committed offsets (read to partition EOF)."""
    consumer = Consumer(config.consumer(kafka, group, role="reader"))
    try:
        partitions = topic_partitions(consumer, topic)
        committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        starts = [(topic, tp.partition, tp.offset) for tp in committed]  # a negative offset: from the beginning
        return sum(1 for _ in read_partitions(consumer, starts, timeout))
    except KafkaException as exc:
        raise BrokerError(f"Kafka did not answer: {exc.args[0].str()}") from exc
    finally:
        consumer.close()


def _header_list(headers: object) -> list[tuple[str, str | bytes | None]]:
    if isinstance(headers, dict):
        return list(headers.items())
    return list(headers) if isinstance(headers, list) else []


def read_partitions(consumer: Consumer, starts: list[tuple[str, int, int]], timeout: float) -> Iterator[Message]:
    """Every record of each (topic, partition) from its start offset up to its end (partition EOF),
    all read at once."""
    for batch in read_batches(consumer, starts, timeout):
        yield from batch


def read_batches(consumer: Consumer, starts: list[tuple[str, int, int]], timeout: float) -> Iterator[list[Message]]:
    """read_partitions's records as consume() returns them (never an empty list), for loops that
    take a batch at a time: a restore reads millions."""
    if not starts:
        return
    consumer.assign([TopicPartition(t, p, s if s >= 0 else OFFSET_BEGINNING) for t, p, s in starts])
    pending = {(t, p) for t, p, _ in starts}
    deadline = time.monotonic() + timeout
    try:
        while pending:
            if time.monotonic() > deadline:
                raise BrokerError(f"reading {sorted(pending)} did not reach the end within {timeout:g}s")
            batch = consumer.consume(10_000, 0.2)
            if not batch:
                continue
            errors = [(msg, error) for msg in batch if (error := msg.error()) is not None]
            records = [msg for msg in batch if msg.error() is None] if errors else batch
            for msg, error in errors:
                if error.code() != KafkaError._PARTITION_EOF:
                    raise BrokerError(f"reading {msg.topic()}[{msg.partition()}] failed: {error.str()}")
                pending.discard((msg.topic() or "", msg.partition() or 0))
            if records:
                yield records
    finally:
        consumer.unassign()
