"""The normalizer's run loop: consume raw deliveries, act on what the pipeline decides, commit.

at_least_once (default, any broker), per batch:
  1. produce events, states and dead letters; wait for every acknowledgement. Any failure rewinds
     the consumer to the batch start; nothing is remembered.
  2. remember the batch's idempotency keys and states, then produce their dedup records (each
     carrying "every event below offset X of this partition has its record"); retried until
     acknowledged.
  3. commit the offsets.
A crash between 1 and 2 leaves events without dedup records; the next owner of the partition
finds them by reading the events partition from X on restore, so a replayed delivery is still
recognised: every event is written once (by event_id), none is lost.

exactly_once (real Kafka): the same outputs and the offsets in one transaction per batch.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge

from processors import logs, state
from processors.errors import BrokerError, ConfigError, SerdeError
from processors.kafka import config, recovery
from processors.kafka.producer import produce_dead_letter, producer_gone
from processors.kafka.serde import (
    Codec,
    dedup_record,
    delivery_from_record,
    event_to_record,
    state_to_record,
)
from processors.model import (
    DeadLetter,
    Notice,
    RawDelivery,
    RawRef,
    Rejection,
    VerificationEvent,
    VerificationState,
)
from processors.pipeline import normalize
from processors.settings import ProcessorSettings

log = logs.get("kycstream.processor")


class ProcessorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "kycstream_events", "Events emitted by provider and status.", ["provider", "status"], registry=r
        )
        self.dead_letters = Counter(
            "kycstream_dead_letters",
            "Deliveries sent to the DLQ by provider and reason.",
            ["provider", "reason"],
            registry=r,
        )
        self.notices = Counter(
            "kycstream_notices",
            "Provider notices that are no verification result (no event, no dead letter), by kind.",
            ["provider", "kind"],
            registry=r,
        )
        self.dedup_hits = Counter(
            "kycstream_dedup_hits", "Deliveries recognised as repeats, by provider.", ["provider"], registry=r
        )
        self.retries = Counter(
            "kycstream_batch_retries", "Batches rewound because an output was not acknowledged.", registry=r
        )
        self.repaired = Counter(
            "kycstream_restore_repaired_events",
            "Events found without their dedup record on restore (after a crash).",
            registry=r,
        )
        self.restore_seconds = Gauge(
            "kycstream_restore_seconds", "Duration of the last restore, by partition.", ["partition"], registry=r
        )
        self.dedup_keys = Gauge(
            "kycstream_dedup_keys", "Idempotency keys held, by partition.", ["partition"], registry=r
        )
        self.owned = Gauge("kycstream_partitions_owned", "Raw partitions this processor owns.", registry=r)


@dataclass
class _Batch:
    first: dict[tuple[str, int], int] = field(default_factory=dict)
    last: dict[tuple[str, int], int] = field(default_factory=dict)
    errors: list[KafkaError] = field(default_factory=list)
    keys: dict[int, dict[str, VerificationEvent]] = field(default_factory=dict)  # partition -> new keys
    states: dict[int, dict[str, VerificationState]] = field(default_factory=dict)
    event_offsets: dict[int, list[int]] = field(default_factory=dict)
    tally: collections.Counter[str] = field(default_factory=collections.Counter)

    def saw(self, topic: str, partition: int, offset: int) -> None:
        tp = (topic, partition)
        if tp not in self.first:
            self.first[tp] = offset
        self.last[tp] = offset

    def next_offsets(self) -> list[TopicPartition]:
        return [TopicPartition(t, p, o + 1) for (t, p), o in self.last.items()]

    @property
    def failures(self) -> list[str]:
        return [err.str() for err in self.errors]

    def on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.errors.append(err)

    def on_event_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.errors.append(err)
        else:
            self.event_offsets.setdefault(msg.partition() or 0, []).append(msg.offset() or 0)


def _epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


class Engine:
    """Normalize, deduplicate and keep state for the raw partitions it owns. Shared by the group
    consumer (`Normalizer`) and by `replay`."""

    def __init__(
        self,
        settings: ProcessorSettings,
        *,
        codec: Codec | None = None,
        metrics: ProcessorMetrics | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.topics = settings.topics
        self.p = settings.processor
        self.codec = codec or Codec(config.schema_registry(settings.kafka))
        self.metrics = metrics or ProcessorMetrics()
        self.clock = clock
        self.window = timedelta(seconds=self.p.dedup_window_s)
        self.transactional = self.p.processing_guarantee == "exactly_once"
        overrides: dict[str, object] = {"linger.ms": self.p.linger_ms}
        if not self.transactional:  # a transaction bounds its own records (transaction.timeout.ms)
            overrides["message.timeout.ms"] = int(self.p.delivery_timeout_s * 1000)
        else:
            overrides["transactional.id"] = (
                self.p.transactional_id or f"kycstream-{self.p.group_id}-{socket.gethostname()}"
            )
        self._producer_conf = {**config.producer(settings.kafka, **overrides), "error_cb": self._on_producer_error}
        self._producer_gone = False
        self.producer = self._new_producer()
        self._restorer = Consumer(
            config.consumer(
                settings.kafka,
                f"{self.p.group_id}-restore",
                **{"enable.partition.eof": True, "fetch.wait.max.ms": 10},  # bulk reads: never wait for data
            )
        )
        self.owned: dict[int, recovery.PartitionStores] = {}
        self.tally: collections.Counter[str] = collections.Counter()  # events, duplicates, notices, dead_letters
        self._last_expiry = time.monotonic()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}  # metric children, see _count

    def check_partitions(self) -> int:
        """Raw, events, state and dedup must have the same partition count: outputs are co-partitioned."""
        try:
            metadata = self._restorer.list_topics(timeout=10)
        except KafkaException as exc:
            raise BrokerError(f"Kafka did not answer: {exc.args[0].str()}") from exc
        counts = {}
        for name in (self.topics.raw, self.topics.events, self.topics.state, self.topics.dedup, self.topics.dlq):
            topic = metadata.topics.get(name)
            if topic is None or topic.error is not None:
                raise ConfigError(f"topic {name} does not exist: run `kycstream topics create` first")
            counts[name] = len(topic.partitions)
        raw = counts[self.topics.raw]
        wrong = {n: c for n, c in counts.items() if n != self.topics.dlq and c != raw}
        if wrong:
            raise ConfigError(
                f"{self.topics.raw} has {raw} partitions but "
                + ", ".join(f"{n} has {c}" for n, c in wrong.items())
                + ": events, state and dedup are co-partitioned with the raw topic and need the same count"
            )
        return raw

    def _new_producer(self) -> Producer:
        producer = Producer(self._producer_conf)
        if self.transactional:
            producer.init_transactions(30)
        return producer

    def _on_producer_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._producer_gone = True

    def _note_failure(self, err: KafkaError) -> None:
        if producer_gone(err):
            self._producer_gone = True

    def _renew_producer_if_gone(self) -> None:
        """A fenced or fatally failed idempotent producer fails every record from then on (seen on the
        embedded broker once records timed out in an outage): replace it. Its records are settled."""
        if not self._producer_gone:
            return
        self._producer_gone = False
        old, self.producer = self.producer, self._new_producer()
        old.purge(in_queue=True, in_flight=True, blocking=False)
        old.flush(0)
        log.warning("producer_replaced")

    # --- ownership -----------------------------------------------------------------------------

    def restore(self, partitions: list[int]) -> None:
        """Take ownership of raw partitions: restore their stores, then repair after a crash."""
        started = time.monotonic()
        fresh = {
            p: recovery.PartitionStores(
                p, recovery.new_store(self.p.dedup_store, self.p.state_dir, self.topics.dedup, p)
            )
            for p in partitions
            if p not in self.owned
        }
        if not fresh:
            return
        timeout = self.p.restore_timeout_s
        recovery.restore(self._restorer, self.codec, self.topics.dedup, self.topics.state, fresh, self.clock(), timeout)
        self.owned.update(fresh)
        repaired = 0
        if not self.transactional:  # a transaction never leaves events without their dedup records
            batch = _Batch()
            for partition, offset, event in recovery.unmarked_events(
                self._restorer, self.codec, self.topics.events, fresh, timeout
            ):
                if event.idempotency_key in batch.keys.get(partition, {}):
                    continue
                # The state may already count it (states are acknowledged with their events).
                self._remember(fresh[partition], batch, event, count=not self._counted(fresh[partition], event))
                batch.event_offsets.setdefault(partition, []).append(offset)
                repaired += 1
            for partition, stores in fresh.items():
                self._tombstone(partition, sorted(stores.expired), batch)
            self._produce_states(batch)
            self._flush_or_raise(batch, "restore")
            self._apply(batch)
            anchors = {p: stores.repair_from for p, stores in fresh.items()}
            self._write_dedup_records(batch, anchors=anchors)
        # What was restored lives as long as the partition is owned: out of the cyclic collector's
        # full passes, which otherwise rescan every state and key (~8% of the processor's time).
        gc.collect()
        gc.freeze()
        elapsed = time.monotonic() - started
        for partition, stores in fresh.items():
            stores.expired.clear()
            self.metrics.restore_seconds.labels(str(partition)).set(elapsed)
            self.metrics.dedup_keys.labels(str(partition)).set(len(stores.dedup))
        self.metrics.owned.set(len(self.owned))
        self.metrics.repaired.inc(repaired)
        log.info(
            "partitions_restored",
            partitions=sorted(fresh),
            keys=sum(len(s.dedup) for s in fresh.values()),
            states=sum(len(s.states) for s in fresh.values()),
            repaired=repaired,
            seconds=round(elapsed, 3),
        )

    def release(self, partition: int) -> None:
        stores = self.owned.pop(partition, None)
        if stores is not None:
            stores.dedup.close()
        self.metrics.owned.set(len(self.owned))

    # --- processing ------------------------------------------------------------------------------

    def process(
        self, messages: Iterable[Message], consumer: Consumer | None, stop: threading.Event
    ) -> list[TopicPartition] | None:
        """Handle one batch. None when its outputs are not durable (the consumer was rewound to
        redo it); else the offsets the caller commits next (none in exactly_once: the transaction
        committed them)."""
        self._renew_producer_if_gone()
        batch = _Batch()
        if self.transactional:
            self.producer.begin_transaction()
        for msg in messages:
            error = msg.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("consume_error", error=error.str())
                continue
            topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
            batch.saw(topic, partition, offset)
            if partition not in self.owned:
                self.restore([partition])
            self._handle(msg, topic, partition, offset, batch)
        if self.transactional:
            return [] if self._commit_transaction(batch, consumer) else None
        if not batch.last:
            return []
        self._produce_states(batch)
        if self._drain(stop):
            return None  # stopping with outputs in doubt: uncommitted, the next owner repairs
        if batch.errors:
            self._redo_after_failure(batch, consumer)
            return None
        self._apply(batch)
        if not self._write_dedup_records(batch, stop=stop):
            return None
        self.tally.update(batch.tally)
        return batch.next_offsets()

    def _handle(self, msg: Message, topic: str, partition: int, offset: int, batch: _Batch) -> None:
        value = msg.value() or b""
        delivery: RawDelivery | None = None
        try:
            delivery = delivery_from_record(self.codec.decode("RawDelivery", value, topic))
        except (SerdeError, KeyError, TypeError) as exc:
            outcome: VerificationEvent | Notice | Rejection = Rejection("undecodable_envelope", str(exc))
        else:
            outcome = normalize(delivery, RawRef(topic, partition, offset, delivery.request_id))

        if isinstance(outcome, Rejection):
            self._dead_letter(msg, delivery, outcome, batch)
            batch.tally["dead_letters"] += 1
            return
        if isinstance(outcome, Notice):
            assert delivery is not None
            self._count(self.metrics.notices, delivery.provider, outcome.kind)
            batch.tally["notices"] += 1
            return
        stores = self.owned[partition]
        key = outcome.idempotency_key
        if key in stores.dedup or key in batch.keys.get(partition, {}):
            self._count(self.metrics.dedup_hits, outcome.provider)
            batch.tally["duplicates"] += 1
            return
        batch.tally["events"] += 1
        self.producer.produce(
            self.topics.events,
            key=outcome.key.encode(),
            value=self.codec.encode("VerificationEvent", event_to_record(outcome), self.topics.events),
            partition=partition,
            headers=[("kycstream-event-id", outcome.event_id.encode())],
            on_delivery=batch.on_event_delivery,
        )
        # After a crash a state may have landed without its events (different partitions, acknowledged
        # independently): the state already counts this delivery, so the event is written, not counted.
        self._remember(stores, batch, outcome, count=not self._counted(stores, outcome))
        self._count(self.metrics.events, outcome.provider, outcome.status.value)

    def _count(self, metric: Counter, *labels: str) -> None:
        """metric.labels(*labels).inc(), the labelled child looked up once (labels() takes a lock)."""
        child = self._children.get((id(metric), labels))
        if child is None:
            child = self._children[(id(metric), labels)] = metric.labels(*labels)
        child.inc()

    def _remember(
        self, stores: recovery.PartitionStores, batch: _Batch, event: VerificationEvent, count: bool = True
    ) -> None:
        p = stores.partition
        batch.keys.setdefault(p, {})[event.idempotency_key] = event
        if count:
            pending = batch.states.setdefault(p, {})
            current = pending.get(event.key) or stores.states.get(event.key)
            pending[event.key] = state.apply(current, event, self.clock())

    @staticmethod
    def _counted(stores: recovery.PartitionStores, event: VerificationEvent) -> bool:
        return state.counted(stores.states.get(event.key), event)

    def _dead_letter(self, msg: Message, delivery: RawDelivery | None, why: Rejection, batch: _Batch) -> None:
        letter = DeadLetter(
            reason=why.code,
            detail=why.detail,
            failed_at=self.clock(),
            source_topic=msg.topic() or "",
            partition=msg.partition() or 0,
            offset=msg.offset() or 0,
            original_value=msg.value() or b"",
            original_key=msg.key(),
            request_id=delivery.request_id if delivery else None,
            source=delivery.source if delivery else None,
            provider=delivery.provider if delivery else None,
        )
        produce_dead_letter(self.producer, self.codec, self.topics.dlq, letter, msg.key(), batch.on_delivery)
        self.metrics.dead_letters.labels(letter.provider or "unknown", why.code).inc()
        log.info(
            "dead_letter",
            reason=why.code,
            provider=letter.provider,
            request_id=letter.request_id,
            partition=letter.partition,
            offset=letter.offset,
        )

    def _produce_states(self, batch: _Batch) -> None:
        for partition, states in batch.states.items():
            for key, current in states.items():
                self.producer.produce(
                    self.topics.state,
                    key=key.encode(),
                    value=self.codec.encode("VerificationState", state_to_record(current), self.topics.state),
                    partition=partition,
                    on_delivery=batch.on_delivery,
                )

    def _apply(self, batch: _Batch) -> None:
        """Only acknowledged outputs are remembered, so a rewound batch is redone in full."""
        for partition, states in batch.states.items():
            stores = self.owned.get(partition)
            if stores is not None:
                stores.states.update(states)

    def _dedup_records(self, batch: _Batch, anchors: dict[int, int] | None) -> list[tuple[int, bytes, bytes]]:
        """(partition, key, encoded DedupRecord) for each new key of the batch; the store learns them.
        All of a batch's records share their times and, per partition, their events-offset anchor."""
        now = self.clock()
        first_seen, expires = _epoch_ms(now), _epoch_ms(now + self.window)
        encode, topic = self.codec.encode, self.topics.dedup
        records = []
        for partition, keys in batch.keys.items():
            offsets = batch.event_offsets.get(partition) or [-1]
            anchor = anchors[partition] if anchors is not None else min(offsets)
            stores = self.owned.get(partition)
            for key, event in keys.items():
                record = dedup_record(key, event.event_id, first_seen, expires, anchor)
                records.append((partition, key.encode(), encode("DedupRecord", record, topic)))
                if stores is not None:
                    stores.dedup.add(key, expires // 1000)
        return records

    def _write_dedup_records(
        self, batch: _Batch, *, stop: threading.Event | None = None, anchors: dict[int, int] | None = None
    ) -> bool:
        pending = self._dedup_records(batch, anchors)
        failed: list[tuple[int, bytes, bytes]] = []

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                self._note_failure(err)
                failed.append((msg.partition() or 0, msg.key() or b"", msg.value() or b""))

        while pending:
            failed.clear()
            for partition, key, value in pending:
                self.producer.produce(self.topics.dedup, value, key, partition, on_delivery)
            if self._drain(stop):
                return False  # stopping: not committed, the next owner repairs from the events topic
            if not failed:
                return True
            self.metrics.retries.inc()
            log.warning("dedup_records_retry", failed=len(failed))
            if stop is not None and stop.is_set():
                return False
            time.sleep(self.p.retry_backoff_s)
            self._renew_producer_if_gone()
            pending = list(failed)
        return True

    def _drain(self, stop: threading.Event | None) -> int:
        """Flush until every record produced has its delivery report, delivered or failed for good
        (within delivery_timeout_s): a batch redone while its records are still queued would write
        them twice. Returns the records still queued, non-zero only when `stop` is set meanwhile."""
        left = self.producer.flush(self.p.flush_timeout_s)
        while left and not (stop is not None and stop.is_set()):
            log.warning("outputs_not_acknowledged_yet", queued=left, within_s=self.p.delivery_timeout_s)
            left = self.producer.flush(self.p.flush_timeout_s)
        return int(left)

    def _redo_after_failure(self, batch: _Batch, consumer: Consumer | None) -> None:
        """Some outputs failed for good, others may have been written: as after a crash, take the
        batch's partitions over again (the restore finds the events that did land and remembers
        them), then go back to the batch start; the redo skips what is already written."""
        partitions = sorted({partition for _, partition in batch.first})
        for partition in partitions:
            self.release(partition)
        for err in batch.errors:
            self._note_failure(err)
        self._rewind(batch, consumer, f"outputs failed: {batch.failures[:3]}")
        self._renew_producer_if_gone()
        self.restore(partitions)  # raises if Kafka is still unreachable: restart and restore then

    def _tombstone(self, partition: int, keys: list[str], batch: _Batch) -> None:
        for key in keys:
            self.producer.produce(
                self.topics.dedup, key=key.encode(), value=None, partition=partition, on_delivery=batch.on_delivery
            )

    def _flush_or_raise(self, batch: _Batch, what: str) -> None:
        left = self.producer.flush(self.p.flush_timeout_s)
        if left or batch.errors:
            raise BrokerError(f"{what}: outputs not acknowledged ({left} undelivered, {batch.failures[:3]})")

    def _rewind(self, batch: _Batch, consumer: Consumer | None, why: str) -> None:
        self.metrics.retries.inc()
        log.warning("batch_rewound", why=why)
        if consumer is not None:
            for (topic, partition), offset in batch.first.items():
                consumer.seek(TopicPartition(topic, partition, offset))
        time.sleep(self.p.retry_backoff_s)

    def _commit_transaction(self, batch: _Batch, consumer: Consumer | None) -> bool:
        try:
            self._produce_states(batch)
            for partition, key, value in self._dedup_records(batch, None):
                self.producer.produce(self.topics.dedup, value, key, partition)
            if consumer is not None:
                self.producer.send_offsets_to_transaction(batch.next_offsets(), consumer.consumer_group_metadata(), 30)
            self.producer.commit_transaction(self.p.flush_timeout_s)
        except KafkaException as exc:
            with contextlib.suppress(KafkaException):
                self.producer.abort_transaction(30)
            self._rewind(batch, consumer, f"transaction aborted: {exc.args[0].str()}")
            return False
        self._apply(batch)
        self.tally.update(batch.tally)
        return True

    def expire(self, force: bool = False) -> int:
        """Tombstone the idempotency keys whose window has passed."""
        if not force and time.monotonic() - self._last_expiry < self.p.expiry_interval_s:
            return 0
        self._last_expiry = time.monotonic()
        now_s = int(self.clock().timestamp())
        batch = _Batch()
        count = 0
        if self.transactional:
            self.producer.begin_transaction()
        for partition, stores in self.owned.items():
            keys = stores.dedup.pop_expired(now_s)
            self._tombstone(partition, keys, batch)
            count += len(keys)
            self.metrics.dedup_keys.labels(str(partition)).set(len(stores.dedup))
        if self.transactional:
            self.producer.commit_transaction(self.p.flush_timeout_s)
        elif count:
            self.producer.flush(self.p.flush_timeout_s)
        if count:
            log.info("dedup_keys_expired", count=count)
        return count

    def close(self) -> None:
        self.producer.flush(self.p.flush_timeout_s)
        for partition in list(self.owned):
            self.release(partition)
        self._restorer.close()


class Normalizer:
    """The group member: partitions come and go by rebalance; each is restored before use."""

    def __init__(self, settings: ProcessorSettings, **engine_options: object) -> None:
        self.settings = settings
        self.engine = Engine(settings, **engine_options)  # type: ignore[arg-type]
        self.metrics = self.engine.metrics
        p = settings.processor
        self.consumer = Consumer(
            config.consumer(
                settings.kafka,
                p.group_id,
                **{"session.timeout.ms": p.session_timeout_ms, "enable.partition.eof": False},
            )
        )

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("partitions_assigned", partitions=[tp.partition for tp in partitions])
        self.engine.restore([tp.partition for tp in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("partitions_revoked", partitions=[tp.partition for tp in partitions])
        for tp in partitions:
            self.engine.release(tp.partition)

    def run(self, stop: threading.Event) -> None:
        p = self.settings.processor
        self.engine.check_partitions()
        self.consumer.subscribe(
            [self.settings.topics.raw],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        log.info(
            "processor_started", group=p.group_id, topic=self.settings.topics.raw, guarantee=p.processing_guarantee
        )
        try:
            while not stop.is_set():
                try:
                    messages = self.consumer.consume(p.batch_size, p.poll_timeout_s)
                except KafkaException as exc:
                    log.warning("consume_failed", error=exc.args[0].str())
                    time.sleep(p.retry_backoff_s)
                    continue
                if messages and (offsets := self.engine.process(messages, self.consumer, stop)):
                    self._commit(offsets)
                self.engine.expire()
        finally:
            self.close()

    def _commit(self, offsets: list[TopicPartition]) -> None:
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # Uncommitted work is redone by whoever owns the partition next; dedup makes it harmless.
            log.warning("commit_failed", error=exc.args[0].str())

    def close(self) -> None:
        try:
            self.consumer.close()
        except (KafkaException, RuntimeError) as exc:
            log.warning("consumer_close_failed", error=str(exc))
        self.engine.close()
        log.info("processor_stopped")
