"""Rebuilding from the raw topic (replay) and sending dead letters back through the normalizers (redrive)."""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, ConfigResource  # type: ignore[attr-defined]
from typing_extensions import override

from processors import logs
from processors.avro.records import dead_letter_from_record, delivery_from_record
from processors.errors import BrokerError, ConfigError, SerdeError
from processors.kafka import config, reader, topics
from processors.kafka.producer import produce_dead_letter
from processors.kafka.runner import Engine
from processors.kafka.serde import Codec
from processors.model import DeadLetter, RawDelivery, Rejection
from processors.pipeline import normalize
from processors.settings import KafkaSettings, ProcessorSettings, TopicSettings

log = logs.get("kycstream.replay")
Progress = Callable[[int, int], None]  # (records done, records to replay)


TARGET_ROLES = ("events", "state", "dedup", "dlq")


def ensure_targets(kafka: KafkaSettings, live: TopicSettings, target: TopicSettings) -> list[str]:
    """Create the missing target topics, each like the topic it stands in for (its configs, read from
    the live topic where it exists) with the raw topic's partition count: the co-partitioning rule.

    Refuses before creating anything when an existing target disagrees (partitions, cleanup policy).
    Returns the names created.
    """
    admin = AdminClient(config.admin(kafka, role="replay"))
    counts = topics.partition_counts(admin, timeout=10)
    raw = target.raw
    if raw not in counts:
        raise ConfigError(f"topic {raw} does not exist: there is nothing to replay (check topics.raw)")
    partitions = counts[raw]
    wanted = [s for s in topics.specs(target) if s.role in TARGET_ROLES]
    described = _configs(admin, [s.name for s in wanted if s.name in counts])
    disagree = []
    for spec in wanted:
        if spec.name not in counts:
            continue
        if spec.role != "dlq" and counts[spec.name] != partitions:  # dead letters are not co-partitioned
            disagree.append(f"{spec.name} has {counts[spec.name]} partitions")
        policy = described.get(spec.name, {}).get("cleanup.policy")
        if policy is not None and policy != spec.config["cleanup.policy"]:
            disagree.append(f"{spec.name} has cleanup.policy={policy}, not {spec.config['cleanup.policy']}")
    if disagree:
        raise ConfigError(
            f"{raw} has {partitions} partitions, but " + "; ".join(disagree) + ": replay into topics that "
            "match it (events, state and dedup co-partitioned with the raw topic, state and dedup compacted), "
            "or give new names to have them created"
        )
    missing = [s for s in wanted if s.name not in counts]
    if not missing:
        return []
    # The configs of the topics they stand in for: the live topic's values where it exists.
    originals = _configs(admin, [getattr(live, s.role) for s in missing if getattr(live, s.role) in counts])
    specs = tuple(
        dataclasses.replace(
            s,
            partitions=partitions,
            config={k: originals.get(getattr(live, s.role), {}).get(k, v) for k, v in s.config.items()},
        )
        for s in missing
    )
    return [name for name, what in topics.create(admin, specs).items() if what == "created"]


def _configs(admin: AdminClient, names: list[str]) -> dict[str, dict[str, str]]:
    """Each topic's configs as the broker reports them (empty when it does not answer them)."""
    if not names:
        return {}
    found: dict[str, dict[str, str]] = {}
    futures = admin.describe_configs([ConfigResource("topic", name) for name in names], request_timeout=10)
    for resource, future in futures.items():
        try:
            entries = future.result()
        except KafkaException:
            continue
        found[resource.name] = {k: e.value for k, e in entries.items() if e.value is not None}
    return found


