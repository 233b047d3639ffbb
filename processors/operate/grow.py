"""Growing partitions: a new co-partitioned set of topics (raw, events, state, dedup, DLQ) with more
partitions, filled from the live set, so that every key's dedup record and every verification's one
state sit in the partition that owns the key now (docs/runbook.md, "Growing partitions").

A run catches up, and can be run again: it copies the live raw topic's records since the last run
into the new raw topic (placed by the producers' partitioner, murmur2 of the key, keeping each
record's time), replays the new raw topic from where the last run stopped into the new events,
state, dedup and DLQ topics (the processor's engine, dedup restored first), and copies the dead
letters the reconciler wrote (poll and fetch letters: the raw topic's own are written again by the
replay). Its positions are the offsets of one consumer group, `<processor.group_id>-grow`: on the
live raw topic and DLQ (what was copied) and on the new raw topic (what was replayed).

Once the processors' group has no member (the live processors are stopped, their last state
written), a run also carries over the states the rebuilt table lacks or that outrank it (their
deliveries left the raw topic by retention), and commits the group's offsets on the new raw topic
where the replay stopped: processors pointed at the new set go on from there.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from rocksdict import Options, Rdict

from processors import logs, state
from processors.avro.records import state_from_record, state_to_record
from processors.errors import BrokerError, ConfigError, SerdeError
from processors.kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
    config,
    reader,
)
from processors.kafka.producer import produce
from processors.kafka.serde import Codec
from processors.operate import replay
from processors.settings import KafkaSettings, ProcessorSettings, TopicSettings

log = logs.get("kycstream.grow")

GROWN_ROLES = ("raw", "events", "state", "dedup", "dlq")  # `expected` is not co-partitioned: it stays
_COPY_COMMIT_EVERY = 100_000  # a copy cut short goes on from its last commit (at most this many again)
_READ_TIMEOUT_S = 24 * 3600.0  # reading a topic to its end: a guard, not a budget


def grown(live: TopicSettings, partitions: int, suffix: str) -> TopicSettings:
    """The new set: each co-partitioned topic's name with `suffix`, and `partitions` partitions."""
    names = {role: getattr(live, role) + suffix for role in GROWN_ROLES}
    return TopicSettings.model_validate(live.model_dump() | names | {"partitions": partitions})


def grow(settings: ProcessorSettings, partitions: int, suffix: str, say: Callable[[str], None]) -> Counter[str]:
    """One catch-up run (see the module's docstring); `say` reports each step to the operator."""
    live = settings.topics
    target = grown(live, partitions, suffix)
    kafka = settings.kafka
    group = f"{settings.processor.group_id}-grow"
    codec = Codec(config.schema_registry(kafka))
    tally: Counter[str] = Counter()
    try:
        for name in replay.ensure_targets(kafka, live, target, raw_partitions=partitions):
            say(f"created {name}")
        try:
            replay.refuse_while_consumed(kafka, settings.processor.group_id, live.raw)
            busy = None
        except ConfigError as exc:
            busy = str(exc)
        tally["copied"] = _copy(kafka, live.raw, target.raw, group)
        say(f"copied {tally['copied']} records of {live.raw} into {target.raw}")
        replayed = replay.replay(settings.with_overrides(topics=_names(target)), None, group=group)
        tally.update({k: v for k, v in replayed.items() if k != "dead_letters_held"})
        say(
            f"replayed {replayed['records']} records of {target.raw}: {replayed['events']} events, "
            f"{replayed['duplicates']} repeats, {replayed['dead_letters']} dead letters"
        )
        tally["letters"] = _copy(kafka, live.dlq, target.dlq, group, keep=_reconciler_letter(codec, live))
        say(f"copied {tally['letters']} of the reconciler's dead letters into {target.dlq}")
        if busy is not None:
            say(f"not finished: {busy}")
            return tally
        tally["carried"] = _carry_states(kafka, codec, live.state, target.state)
        say(f"carried {tally['carried']} states of {live.state} that the rebuilt table lacked or that outrank it")
        at = _hand_over(kafka, group, settings.processor.group_id, target.raw)
        tally["finished"] = 1
        say(f"finished: {settings.processor.group_id} goes on in {target.raw} from {at}")
        return tally
    except KafkaException as exc:
        raise BrokerError(f"growing partitions failed: {exc.args[0].str()}") from exc
    finally:
        codec.close()


def _names(t: TopicSettings) -> dict[str, str]:
    return {role: getattr(t, role) for role in GROWN_ROLES}


