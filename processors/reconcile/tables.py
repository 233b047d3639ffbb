"""What the reconciler knows, read from Kafka as tables: its expectations, the verifications'
states, and the dead letters it wrote.

Expectations (kyc.verification.expected.v1) are split across reconcilers by the consumer group and
each assigned partition is read whole from the beginning, never committed. The reconciler writes
an expectation back with its `last_polled_at` and `polls` after each poll, so a restart or a new
owner of the partition knows when each was last polled. The state table and the
DLQ are read whole by every reconciler (assigned, never committed; the states kept by key in
memory or on disk with their offsets, states.py): the states say which
verifications are settled, the DLQ which expectations were already dead-lettered (a crash between
a letter and its tombstone must not write the letter again). Every partition is read to its end
(partition EOF) before the reconciler acts on what it holds: `whole()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from prometheus_client import Counter, Gauge

from processors import logs
from processors.avro.records import dead_letter_from_record, expectation_from_record, state_from_record
from processors.errors import SerdeError
from processors.kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition, config, reader
from processors.kafka.serde import Codec
from processors.model import Expectation
from processors.reconcile.states import States
from processors.settings import ReconcileSettings
from processors.state import SETTLED

log = logs.get("kycstream.reconcile")

# The reasons of the letters the reconciler writes for an expectation (read back after a restart).
LETTER_REASONS = frozenset({b"poll_expired", b"poll_unauthorized"})


@dataclass
class Tracked:
    expectation: Expectation
    partition: int
    offset: int
    raw: bytes
    polls: int = 0  # polls done: their answer, if any, acknowledged by Kafka
    last_poll: datetime | None = None
    saved: bool = True  # the table's latest record holds last_poll (else the reconciler writes it back)
    polling: bool = False  # a poll of it was started and has not been acted on yet
    writing: bool = False  # a record for it was produced and its delivery report is not in yet
    closed: bool = False  # its dead letter is acknowledged: never polled again; a tombstone follows


class Tables:
    def __init__(
        self, settings: ReconcileSettings, codec: Codec, undecodable: Counter, open_gauge: Gauge, revoked: Counter
    ) -> None:
        """`revoked`: partitions taken from this member, by group (`expected` here)."""
        self.topics = settings.topics
        self.codec = codec
        self.undecodable = undecodable
        self.open_gauge = open_gauge
        self.revoked = revoked
        r = settings.reconcile
        self.expected = Consumer(
            config.consumer(
                settings.kafka,
                r.group_id,
                role="reconciler",
                **{"session.timeout.ms": r.session_timeout_ms, "max.poll.interval.ms": r.max_poll_interval_ms},
            )
        )
        # state and DLQ
        self.others = Consumer(config.consumer(settings.kafka, f"{r.group_id}-state", role="reconciler-state"))
        self.tracked: dict[str, Tracked] = {}
        self.states = States(settings, codec)  # by key: in memory or on disk (reconcile.state_store)
        self.lettered: set[tuple[int, int]] = set()  # (partition, offset) of expectations with a letter
        self._assigned: set[int] = set()  # this member's partitions of the expected topic
        self._unread: set[int] = set()  # ... not read to their end since they were assigned
        self._others_unread: set[tuple[str, int]] = set()  # state and DLQ partitions not read to their end

    def start(self) -> None:
        self.expected.subscribe(
            [self.topics.expected], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
        )
        states = self.states.starts(self.others, reader.topic_partitions(self.others, self.topics.state))
        dlq = reader.topic_partitions(self.others, self.topics.dlq)
        letters = [TopicPartition(self.topics.dlq, p, OFFSET_BEGINNING) for p in dlq]
        self._others_unread = {(tp.topic, tp.partition) for tp in (*states, *letters)}
        self.others.assign([*states, *letters])

    def whole(self) -> bool:
        """Act only on whole tables: a partition read halfway may still hold the tombstone of an
        expectation already dead-lettered, and a state table read halfway may miss a decision."""
        return bool(self._assigned) and not self._unread and not self._others_unread

    def settled(self, key: str) -> bool:
        state = self.states.get(key)
        return state is not None and state[0] in SETTLED

    def read(self) -> None:
        """What has arrived since the last read."""
        for msg in self.expected.consume(1000, 0.2):
            error = msg.error()
            if error is None:
                self._track(msg)
            elif error.code() == KafkaError._PARTITION_EOF:
                self._unread.discard(msg.partition() or 0)
            else:
                log.warning("consume_error", error=error.str())
        for msg in self.others.consume(10_000, 0.2):
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    self._others_unread.discard((msg.topic() or "", msg.partition() or 0))
                    if msg.topic() == self.topics.state:
                        self.states.commit(msg.partition() or 0)
                else:
                    log.warning("consume_error", error=error.str())
            elif msg.topic() == self.topics.state:
                self._remember_state(msg)
            else:
                self._remember_letter(msg)

    def close(self) -> None:
        self.expected.close()
        self.others.close()
        self.states.close()

    # --- rebalances -----------------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The expected topic is a table: read each assigned partition whole, never commit.
        consumer.assign([TopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING) for tp in partitions])
        assigned = {tp.partition for tp in partitions}
        self._assigned |= assigned
        self._unread |= assigned
        log.info("expectations_assigned", partitions=sorted(assigned))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gone = {tp.partition for tp in partitions}
        self.revoked.labels("expected").inc(len(gone))
        self._assigned -= gone
        self._unread -= gone
        self.tracked = {k: t for k, t in self.tracked.items() if t.partition not in gone}
        if not self._assigned:  # no tick sets it until partitions come back
            self.open_gauge.set(0)

    # --- records ---------------------------------------------------------------------------------------

    def _undecodable(self, table: str, msg: Message, exc: SerdeError) -> None:
        """Our own message (schema and field, never a value): logged and counted, the record skipped."""
        self.undecodable.labels(table).inc()
        log.warning("record_undecodable", table=table, partition=msg.partition(), offset=msg.offset(), error=str(exc))

    def _track(self, msg: Message) -> None:
        key = (msg.key() or b"").decode()
        if msg.value() is None:
            self.tracked.pop(key, None)
            return
        try:
            expectation = expectation_from_record(
                self.codec.decode("Expectation", msg.value() or b"", self.topics.expected)
            )
        except SerdeError as exc:
            self._undecodable("expected", msg, exc)
            return
        at = (msg.partition() or 0, msg.offset() or 0, msg.value() or b"")
        current = self.tracked.get(key)
        if current is not None and current.expectation.same_request(expectation):
            self._polled_before(current, expectation, *at)
        elif current is not None and _written_back_over(current.expectation, expectation):
            current.saved = False  # written again, to be the table's latest
        else:
            self.tracked[key] = Tracked(expectation, *at, polls=expectation.polls, last_poll=expectation.last_polled_at)

    @staticmethod
    def _polled_before(tracked: Tracked, record: Expectation, partition: int, offset: int, raw: bytes) -> None:
        """The same expectation written back with its poll time (by this or an earlier reconciler)."""
        if offset < tracked.offset:  # read back after a later one was acknowledged (_save_poll_time)
            return
        tracked.expectation, tracked.partition, tracked.offset, tracked.raw = record, partition, offset, raw
        newer = record.last_polled_at is not None and (
            tracked.last_poll is None or record.last_polled_at > tracked.last_poll
        )
        if newer:
            tracked.last_poll, tracked.polls = record.last_polled_at, record.polls
        tracked.saved = record.last_polled_at == tracked.last_poll

    def _remember_state(self, msg: Message) -> None:
        value = msg.value()
        state = None
        if value is not None:
            try:
                state = state_from_record(self.codec.decode("VerificationState", value, self.topics.state))
            except SerdeError as exc:
                self._undecodable("state", msg, exc)
                return
        self.states.put(msg.partition() or 0, msg.offset() or 0, msg.key() or b"", value, state)

    def _remember_letter(self, msg: Message) -> None:
        """A letter a reconciler wrote for an expectation (by its reason header, then its source):
        that expectation record is closed, whoever wrote it, even if its tombstone never landed."""
        reason = dict(msg.headers() or []).get("kycstream-reason")
        if reason not in LETTER_REASONS:
            return
        try:
            letter = dead_letter_from_record(self.codec.decode("DeadLetter", msg.value() or b"", self.topics.dlq))
        except SerdeError as exc:
            self._undecodable("dlq", msg, exc)
            return
        if letter.source_topic == self.topics.expected:
            self.lettered.add((letter.partition, letter.offset))


def _written_back_over(newer: Expectation, record: Expectation) -> bool:
    """`record` is a reconciler's poll time for the request `newer` replaced, written as `newer`
    came: the newer request stays."""
    return record.last_polled_at is not None and record.expected_at < newer.expected_at