def replay(settings: ProcessorSettings, since: datetime | None, progress: Progress | None = None) -> Counter[str]:
    """Run the raw topic from `since` (None: the beginning) to its end as of the start through the
    normalizer.

    Dedup and state are restored from the target topics first, so replaying into the topics that
    already hold events emits only what is missing; into fresh topics, it rebuilds them whole. A
    dead letter the target DLQ already holds for the same raw record is not written again.
    """
    engine = _ReplayEngine(settings)
    raw = settings.topics.raw
    consumer = Consumer(
        config.consumer(settings.kafka, f"{settings.processor.group_id}-replay-{uuid.uuid4().hex[:8]}", role="replay")
    )
    try:
        partitions = list(range(engine.check_partitions()))
        engine.held = _dead_letters_held(settings, engine.codec)
        engine.restore(partitions)
        starts = _starts(consumer, raw, partitions, since)
        since_ms = int(since.timestamp() * 1000) if since else 0
        last, total = _extent(consumer, starts, since_ms)
        if progress:
            progress(0, total)
        consumer.assign([tp for tp in starts if tp.partition in last])
        pending = set(last)
        done = 0
        stop = threading.Event()
        while pending:
            messages = consumer.consume(settings.processor.batch_size, 1.0)
            records = []
            for msg in messages:
                error, partition, offset = msg.error(), msg.partition() or 0, msg.offset() or 0
                if error is not None and error.code() == KafkaError._PARTITION_EOF:
                    pending.discard(partition)
                elif error is not None:
                    raise BrokerError(f"reading {raw} failed: {error.str()}")
                elif partition in pending and offset <= last[partition]:
                    if offset == last[partition]:
                        pending.discard(partition)
                    # offsets_for_times is only a starting hint (not every broker answers it exactly).
                    if (msg.timestamp() or (0, 0))[1] >= since_ms:
                        records.append(msg)
            if not records:
                continue
            if engine.process(records, consumer, stop) is None:
                pending.update(m.partition() or 0 for m in records)  # rewound: those are read again
                continue
            done += len(records)
            if progress:
                progress(done, total)
        tally = engine.tally
        tally["dead_letters_held"] = len(engine.skipped)
        tally["records"] = done
        return tally
    except KafkaException as exc:
        raise BrokerError(f"replay failed: {exc.args[0].str()}") from exc
    finally:
        consumer.close()
        engine.close()


class _ReplayEngine(Engine):
    """The processor's engine, minus the dead letters the target DLQ already holds."""

    held: frozenset[tuple[int, int]] = frozenset()  # (raw partition, raw offset)

    def __init__(self, settings: ProcessorSettings) -> None:
        super().__init__(settings)
        self.skipped: set[tuple[int, int]] = set()

    @override
    def _dead_letter(self, msg: Message, delivery: RawDelivery | None, why: Rejection, batch: Any) -> None:
        at = (msg.partition() or 0, msg.offset() or 0)
        if at in self.held:
            self.skipped.add(at)
            return
        super()._dead_letter(msg, delivery, why, batch)


def _dead_letters_held(settings: ProcessorSettings, codec: Codec) -> frozenset[tuple[int, int]]:
    """(partition, offset) of every raw record the DLQ already holds a dead letter for."""
    held = set()
    for record in reader.read_all(settings.kafka, settings.topics.dlq, timeout=60):
        try:
            letter = codec.decode("DeadLetter", record.value or b"", settings.topics.dlq)
        except SerdeError:
            continue
        if letter.get("source_topic") == settings.topics.raw:
            held.add((int(letter["partition"]), int(letter["offset"])))
    return frozenset(held)


def _starts(consumer: Consumer, topic: str, partitions: list[int], since: datetime | None) -> list[TopicPartition]:
    if since is None:
        return [TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions]
    since_ms = int(since.timestamp() * 1000)
    found = {p: o for _, p, o in reader.offsets_since(consumer, [(topic, p) for p in partitions], since_ms)}
    # -1: nothing at or after `since` in that partition; reading from its end yields only EOF.
    return [TopicPartition(topic, p, found.get(p, -1)) for p in partitions]


