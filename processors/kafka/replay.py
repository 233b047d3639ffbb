"""Rebuilding from the raw topic (replay) and sending dead letters back through the normalizers (redrive)."""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import datetime

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition

from processors import logs
from processors.errors import BrokerError, SerdeError
from processors.kafka import config, reader
from processors.kafka.producer import produce_dead_letter
from processors.kafka.runner import Engine
from processors.kafka.serde import Codec, dead_letter_from_record, delivery_from_record
from processors.model import DeadLetter, Rejection
from processors.pipeline import normalize
from processors.settings import ProcessorSettings

log = logs.get("kycstream.replay")
Progress = Callable[[int, int | None], None]  # (records done, estimated total or None)


def replay(settings: ProcessorSettings, since: datetime | None, progress: Progress | None = None) -> Counter[str]:
    """Run the raw topic from `since` (None: the beginning) to its current end through the normalizer.

    Dedup and state are restored from the target topics first, so replaying into the topics that
    already hold events emits only what is missing; into fresh topics, it rebuilds them whole.
    """
    engine = Engine(settings)
    raw = settings.topics.raw
    consumer = Consumer(config.consumer(settings.kafka, f"{settings.processor.group_id}-replay-{uuid.uuid4().hex[:8]}"))
    try:
        partitions = list(range(engine.check_partitions()))
        engine.restore(partitions)
        starts = _starts(consumer, raw, partitions, since)
        total = _estimate(consumer, starts)
        consumer.assign(starts)
        pending = {tp.partition for tp in starts}
        since_ms = int(since.timestamp() * 1000) if since else 0
        done = 0
        stop = threading.Event()
        while pending:
            messages = consumer.consume(settings.processor.batch_size, 1.0)
            for msg in messages:
                error = msg.error()
                if error is not None and error.code() == KafkaError._PARTITION_EOF:
                    pending.discard(msg.partition() or 0)
                elif error is not None:
                    raise BrokerError(f"reading {raw} failed: {error.str()}")
            # offsets_for_times is only a starting hint (not every broker answers it exactly).
            records = [m for m in messages if m.error() is None and (m.timestamp() or (0, 0))[1] >= since_ms]
            if records and engine.process(records, consumer, stop) is not None:
                done += len(records)
                if progress:
                    progress(done, total)
        return engine.tally
    except KafkaException as exc:
        raise BrokerError(f"replay failed: {exc.args[0].str()}") from exc
    finally:
        consumer.close()
        engine.close()


def _starts(consumer: Consumer, topic: str, partitions: list[int], since: datetime | None) -> list[TopicPartition]:
    if since is None:
        return [TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions]
    wanted = [TopicPartition(topic, p, int(since.timestamp() * 1000)) for p in partitions]
    found = consumer.offsets_for_times(wanted, timeout=30)
    # -1: nothing at or after `since` in that partition; reading from its end yields only EOF.
    return [TopicPartition(topic, tp.partition, tp.offset if tp.offset >= 0 else -1) for tp in found]


def _estimate(consumer: Consumer, starts: list[TopicPartition]) -> int | None:
    """A hint for the progress bar only: high watermarks may under-report on some brokers."""
    total = 0
    try:
        for tp in starts:
            low, high = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=10)
            first = low if tp.offset < 0 else tp.offset
            total += max(0, high - first) if tp.offset != -1 else 0
    except KafkaException:
        return None
    return total


def redrive(settings: ProcessorSettings, *, dry_run: bool = False) -> Counter[str]:
    """Send the dead letters since the last redrive back through the current normalizers.

    Those that normalize now go back to the raw topic, byte for byte, so the processors handle
    them with dedup and state like any delivery; those that still fail are appended to the DLQ
    again with their new reason. The redrive group's offsets mark where the next run starts.
    """
    topics = settings.topics
    codec = Codec(config.schema_registry(settings.kafka))
    consumer = Consumer(config.consumer(settings.kafka, f"{settings.processor.group_id}-redrive"))
    producer = Producer(config.producer(settings.kafka))
    tally: Counter[str] = Counter()
    try:
        partitions = reader.topic_partitions(consumer, topics.dlq)
        committed = consumer.committed([TopicPartition(topics.dlq, p) for p in partitions], timeout=10)
        starts = [
            TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING)
            for tp in committed
        ]
        consumer.assign(starts)
        pending = {tp.partition for tp in starts}
        last: dict[int, int] = {}
        failures: list[str] = []

        def on_delivery(err: KafkaError | None, _msg: object) -> None:
            if err is not None:
                failures.append(err.str())

        letters: list[tuple[int, int, bytes | None, DeadLetter]] = []
        # Read up to the end before writing anything: re-appended letters must wait for the next run.
        while pending:
            for msg in consumer.consume(1000, 1.0):
                error = msg.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        raise BrokerError(f"reading {topics.dlq} failed: {error.str()}")
                    pending.discard(msg.partition() or 0)
                    continue
                partition, offset = msg.partition() or 0, msg.offset() or 0
                last[partition] = offset
                letter = dead_letter_from_record(codec.decode("DeadLetter", msg.value() or b"", topics.dlq))
                letters.append((partition, offset, msg.key(), letter))

        for partition, offset, key, letter in letters:
            if letter.source_topic != topics.raw:  # the reconciler's (an expectation, a notice's event):
                tally[f"skipped:{letter.reason}"] += 1  # not a delivery, left as it is
                continue
            try:
                delivery = delivery_from_record(codec.decode("RawDelivery", letter.original_value, topics.raw))
                outcome = normalize(delivery)
            except (SerdeError, KeyError, TypeError) as exc:
                outcome = Rejection("undecodable_envelope", str(exc))
            if not isinstance(outcome, Rejection):
                tally["redriven"] += 1
                if not dry_run:
                    producer.produce(
                        topics.raw,
                        key=letter.original_key,
                        value=letter.original_value,
                        headers=[("kycstream-redrive-of", f"{topics.dlq}/{partition}/{offset}")],
                        on_delivery=on_delivery,
                    )
                continue
            tally[f"still_failing:{outcome.code}"] += 1
            if not dry_run:
                again = dataclasses.replace(letter, reason=outcome.code, detail=outcome.detail)
                produce_dead_letter(producer, codec, topics.dlq, again, key, on_delivery)
        if dry_run:
            return tally
        if producer.flush(60) or failures:
            raise BrokerError(f"redriven records were not all acknowledged ({failures[:3]}); nothing committed")
        if last:
            consumer.commit(offsets=[TopicPartition(topics.dlq, p, o + 1) for p, o in last.items()], asynchronous=False)
        log.info("redrive_done", **tally)
        return tally
    except KafkaException as exc:
        raise BrokerError(f"redrive failed: {exc.args[0].str()}") from exc
    finally:
        consumer.close()
