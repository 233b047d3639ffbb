"""The processor's output writer: one batch's records, produced, and waited for until Kafka answered.

Every output of raw partition p goes to partition p of its topic (co-partitioning). A batch's
records carry delivery reports; a batch is done only when each was acknowledged or failed for
good, so a batch redone after a failure never has records of its first try still queued.
"""

from __future__ import annotations

import collections
import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from opentelemetry.trace import Span
from prometheus_client import Counter

from processors import logs, tracing
from processors.avro.records import event_to_record, state_to_record
from processors.errors import BrokerError
from processors.kafka import KafkaError, Message, Producer, TopicPartition
from processors.kafka.producer import RenewableProducer, produce, produce_dead_letter
from processors.kafka.serde import Codec
from processors.model import DeadLetter, VerificationEvent, VerificationState
from processors.settings import ProcessorSection, TopicSettings

log = logs.get("kycstream.processor")

DedupOutput = tuple[int, bytes, bytes]  # (partition, key, encoded DedupRecord)


@dataclass
class Batch:
    """What one batch of raw records produced, and where it started (to rewind to)."""

    first: dict[tuple[str, int], int] = field(default_factory=dict)
    last: dict[tuple[str, int], int] = field(default_factory=dict)
    errors: list[KafkaError] = field(default_factory=list)
    keys: dict[int, dict[str, VerificationEvent]] = field(default_factory=dict)  # partition -> new keys
    states: dict[int, dict[str, VerificationState]] = field(default_factory=dict)
    encoded_states: dict[int, dict[str, bytes]] = field(default_factory=dict)  # as produced: a disk store keeps them
    event_offsets: dict[int, list[int]] = field(default_factory=dict)
    state_offsets: dict[int, int] = field(default_factory=dict)  # partition -> last state record acknowledged
    anchors: dict[int, int] = field(default_factory=dict)  # partition -> the anchor its dedup records carry
    expires_s: int = 0  # when the batch's new keys expire (dedup_records)
    tally: collections.Counter[str] = field(default_factory=collections.Counter)
    now: datetime | None = None  # the states' updated_at: one clock reading per batch
    # (metric, labels) -> count: counted once the batch is durable, one inc() per label set
    counts: collections.Counter[tuple[Counter, tuple[str, ...]]] = field(default_factory=collections.Counter)

    def saw(self, topic: str, partition: int, offset: int) -> None:
        tp = (topic, partition)
        if tp not in self.first:
            self.first[tp] = offset
        self.last[tp] = offset

    def next_offsets(self) -> list[TopicPartition]:
        return [TopicPartition(t, p, o + 1) for (t, p), o in self.last.items()]

    def start_offsets(self) -> list[TopicPartition]:
        return [TopicPartition(t, p, o) for (t, p), o in self.first.items()]

    @property
    def partitions(self) -> list[int]:
        return sorted({partition for _, partition in self.first})

    @property
    def failures(self) -> list[str]:
        return [err.str() for err in self.errors]

    def on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.errors.append(err)

    def on_state_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.errors.append(err)
        else:
            partition, offset = msg.partition() or 0, msg.offset() or 0
            self.state_offsets[partition] = max(offset, self.state_offsets.get(partition, -1))

    def on_event_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.errors.append(err)
        else:
            self.event_offsets.setdefault(msg.partition() or 0, []).append(msg.offset() or 0)