def _extent(consumer: Consumer, starts: list[TopicPartition], since_ms: int) -> tuple[dict[int, int], int]:
    """What the replay will read: the last offset of each partition that has records from its start,
    and how many of them are at or after `since_ms`. Read to partition EOF: the high watermarks
    of some brokers (the embedded one) under-report."""
    consumer.assign(starts)
    pending = {tp.partition for tp in starts}
    last: dict[int, int] = {}
    total = 0
    try:
        while pending:
            for msg in consumer.consume(10_000, 1.0):
                error = msg.error()
                if error is not None and error.code() == KafkaError._PARTITION_EOF:
                    pending.discard(msg.partition() or 0)
                elif error is not None:
                    raise BrokerError(f"reading {starts[0].topic} failed: {error.str()}")
                else:
                    last[msg.partition() or 0] = msg.offset() or 0
                    total += (msg.timestamp() or (0, 0))[1] >= since_ms
    finally:
        consumer.unassign()
    return last, total


def redrive(settings: ProcessorSettings, *, dry_run: bool = False) -> Counter[str]:
    """Send the dead letters since the last redrive back through the current normalizers.

    Those that normalize now go back to the raw topic, byte for byte, so the processors handle
    them with dedup and state like any delivery; those that still fail are appended to the DLQ
    again with their new reason. The redrive group's offsets mark where the next run starts.
    """
    topics = settings.topics
    codec = Codec(config.schema_registry(settings.kafka))
    consumer = Consumer(config.consumer(settings.kafka, f"{settings.processor.group_id}-redrive", role="redrive"))
    producer = Producer(config.producer(settings.kafka, role="redrive"))
    tally: Counter[str] = Counter()
    failures: list[str] = []

    def on_delivery(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            failures.append(err.str())

    try:
        # Read up to the end before writing anything: re-appended letters must wait for the next run.
        letters, last = _letters_since_last_redrive(consumer, codec, topics.dlq)
        for partition, offset, key, letter in letters:
            verdict = _verdict(letter, codec, topics.raw)
            if verdict == "skip":
                tally[f"skipped:{letter.reason}"] += 1
            elif verdict == "redrive":
                tally["redriven"] += 1
                if not dry_run:
                    producer.produce(
                        topics.raw,
                        key=letter.original_key,
                        value=letter.original_value,
                        headers=[("kycstream-redrive-of", f"{topics.dlq}/{partition}/{offset}")],
                        on_delivery=on_delivery,
                    )
            else:
                tally[f"still_failing:{verdict.code}"] += 1
                if not dry_run:
                    again = dataclasses.replace(letter, reason=verdict.code, detail=verdict.detail)
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


def _verdict(letter: DeadLetter, codec: Codec, raw_topic: str) -> Literal["skip", "redrive"] | Rejection:
    """What a redrive does with one dead letter: "skip" one that holds no delivery (the reconciler's:
    an expectation, a notice's event), "redrive" one whose delivery normalizes now; else why it
    still fails."""
    if letter.source_topic != raw_topic:
        return "skip"
    try:
        outcome = normalize(delivery_from_record(codec.decode("RawDelivery", letter.original_value, raw_topic)))
    except (SerdeError, KeyError, TypeError) as exc:
        return Rejection("undecodable_envelope", str(exc))
    return outcome if isinstance(outcome, Rejection) else "redrive"


def _letters_since_last_redrive(
    consumer: Consumer, codec: Codec, dlq: str
) -> tuple[list[tuple[int, int, bytes | None, DeadLetter]], dict[int, int]]:
    """The DLQ's letters from the redrive group's committed offsets to the end, as (partition, offset,
    key, letter), and the last offset read of each partition."""
    partitions = reader.topic_partitions(consumer, dlq)
    committed = consumer.committed([TopicPartition(dlq, p) for p in partitions], timeout=10)
    starts = [
        TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING) for tp in committed
    ]
    consumer.assign(starts)
    pending = {tp.partition for tp in starts}
    last: dict[int, int] = {}
    letters: list[tuple[int, int, bytes | None, DeadLetter]] = []
    while pending:
        for msg in consumer.consume(1000, 1.0):
            error = msg.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    raise BrokerError(f"reading {dlq} failed: {error.str()}")
                pending.discard(msg.partition() or 0)
                continue
            partition, offset = msg.partition() or 0, msg.offset() or 0
            last[partition] = offset
            letter = dead_letter_from_record(codec.decode("DeadLetter", msg.value() or b"", dlq))
            letters.append((partition, offset, msg.key(), letter))
    return letters, last
