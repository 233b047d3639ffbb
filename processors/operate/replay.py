"""Rebuilding from the raw topic (replay) and sending dead letters back through the normalizers (redrive)."""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from typing_extensions import override

from processors import logs
from processors.avro.records import (
    dead_letter_from_record,
    delivery_from_record,
    expectation_from_record,
    expectation_to_record,
)
from processors.errors import BrokerError, ConfigError, SerdeError
from processors.kafka import (
    OFFSET_BEGINNING,
    AdminClient,
    ConfigResource,
    Consumer,
    ConsumerGroupState,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
    config,
    reader,
    topics,
)
from processors.kafka.producer import produce, produce_dead_letter
from processors.kafka.serde import Codec
from processors.model import DeadLetter, RawDelivery, Rejection
from processors.normalizer.runner import Engine
from processors.pipeline import normalize
from processors.remedies import explain
from processors.settings import KafkaSettings, ProcessorSettings, TopicSettings

log = logs.get("kycstream.replay")
Progress = Callable[[int, int], None]  # (records done, records to replay)


TARGET_ROLES = ("events", "state", "dedup", "dlq")
# A group in these states has no member: nobody consumes (DEAD: it does not exist, or no longer).
_IDLE = frozenset({ConsumerGroupState.EMPTY, ConsumerGroupState.DEAD})


def into_live(live: TopicSettings, target: TopicSettings) -> bool:
    """Whether a replay writes any of the topics the processors write (events, state, dedup)."""
    return any(getattr(live, role) == getattr(target, role) for role in ("events", "state", "dedup"))


def refuse_while_consumed(kafka: KafkaSettings, group: str, raw: str, timeout: float = 10.0) -> None:
    """ConfigError, saying what to do, unless the processors' group has no member: a replay into the
    live topics beside running processors writes second events (neither side's dedup learns what the
    other writes) and may write a state older than the one they wrote."""
    admin = AdminClient(config.admin(kafka))
    try:
        described = admin.describe_consumer_groups([group], request_timeout=timeout)[group].result()
    except KafkaException as exc:
        raise ConfigError(
            f"could not ask Kafka whether the processors' group {group} has members ({exc.args[0].str()}): "
            "the operator's Kafka user needs Describe on that group. " + _WHAT_TO_DO
        ) from exc
    members = [f"{m.client_id}@{m.host.lstrip('/')} ({m.member_id})" for m in described.members]
    if described.state in _IDLE and not members:
        return
    who = (
        f"{len(members)} member(s): {', '.join(members)}"
        if members
        else f"state {described.state.name} (the broker lists no members)"
    )
    raise ConfigError(
        f"the processors' group {group} is consuming {raw}: {who}. A replay into the live topics beside "
        "running processors writes a second event for each delivery they process meanwhile. " + _WHAT_TO_DO
    )


_WHAT_TO_DO = (
    "Stop or scale down the processors first (kubectl scale deployment kycstream-processor --replicas=0, "
    "then replay, then scale back), or replay into fresh topics (--events-topic, --state-topic, "
    "--dedup-topic, --dlq-topic), or pass --while-live to replay beside them anyway (see its --help)."
)


def ensure_targets(
    kafka: KafkaSettings, live: TopicSettings, target: TopicSettings, *, raw_partitions: int | None = None
) -> list[str]:
    """Create the missing target topics, each like the topic it stands in for (its configs, read from
    the live topic where it exists) with the raw topic's partition count: the co-partitioning rule.
    With `raw_partitions` the raw topic is a target too, with that many partitions (operate/grow.py).

    Refuses before creating anything when an existing target disagrees (partitions, cleanup policy).
    Returns the names created.
    """
    admin = AdminClient(config.admin(kafka, role="replay"))
    counts = topics.partition_counts(admin, timeout=10)
    raw = target.raw
    if raw_partitions is None and raw not in counts:
        raise ConfigError(f"topic {raw} does not exist: there is nothing to replay (check topics.raw)")
    partitions = raw_partitions or counts[raw]
    roles = TARGET_ROLES if raw_partitions is None else ("raw", *TARGET_ROLES)
    wanted = [s for s in topics.specs(target) if s.role in roles]
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


def replay(
    settings: ProcessorSettings,
    since: datetime | None,
    progress: Progress | None = None,
    *,
    processed_by: str | None = None,
    group: str | None = None,
) -> Counter[str]:
    """Run the raw topic from `since` (None: the beginning) to its end as of the start through the
    normalizer; with `processed_by` (a group of live processors), only up to that group's committed
    offsets: what the processors have not processed yet is left to them. With `group`, from that
    group's committed offsets instead, committing them as the processor does: a replay that can be
    cut and run again, going on where it stopped (partitions grow, operate/grow.py).

    Dedup and state are restored from the target topics first, so replaying into the topics that
    already hold events emits only what is missing; into fresh topics, it rebuilds them whole. A
    dead letter the target DLQ already holds for the same raw record is not written again.
    """
    run = group or f"{settings.processor.group_id}-replay-{uuid.uuid4().hex[:8]}"
    if settings.processor.processing_guarantee == "exactly_once":  # never fence a live processor's producer
        settings = settings.with_overrides(processor={"transactional_id": run})
    engine = _ReplayEngine(settings)
    raw = settings.topics.raw
    consumer = Consumer(config.consumer(settings.kafka, run, role="replay"))
    try:
        partitions = list(range(engine.check_partitions()))
        # Read before the restore: the dedup records of everything below them are written by then.
        ends = reader.committed_offsets(settings.kafka, processed_by, raw, partitions) if processed_by else None
        engine.held = _dead_letters_held(settings, engine.codec)
        engine.restore(partitions)
        starts = resumed(consumer, raw, partitions) if group else _starts(consumer, raw, partitions, since)
        since_ms = int(since.timestamp() * 1000) if since else 0
        last, total = _extent(consumer, starts, since_ms, ends)
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
            offsets = engine.process(records, consumer, stop)
            if offsets is None:
                pending.update(m.partition() or 0 for m in records)  # rewound: those are read again
                continue
            if group and offsets:  # exactly_once: the transaction committed them
                consumer.commit(offsets=offsets, asynchronous=False)
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