class Outputs:
    """Produces events, states, dead letters and dedup records; drains; replaces a gone producer."""

    def __init__(
        self, conf: dict[str, object], codec: Codec, topics: TopicSettings, p: ProcessorSection, retries: Counter
    ) -> None:
        self.codec = codec
        self.topics = topics
        self.p = p
        self.retries = retries
        self._slot = RenewableProducer(conf, transactional=p.processing_guarantee == "exactly_once")

    @property
    def producer(self) -> Producer:
        return self._slot.current

    def renew_if_gone(self) -> None:
        if (old := self._slot.renew_if_gone()) is not None:
            old.flush(0)  # purged: its reports come at once; the batches they belonged to are redone

    def note(self, err: KafkaError) -> None:
        self._slot.note(err)

    # --- records -----------------------------------------------------------------------------------

    def event(self, batch: Batch, partition: int, event: VerificationEvent) -> None:
        headers: list[tuple[str, str | bytes | None]] = [("kycstream-event-id", event.event_id.encode())]
        on_delivery = batch.on_event_delivery
        if tracing.ENABLED:  # a span from produce to delivery report, child of the record's processing
            span = tracing.send(self.topics.events, partition, event.event_id)
            headers += tracing.context_headers(span)
            on_delivery = functools.partial(_traced, span, on_delivery)
        produce(
            self.producer,
            self.topics.events,
            self.codec.encode("VerificationEvent", event_to_record(event), self.topics.events),
            event.key.encode(),
            partition=partition,
            headers=headers,
            on_delivery=on_delivery,
        )

    def dead_letter(self, batch: Batch, letter: DeadLetter, key: bytes | None) -> None:
        produce_dead_letter(self.producer, self.codec, self.topics.dlq, letter, key, batch.on_delivery)

    def states(self, batch: Batch) -> None:
        for partition, states in batch.states.items():
            encoded = batch.encoded_states.setdefault(partition, {})
            for key, current in states.items():
                value = self.codec.encode("VerificationState", state_to_record(current), self.topics.state)
                encoded[key] = value
                produce(
                    self.producer,
                    self.topics.state,
                    value,
                    key.encode(),
                    partition=partition,
                    on_delivery=batch.on_state_delivery,
                )

    def tombstones(self, batch: Batch, partition: int, keys: list[str]) -> None:
        for key in keys:
            produce(
                self.producer, self.topics.dedup, None, key.encode(), partition=partition, on_delivery=batch.on_delivery
            )

    def dedup_in_transaction(self, records: list[DedupOutput], acked: dict[int, int]) -> None:
        """Within a transaction: its commit says whether they landed (`acked`: where, when it does)."""
        on_delivery = functools.partial(_note_offset, acked)
        for partition, key, value in records:
            produce(self.producer, self.topics.dedup, value, key, partition=partition, on_delivery=on_delivery)

    # --- waiting for Kafka -------------------------------------------------------------------------

    def write_dedup(
        self, records: list[DedupOutput], stop: threading.Event | None = None, acked: dict[int, int] | None = None
    ) -> bool:
        """Produce dedup records until each is acknowledged; False when stopping first (not
        committed then: the next owner repairs from the events topic). `acked` learns the last
        offset acknowledged per partition."""
        pending = records
        failed: list[DedupOutput] = []
        landed: dict[int, int] = {} if acked is None else acked

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                self.note(err)
                failed.append((msg.partition() or 0, msg.key() or b"", msg.value() or b""))
            else:
                _note_offset(landed, None, msg)

        while pending:
            failed.clear()
            for partition, key, value in pending:
                produce(self.producer, self.topics.dedup, value, key, partition=partition, on_delivery=on_delivery)
            if self.drain(stop):
                return False
            if not failed:
                return True
            self.retries.inc()
            log.warning("dedup_records_retry", failed=len(failed))
            if stop is not None and stop.is_set():
                return False
            time.sleep(self.p.retry_backoff_s)
            self.renew_if_gone()
            pending = list(failed)
        return True

    def drain(self, stop: threading.Event | None) -> int:
        """Flush until every record produced has its delivery report, delivered or failed for good
        (within delivery_timeout_s): a batch redone while its records are still queued would write
        them twice. Returns the records still queued, non-zero only when `stop` is set meanwhile."""
        left = self.producer.flush(self.p.flush_timeout_s)
        while left and not (stop is not None and stop.is_set()):
            log.warning("outputs_not_acknowledged_yet", queued=left, within_s=self.p.delivery_timeout_s)
            left = self.producer.flush(self.p.flush_timeout_s)
        return int(left)

    def flush_or_raise(self, batch: Batch, what: str) -> None:
        left = self.producer.flush(self.p.flush_timeout_s)
        if left or batch.errors:
            raise BrokerError(f"{what}: outputs not acknowledged ({left} undelivered, {batch.failures[:3]})")

    def close(self) -> None:
        self.producer.flush(self.p.flush_timeout_s)


def _traced(
    span: Span, on_delivery: Callable[[KafkaError | None, Message], None], err: KafkaError | None, msg: Message
) -> None:
    tracing.acked(span, msg.partition(), msg.offset() if err is None else None, err.str() if err is not None else None)
    span.end()
    on_delivery(err, msg)


def _note_offset(acked: dict[int, int], err: KafkaError | None, msg: Message) -> None:
    if err is None:
        partition, offset = msg.partition() or 0, msg.offset() or 0
        acked[partition] = max(offset, acked.get(partition, -1))
