"""The normalizer's run loop: consume raw deliveries, act on what the pipeline decides, commit.

Order of effects per batch: produce every output, wait for all acknowledgements, then commit the
offsets. A failure anywhere before the commit rewinds to the batch start and tries again, so a
crash or a broker outage can repeat outputs (their ids are deterministic) but never lose one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from prometheus_client import CollectorRegistry, Counter

from processors import logs
from processors.errors import SerdeError
from processors.kafka import config
from processors.kafka.serde import Codec, dead_letter_to_record, delivery_from_record, event_to_record
from processors.model import DeadLetter, RawDelivery, RawRef, Rejection, VerificationEvent
from processors.pipeline import normalize
from processors.settings import ProcessorSettings

log = logs.get("kycstream.processor")


class ProcessorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.events = Counter(
            "kycstream_events",
            "Normalized events by provider and status.",
            ["provider", "status"],
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "kycstream_dead_letters",
            "Deliveries sent to the DLQ by provider and reason.",
            ["provider", "reason"],
            registry=self.registry,
        )
        self.retries = Counter(
            "kycstream_batch_retries",
            "Batches rewound because an output was not acknowledged.",
            registry=self.registry,
        )


@dataclass
class _Batch:
    first: dict[tuple[str, int], int] = field(default_factory=dict)
    last: dict[tuple[str, int], int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def saw(self, msg: Message) -> None:
        tp = (msg.topic() or "", msg.partition() or 0)
        self.first.setdefault(tp, msg.offset() or 0)
        self.last[tp] = msg.offset() or 0


class Normalizer:
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
        self.codec = codec or Codec(config.schema_registry(settings.kafka))
        self.metrics = metrics or ProcessorMetrics()
        self.clock = clock
        p = settings.processor
        self.consumer = Consumer(
            config.consumer(
                settings.kafka,
                p.group_id,
                **{"session.timeout.ms": p.session_timeout_ms, "enable.partition.eof": False},
            )
        )
        self.producer = Producer(config.producer(settings.kafka, **{"linger.ms": p.linger_ms}))

    def run(self, stop: threading.Event) -> None:
        p = self.settings.processor
        self.consumer.subscribe(
            [self.topics.raw], on_assign=_log_assignment("assigned"), on_revoke=_log_assignment("revoked")
        )
        log.info("processor_started", group=p.group_id, topic=self.topics.raw)
        try:
            while not stop.is_set():
                try:
                    messages = self.consumer.consume(p.batch_size, p.poll_timeout_s)
                except KafkaException as exc:
                    log.warning("consume_failed", error=exc.args[0].str())
                    time.sleep(p.retry_backoff_s)
                    continue
                if messages:
                    self._process(messages)
        finally:
            self.close()

    def _process(self, messages: list[Message]) -> None:
        batch = _Batch()
        for msg in messages:
            error = msg.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("consume_error", error=error.str())
                continue
            batch.saw(msg)
            self._handle(msg, batch)
        if not batch.last:
            return
        left = self.producer.flush(self.settings.processor.flush_timeout_s)
        if left or batch.failures:
            self.metrics.retries.inc()
            log.warning("batch_rewound", undelivered=left, failures=batch.failures[:3])
            for (topic, partition), offset in batch.first.items():
                self.consumer.seek(TopicPartition(topic, partition, offset))
            time.sleep(self.settings.processor.retry_backoff_s)
            return
        offsets = [TopicPartition(t, p, o + 1) for (t, p), o in batch.last.items()]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # Uncommitted work is redone by whoever owns the partition next; ids make it harmless.
            log.warning("commit_failed", error=exc.args[0].str())

    def _handle(self, msg: Message, batch: _Batch) -> None:
        value = msg.value() or b""
        ref_topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0

        def on_delivery(err: KafkaError | None, _: Message) -> None:
            if err is not None:
                batch.failures.append(err.str())

        delivery: RawDelivery | None = None
        try:
            delivery = delivery_from_record(self.codec.decode("RawDelivery", value, ref_topic))
        except (SerdeError, KeyError, TypeError) as exc:
            outcome: VerificationEvent | Rejection = Rejection("undecodable_envelope", str(exc))
        else:
            outcome = normalize(delivery, RawRef(ref_topic, partition, offset, delivery.request_id))

        if isinstance(outcome, VerificationEvent):
            self.producer.produce(
                self.topics.events,
                key=outcome.key.encode(),
                value=self.codec.encode("VerificationEvent", event_to_record(outcome), self.topics.events),
                headers=[("kycstream-event-id", outcome.event_id.encode())],
                on_delivery=on_delivery,
            )
            self.metrics.events.labels(outcome.provider, outcome.status.value).inc()
            return
        letter = DeadLetter(
            reason=outcome.code,
            detail=outcome.detail,
            failed_at=self.clock(),
            source_topic=ref_topic,
            partition=partition,
            offset=offset,
            original_value=value,
            original_key=msg.key(),
            request_id=delivery.request_id if delivery else None,
            source=delivery.source if delivery else None,
            provider=delivery.provider if delivery else None,
        )
        self.producer.produce(
            self.topics.dlq,
            key=msg.key(),
            value=self.codec.encode("DeadLetter", dead_letter_to_record(letter), self.topics.dlq),
            headers=[("kycstream-reason", outcome.code.encode())],
            on_delivery=on_delivery,
        )
        self.metrics.dead_letters.labels(letter.provider or "unknown", outcome.code).inc()
        log.info(
            "dead_letter",
            reason=outcome.code,
            provider=letter.provider,
            request_id=letter.request_id,
            partition=partition,
            offset=offset,
        )

    def close(self) -> None:
        left = self.producer.flush(self.settings.processor.flush_timeout_s)
        try:
            self.consumer.close()
        except KafkaException as exc:
            log.warning("consumer_close_failed", error=exc.args[0].str())
        log.info("processor_stopped", undelivered=left)


def _log_assignment(what: str) -> Callable[[Consumer, list[TopicPartition]], None]:
    def callback(consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info(f"partitions_{what}", partitions=[p.partition for p in partitions])

    return callback
