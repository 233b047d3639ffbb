"""The normalizer's run loop: consume raw deliveries, act on what the pipeline decides, commit.

`Engine` handles each raw record (normalize, deduplicate, count into the state) and hands the
batch to three parts a reviewer can read one at a time:
  outputs.py  the output writer: produce, wait for every report, replace a gone producer
  commit.py   how a batch becomes durable: at_least_once with the dedup anchor, or transactions
  owner.py    the partitions owned: restore, repair after a crash, expire keys, release
`Normalizer` is the group member that feeds it; `replay` drives the same Engine over a range.
"""

from __future__ import annotations

import collections
import socket
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter

from processors import logs, state, tracing
from processors.avro.codec import RecordType
from processors.avro.records import delivery_from_record
from processors.errors import KycstreamError, SerdeError
from processors.kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition, config, registry
from processors.kafka.lag import LagMonitor
from processors.kafka.serde import Codec
from processors.model import DeadLetter, Notice, RawDelivery, RawRef, Rejection, VerificationEvent
from processors.normalizer import limits
from processors.normalizer.commit import AtLeastOnce, CommitStrategy, ExactlyOnce
from processors.normalizer.metrics import ProcessorMetrics
from processors.normalizer.outputs import Batch, Outputs
from processors.normalizer.owner import PartitionOwner
from processors.pipeline import normalize, reversal
from processors.probes import Health
from processors.remedies import explain
from processors.settings import ProcessorSettings

__all__ = ["Engine", "Normalizer", "ProcessorMetrics"]