def resumed(consumer: Consumer, topic: str, partitions: list[int]) -> list[TopicPartition]:
    """Each partition from the consumer's group's committed offset (its beginning where none)."""
    committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
    return [TopicPartition(topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING) for tp in committed]


def _extent(
    consumer: Consumer, starts: list[TopicPartition], since_ms: int, ends: dict[int, int] | None = None
) -> tuple[dict[int, int], int]:
    """What the replay will read: the last offset of each partition that has records from its start
    (and below its offset in `ends`, if given), and how many of them are at or after `since_ms`.
    Read to partition EOF: the high watermarks of some brokers (the embedded one) under-report."""
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
                elif ends is None or (msg.offset() or 0) < ends.get(msg.partition() or 0, 0):
                    last[msg.partition() or 0] = msg.offset() or 0
                    total += (msg.timestamp() or (0, 0))[1] >= since_ms
    finally:
        consumer.unassign()
    return last, total


def redrive(settings: ProcessorSettings, *, dry_run: bool = False) -> Counter[str]:
    """Send the dead letters since the last redrive back where they re-drive (processors.remedies).

    A delivery that normalizes now goes back to the raw topic, byte for byte, so the processors
    handle it with dedup and state like any delivery; one that still fails is appended to the DLQ
    again with its new reason. A fetch letter's notice event goes back to the events topic, to its
    partition, where the reconciler's fetcher takes it as a new fetch job; a poll letter's
    expectation is posted again with `expected_at` now, a fresh give-up window. The redrive
    group's offsets mark where the next run starts.
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
            if letter.original_size is not None and letter.source_topic == topics.raw:
                letter = _whole(consumer, letter)  # the letter kept a prefix: the record is in the raw topic
            verdict = _verdict(letter, codec, topics, datetime.now(UTC))
            if verdict == "skip":
                tally[f"skipped:{letter.reason}"] += 1
            elif isinstance(verdict, _Resend):
                tally[verdict.outcome] += 1
                if not dry_run:
                    produce(
                        producer,
                        verdict.topic,
                        verdict.value,
                        letter.original_key,
                        headers=[("kycstream-redrive-of", f"{topics.dlq}/{partition}/{offset}")],
                        on_delivery=on_delivery,
                        partition=verdict.partition,
                    )
            else:
                tally[f"still_failing:{verdict.code}"] += 1
                if not dry_run:
                    again = dataclasses.replace(
                        letter, reason=verdict.code, detail=explain(verdict.code, verdict.detail)
                    )
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


def _whole(consumer: Consumer, letter: DeadLetter) -> DeadLetter:
    """`letter` holding its whole original again, read with the redrive's consumer (done with the
    DLQ by then; its offsets are committed explicitly) from where the letter points in the raw
    topic (a letter too large to copy its original keeps a prefix); unchanged when the record is gone."""
    consumer.assign([TopicPartition(letter.source_topic, letter.partition, letter.offset)])
    for msg in consumer.consume(1, 10.0):
        if msg.error() is None and msg.offset() == letter.offset and msg.value() is not None:
            return dataclasses.replace(letter, original_value=msg.value() or b"", original_size=None)
    return letter


@dataclasses.dataclass(frozen=True)
class _Resend:
    """Where a dead letter's record goes back to, and what the tally calls it."""

    outcome: Literal["redriven", "refetched", "repolled"]
    topic: str
    value: bytes
    partition: int = -1  # -1: the key's (the partitioner); a notice's own events partition otherwise


def _verdict(
    letter: DeadLetter, codec: Codec, topics: TopicSettings, now: datetime
) -> Literal["skip"] | _Resend | Rejection:
    """What a redrive does with one dead letter, by the topic its record came from: a raw delivery
    is sent back if it normalizes now (else why it still fails); a fetch letter's notice event and a
    poll letter's expectation always are; anything else is skipped."""
    if letter.source_topic == topics.raw:
        if letter.original_size is not None:  # a prefix only, and its record is gone from the raw topic
            where = f"{letter.source_topic} partition {letter.partition} offset {letter.offset}"
            return Rejection("original_not_held", f"the original ({letter.original_size} bytes) was at {where}")
        try:
            outcome = normalize(delivery_from_record(codec.decode("RawDelivery", letter.original_value, topics.raw)))
        except (SerdeError, KeyError, TypeError) as exc:
            return Rejection("undecodable_envelope", str(exc))
        return outcome if isinstance(outcome, Rejection) else _Resend("redriven", topics.raw, letter.original_value)
    if letter.source_topic == topics.events:
        return _Resend("refetched", topics.events, letter.original_value, letter.partition)
    if letter.source_topic == topics.expected:
        try:
            expectation = expectation_from_record(codec.decode("Expectation", letter.original_value, topics.expected))
        except (SerdeError, KeyError, TypeError):
            return "skip"
        again = dataclasses.replace(expectation, expected_at=now)
        return _Resend(
            "repolled", topics.expected, codec.encode("Expectation", expectation_to_record(again), topics.expected)
        )
    return "skip"


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