def _copy(
    kafka: KafkaSettings, source: str, target: str, group: str, keep: Callable[[Message], bool] | None = None
) -> int:
    """Copy `source`'s records from `group`'s offsets on it to its end into `target`, each with its
    key (placed by the producers' partitioner), headers and time, committing as they are acknowledged.
    A crash between an acknowledgement and its commit copies a record twice: a raw delivery twice
    is a repeat (one event); a letter twice, a second letter pointing at the same record."""
    consumer = Consumer(config.consumer(kafka, group, role="replay"))
    producer = Producer(config.producer(kafka, role="replay", **{"linger.ms": 20}))
    failures: list[str] = []

    def on_delivery(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            failures.append(err.str())

    def commit(reached: dict[int, int]) -> None:
        if producer.flush(120) or failures:
            raise BrokerError(f"copies into {target} were not all acknowledged ({failures[:3]}); run again")
        if reached:
            consumer.commit(offsets=[TopicPartition(source, p, o) for p, o in reached.items()], asynchronous=False)

    copied = 0
    reached: dict[int, int] = {}
    try:
        starts = replay.resumed(consumer, source, reader.topic_partitions(consumer, source))
        froms = [(source, tp.partition, tp.offset) for tp in starts]
        for msg in reader.read_partitions(consumer, froms, _READ_TIMEOUT_S):
            reached[msg.partition() or 0] = (msg.offset() or 0) + 1
            if keep is None or keep(msg):
                kind, at = msg.timestamp() or (0, 0)
                produce(
                    producer,
                    target,
                    msg.value(),
                    msg.key(),
                    headers=_headers(msg),
                    on_delivery=on_delivery,
                    timestamp=at if kind and at > 0 else 0,
                )
                copied += 1
                if copied % _COPY_COMMIT_EVERY == 0:
                    commit(reached)
        commit(reached)
        return copied
    finally:
        consumer.close()


def _headers(msg: Message) -> list[tuple[str, str | bytes | None]] | None:
    found = msg.headers()
    return list(found.items()) if isinstance(found, dict) else found


def _reconciler_letter(codec: Codec, live: TopicSettings) -> Callable[[Message], bool]:
    """Whether a dead letter is one the reconciler wrote (a poll's or a fetch's): the replay writes the
    raw topic's letters again, pointing at the new raw topic."""

    def keep(msg: Message) -> bool:
        try:
            letter = codec.decode("DeadLetter", msg.value() or b"", live.dlq)
        except SerdeError:
            return False
        return bool(letter.get("source_topic") != live.raw)

    return keep


def _carry_states(kafka: KafkaSettings, codec: Codec, live: str, rebuilt: str) -> int:
    """Write into `rebuilt` each state of `live` that it lacks or that outranks its own (state.outranks):
    a verification whose earlier deliveries left the raw topic by retention keeps its decision. The
    carried state counts no raw offset of the new raw topic, and as many events as the greater count.
    Both tables are held on local disk while they are compared, not in memory."""
    producer = Producer(config.producer(kafka, role="replay", **{"linger.ms": 20}))
    failures: list[str] = []

    def on_delivery(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            failures.append(err.str())

    carried = 0
    with tempfile.TemporaryDirectory(prefix="kycstream-grow-") as tmp:
        new = _table(kafka, rebuilt, Path(tmp) / "rebuilt", with_partition=True)
        old = _table(kafka, live, Path(tmp) / "live", with_partition=False)
        try:
            for key, value in old.items():
                assert isinstance(key, bytes) and isinstance(value, bytes)  # raw_mode
                theirs = state_from_record(codec.decode("VerificationState", value, live))
                found: bytes | None = new.get(key)
                ours = state_from_record(codec.decode("VerificationState", found[2:], rebuilt)) if found else None
                if ours is not None and not state.outranks(theirs, ours):
                    continue
                carry = dataclasses.replace(
                    theirs,
                    raw_offset=ours.raw_offset if ours else -1,
                    event_count=max(theirs.event_count, ours.event_count if ours else 0),
                )
                # Where the rebuilt table holds the key, else the key's partition now (the partitioner).
                where = int.from_bytes(found[:2]) if found else None
                value = codec.encode("VerificationState", state_to_record(carry), rebuilt)
                produce(producer, rebuilt, value, key, partition=where, on_delivery=on_delivery)
                carried += 1
        finally:
            new.close()
            old.close()
    if producer.flush(120) or failures:
        raise BrokerError(f"carried states were not all acknowledged ({failures[:3]}); run again")
    return carried


def _table(kafka: KafkaSettings, topic: str, path: Path, *, with_partition: bool) -> Rdict:
    """The latest value of each key of a compacted topic, in a database at `path` (with
    `with_partition`, the value prefixed by two bytes: the partition it was read from)."""
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    table = Rdict(str(path), options)
    consumer = Consumer(config.consumer(kafka, None, role="replay"))
    try:
        partitions = reader.topic_partitions(consumer, topic)
        starts = [(topic, p, OFFSET_BEGINNING) for p in partitions]
        for msg in reader.read_partitions(consumer, starts, _READ_TIMEOUT_S):
            key, value = msg.key() or b"", msg.value()
            if value is None:
                table.delete(key)
            else:
                table[key] = (msg.partition() or 0).to_bytes(2) + value if with_partition else value
    finally:
        consumer.close()
    return table


def _hand_over(kafka: KafkaSettings, grow_group: str, processors: str, raw: str) -> dict[int, int]:
    """Commit, as the processors' group, the grow group's offsets on the new raw topic."""
    consumer = Consumer(config.consumer(kafka, grow_group, role="replay"))
    try:
        partitions = reader.topic_partitions(consumer, raw)
    finally:
        consumer.close()
    at = reader.committed_offsets(kafka, grow_group, raw, partitions)
    if at:
        handing = Consumer(config.consumer(kafka, processors, role="replay"))
        try:
            handing.commit(offsets=[TopicPartition(raw, p, o) for p, o in at.items()], asynchronous=False)
        finally:
            handing.close()
    return at