log = logs.get("kycstream.processor")


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
        self.p = p = settings.processor
        self.codec = codec or Codec(config.schema_registry(settings.kafka))
        outputs: tuple[RecordType, ...] = ("VerificationEvent", "VerificationState", "DedupRecord", "DeadLetter")
        try:
            registry.require(self.codec, registry.writes(settings.topics, *outputs))  # refuses to start without them
        except KycstreamError:
            self.codec.close()
            raise
        self.metrics = metrics or ProcessorMetrics()
        self.clock = clock
        overrides: dict[str, object] = {"linger.ms": p.linger_ms}
        if p.processing_guarantee == "exactly_once":  # a transaction bounds its own records
            overrides["transactional.id"] = p.transactional_id or f"kycstream-{p.group_id}-{socket.gethostname()}"
            strategy: type[AtLeastOnce | ExactlyOnce] = ExactlyOnce
        else:
            overrides["message.timeout.ms"] = int(p.delivery_timeout_s * 1000)
            strategy = AtLeastOnce
        conf = config.producer(settings.kafka, role="processor", **overrides)
        limits.check_batch_size(p, conf)
        self.health = Health(limits.liveness_deadline(p))  # beaten by the run loop and each restore
        self.outputs = Outputs(conf, self.codec, settings.topics, p, self.metrics.retries)
        self.owner = PartitionOwner(
            settings, self.outputs, self.metrics, clock, repairs=strategy.repairs, health=self.health
        )
        self.commit: CommitStrategy = strategy(self.outputs, self.owner, self.metrics.retries)
        self.tally: collections.Counter[str] = collections.Counter()  # events, duplicates, notices, dead_letters
        self._last_expiry = time.monotonic()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}  # metric children, see _child

    # --- ownership (see owner.py) ----------------------------------------------------------------

    def check_partitions(self) -> int:
        return self.owner.check_partitions()

    def restore(self, partitions: list[int]) -> None:
        self.owner.restore(partitions)

    def release(self, partition: int) -> None:
        self.owner.release(partition)

    def expire(self, force: bool = False) -> int:
        """Tombstone the idempotency keys whose window has passed (every expiry_interval_s)."""
        if not force and time.monotonic() - self._last_expiry < self.p.expiry_interval_s:
            return 0
        self._last_expiry = time.monotonic()
        count = self.commit.aside(self.owner.expire)
        if count:
            log.info("dedup_keys_expired", count=count)
        return count

    # --- processing ------------------------------------------------------------------------------

    def process(
        self, messages: Iterable[Message], consumer: Consumer | None, stop: threading.Event
    ) -> list[TopicPartition] | None:
        """Handle one batch. None when its outputs are not durable (the consumer was rewound to
        redo it); else the offsets the caller commits next (none in exactly_once: the transaction
        committed them)."""
        self.outputs.renew_if_gone()
        batch = Batch()
        self.commit.begin()
        for msg in messages:
            error = msg.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("consume_error", error=error.str())
                continue
            topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
            batch.saw(topic, partition, offset)
            if partition not in self.owner.owned:
                self.owner.restore([partition])
            if not tracing.ENABLED:
                self._handle(msg, topic, partition, offset, batch)
                continue
            with tracing.processing(msg.headers(), topic, partition, offset, self.p.group_id) as span:
                span.set_attribute("kycstream.outcome", self._handle(msg, topic, partition, offset, batch))
        offsets = self.commit.finish(batch, consumer, stop)
        if offsets is not None:
            self.tally.update(batch.tally)
            for (metric, labels), count in batch.counts.items():
                self._child(metric, labels).inc(count)
        return offsets

    def _handle(self, msg: Message, topic: str, partition: int, offset: int, batch: Batch) -> str:
        """What became of the record: event, duplicate, notice or dead_letter."""
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
            return "dead_letter"
        if isinstance(outcome, Notice):
            assert delivery is not None
            batch.counts[(self.metrics.notices, (delivery.provider, outcome.kind))] += 1
            batch.tally["notices"] += 1
            return "notice"
        stores = self.owner.owned[partition]
        key = outcome.idempotency_key
        if key in stores.dedup or key in batch.keys.get(partition, {}):
            # Seen before: a new event only if it is not already reflected (state.repeat).
            repeat = state.repeat(self.owner.current(stores, batch, outcome.key), outcome)
            if repeat != "reversal":
                if repeat == "refresh":
                    self.owner.refresh(stores, batch, outcome)
                batch.counts[(self.metrics.dedup_hits, (outcome.provider,))] += 1
                batch.tally["duplicates"] += 1
                return "duplicate"
            outcome = reversal(outcome)
            batch.counts[(self.metrics.reversals, (outcome.provider,))] += 1
        batch.tally["events"] += 1
        self.outputs.event(batch, partition, outcome)
        # After a crash a state may have landed without its events (different partitions, acknowledged
        # independently): the state already counts this delivery, so the event is written, not counted.
        self.owner.remember(stores, batch, outcome, count=not self.owner.counted(stores, outcome))
        batch.counts[(self.metrics.events, (outcome.provider, outcome.status.value))] += 1
        return "event"

    def _child(self, metric: Counter, labels: tuple[str, ...]) -> Any:
        """metric.labels(*labels), looked up once (labels() takes a lock and builds a key)."""
        child = self._children.get((id(metric), labels))
        if child is None:
            child = self._children[(id(metric), labels)] = metric.labels(*labels)
        return child

    def _dead_letter(self, msg: Message, delivery: RawDelivery | None, why: Rejection, batch: Batch) -> None:
        letter = DeadLetter(
            reason=why.code,
            detail=explain(why.code, why.detail),
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
        self.outputs.dead_letter(batch, letter, msg.key())
        batch.counts[(self.metrics.dead_letters, (letter.provider or "unknown", why.code))] += 1
        log.info(
            "dead_letter",
            reason=why.code,
            provider=letter.provider,
            request_id=letter.request_id,
            partition=letter.partition,
            offset=letter.offset,
        )

    def close(self) -> None:
        self.outputs.close()
        self.owner.close()


class Normalizer:
    """The group member: partitions come and go by rebalance; each is restored before use."""

    def __init__(self, settings: ProcessorSettings, **engine_options: object) -> None:
        self.settings = settings
        self.engine = Engine(settings, **engine_options)  # type: ignore[arg-type]
        self.metrics = self.engine.metrics
        p = settings.processor
        conf = config.consumer(
            settings.kafka,
            p.group_id,
            role="processor",
            **{"session.timeout.ms": p.session_timeout_ms, "enable.partition.eof": False},
        )
        limits.check_restore_timeout(p, conf)
        self.health = self.engine.health
        self.health.not_ready("waiting for its partitions")
        self.consumer = Consumer(conf)
        groups = {p.group_id: [settings.topics.raw]}
        self.lag = LagMonitor(settings.kafka, groups, self.metrics.consumer_lag, role="processor")

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("partitions_assigned", partitions=[tp.partition for tp in partitions])
        self.engine.restore([tp.partition for tp in partitions])
        self.health.ready()  # also with no partitions: a member beyond the partition count is idle, not broken

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
        self.lag.start()
        try:
            while not stop.is_set():
                self.health.beat()
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
        self.lag.close()
        try:
            self.consumer.close()
        except (KafkaException, RuntimeError) as exc:
            log.warning("consumer_close_failed", error=str(exc))
        self.engine.close()
        log.info("processor_stopped")
