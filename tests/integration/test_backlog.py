"""Backlogs larger than the producer's queue: every produce loop waits for room instead of raising
BufferError (processors.kafka.producer.produce). The full-size case holds more keys than
librdkafka's default queue (100,000 records); the fast one proves the same path with a queue of
1,000 records and 5,000 keys."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import Producer

from processors.avro.records import dedup_record
from processors.errors import ConfigError
from processors.kafka import config, reader
from processors.kafka.producer import produce
from processors.kafka.serde import Codec
from processors.normalizer.runner import Engine
from processors.settings import KafkaSettings, ProcessorSettings, TopicSettings
from tests.conftest import unique

pytestmark = pytest.mark.broker

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SIZES = [
    pytest.param(5_000, {"queue.buffering.max.messages": "1000"}, id="5k-keys-queue-of-1k"),
    pytest.param(150_000, {}, id="150k-keys-default-queue", marks=pytest.mark.slow),
]


def _write_dedup_records(
    kafka: KafkaSettings, topics: TopicSettings, codec: Codec, keys: list[str], expires: datetime
) -> None:
    """Dedup records as the processor writes them (owner.dedup_records), spread over the partitions."""
    producer = Producer(config.producer(kafka, **{"linger.ms": 50, "batch.num.messages": 10_000}))
    first_seen, expires_ms = int((expires - timedelta(hours=1)).timestamp() * 1000), int(expires.timestamp() * 1000)
    for i, key in enumerate(keys):
        record = dedup_record(key, str(uuid.uuid4()), first_seen, expires_ms, -1)
        value = codec.encode("DedupRecord", record, topics.dedup)
        produce(producer, topics.dedup, value, key.encode(), partition=i % topics.partitions)
    assert producer.flush(120) == 0


def _tombstoned(kafka: KafkaSettings, topic: str) -> list[str]:
    return [(r.key or b"").decode() for r in reader.read_all(kafka, topic, timeout=120) if r.value is None]


@contextmanager
def _engine(kafka: KafkaSettings, topics: TopicSettings, clock: Callable[[], datetime]) -> Iterator[Engine]:
    settings = ProcessorSettings(kafka=kafka, topics=topics, processor={"group_id": unique("backlog")})
    engine = Engine(settings, clock=clock)
    try:
        yield engine
    finally:
        engine.close()


@pytest.mark.parametrize(("count", "extra"), SIZES)
def test_keys_expiring_in_one_pass_are_all_tombstoned(
    make_topics: Callable[..., TopicSettings], kafka: KafkaSettings, codec: Codec, count: int, extra: dict[str, str]
) -> None:
    topics = make_topics(3)
    keys = [f"xendit:backlog-{i}" for i in range(count)]
    _write_dedup_records(kafka, topics, codec, keys, expires=T0 + timedelta(days=7))
    now = [T0]
    with _engine(kafka.model_copy(update={"extra": extra}), topics, lambda: now[0]) as engine:
        engine.restore(list(range(topics.partitions)))
        assert sum(len(s.dedup) for s in engine.owner.owned.values()) == count
        now[0] = T0 + timedelta(days=7, seconds=1)
        assert engine.expire(force=True) == count
    tombstoned = _tombstoned(kafka, topics.dedup)
    assert len(tombstoned) == count and set(tombstoned) == set(keys)


@pytest.mark.parametrize(("count", "extra"), SIZES)
def test_a_restore_that_finds_every_key_expired_tombstones_them_all(
    make_topics: Callable[..., TopicSettings], kafka: KafkaSettings, codec: Codec, count: int, extra: dict[str, str]
) -> None:
    topics = make_topics(3)
    keys = [f"esign:restored-{i}" for i in range(count)]
    _write_dedup_records(kafka, topics, codec, keys, expires=T0 - timedelta(seconds=1))
    with _engine(kafka.model_copy(update={"extra": extra}), topics, lambda: T0) as engine:
        engine.restore(list(range(topics.partitions)))  # at_least_once: the repair tombstones what expired
        assert not any(len(s.dedup) for s in engine.owner.owned.values())
    tombstoned = _tombstoned(kafka, topics.dedup)
    assert len(tombstoned) == count and set(tombstoned) == set(keys)


def test_a_batch_larger_than_the_producer_queue_is_refused_at_start(
    topic_settings: TopicSettings, kafka: KafkaSettings
) -> None:
    small = kafka.model_copy(update={"extra": {"queue.buffering.max.messages": "1000"}})
    settings = ProcessorSettings(kafka=small, topics=topic_settings, processor={"batch_size": 501})
    with pytest.raises(ConfigError, match=r"processor.batch_size 501 .* set processor.batch_size to 500 or less"):
        Engine(settings)
