"""The gateway's way into Kafka: raw envelopes, Avro-encoded, acknowledged or refused in time."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from processors import logs, tracing
from processors.avro.records import delivery_to_record, expectation_to_record
from processors.errors import BrokerError
from processors.kafka import config
from processors.kafka.producer import AsyncProducer, Delivered
from processors.kafka.serde import Codec
from processors.kafka.topics import specs
from processors.model import Expectation, RawDelivery
from processors.settings import KafkaSettings, TopicSettings

if TYPE_CHECKING:
    from gateway.spool import Spool, Spooled

log = logs.get("kycstream.gateway")


class KafkaRawSink:
    def __init__(
        self,
        kafka: KafkaSettings,
        topics: TopicSettings,
        *,
        produce_timeout_s: float = 5.0,
        linger_ms: float = 1.0,
        codec: Codec | None = None,
    ) -> None:
        self.topic = topics.raw
        self._expected = topics.expected
        self._wanted = [s.name for s in specs(topics)]
        self._timeout = produce_timeout_s
        self._codec = codec or Codec(config.schema_registry(kafka))
        self._producer = AsyncProducer(
            config.producer(
                kafka,
                role="gateway",
                **{
                    "linger.ms": linger_ms,
                    # Past the deadline the caller has answered 503 and the sender will retry.
                    "message.timeout.ms": max(1000, int(produce_timeout_s * 1000)),
                },
            ),
            timeout_s=produce_timeout_s,
        )
        self._ready_at = 0.0
        self._ready_reason: str | None = "not checked yet"

    def envelope(self, delivery: RawDelivery) -> tuple[bytes, list[tuple[str, bytes]]]:
        """The raw record's value and headers, exactly as produced (and as spooled)."""
        value = self._codec.encode("RawDelivery", delivery_to_record(delivery), self.topic)
        headers = [
            ("kycstream-request-id", delivery.request_id.encode()),
            ("kycstream-source", delivery.source.encode()),
            ("kycstream-provider", delivery.provider.encode()),
        ]
        if tracing.ENABLED:  # the produce's span, or the request's when it is spooled instead
            headers += tracing.context_headers()
        return value, headers

    async def write(self, delivery: RawDelivery, key: str) -> Delivered:
        if not tracing.ENABLED:
            value, headers = self.envelope(delivery)
            return await self._producer.send(self.topic, value, key.encode(), list(headers))
        with tracing.sending(self.topic) as span:
            value, headers = self.envelope(delivery)
            delivered = await self._producer.send(self.topic, value, key.encode(), list(headers))
            tracing.acked(span, delivered.partition, delivered.offset)
            return delivered

    async def write_expectation(self, expectation: Expectation) -> Delivered:
        value = self._codec.encode("Expectation", expectation_to_record(expectation), self._expected)
        return await self._producer.send(self._expected, value, expectation.key.encode())

    async def not_ready(self) -> str | None:
        """None when Kafka answers and every topic exists, else why not (cached for 2 s)."""
        now = time.monotonic()
        if now - self._ready_at > 2.0:
            self._ready_reason = await asyncio.to_thread(self._check)
            self._ready_at = now
        return self._ready_reason

    def _check(self) -> str | None:
        try:
            present = self._producer.list_topics(timeout=2.0)
        except BrokerError as exc:
            return str(exc)
        absent = [name for name in self._wanted if name not in present]
        return f"topics missing: {', '.join(absent)} (run `kycstream topics create`)" if absent else None

    def close(self, timeout: float = 10.0) -> int:
        return self._producer.close(timeout)


class SpoolForwarder:
    """Sends the gateway's spool to the raw topic, oldest segment first, each record as spooled, and
    removes a segment once Kafka acknowledged every record of it. A failed round sends the whole
    segment again later (the normalizer's dedup absorbs what had landed)."""

    def __init__(
        self,
        spool: Spool,
        kafka: KafkaSettings,
        topic: str,
        *,
        timeout_s: float = 10.0,
        on_forwarded: Callable[[int], None] = lambda n: None,
        dedup_window_s: float | None = None,
        on_past_dedup_window: Callable[[int], None] = lambda n: None,
    ) -> None:
        self.spool = spool
        self.topic = topic
        self.timeout_s = timeout_s
        self.on_forwarded = on_forwarded
        self.dedup_window_s = dedup_window_s
        self.on_past_dedup_window = on_past_dedup_window
        self._conf = config.producer(
            kafka, role="spool-forwarder", **{"message.timeout.ms": int(timeout_s * 1000), "linger.ms": 5}
        )
        self._producer = Producer(self._conf)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spool-forwarder", daemon=True)

    def start(self) -> SpoolForwarder:
        self._thread.start()
        return self

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            if not self.spool.records:
                self._stop.wait(0.1)
                continue
            if self.forward(time.monotonic() + self.timeout_s):
                backoff = 0.5
            else:
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def forward(self, deadline: float) -> bool:
        """Forward every segment there is now; False at the first that Kafka did not take whole."""
        try:
            self._producer.list_topics(self.topic, timeout=2.0)  # Kafka away: spend no records' timeouts
        except KafkaException:
            return False
        for path in self.spool.take():
            records = self.spool.read(path)
            failed: list[str] = []

            def on_delivery(err: KafkaError | None, msg: Message, failed: list[str] = failed) -> None:
                if err is not None:
                    failed.append(err.str())

            for record in records:
                while True:
                    try:
                        self._producer.produce(
                            self.topic, record.value, record.key, headers=list(record.headers), on_delivery=on_delivery
                        )
                        break
                    except BufferError:
                        self._producer.poll(0.1)
            left = self._producer.flush(max(0.1, deadline - time.monotonic()))
            if left or failed:
                log.warning("spool_forward_failed", segment=path.name, undelivered=left, errors=failed[:3])
                self._producer.purge()
                self._producer.flush(0)
                self._producer = Producer(self._conf)  # an idempotent producer whose records expired may be fenced
                return False
            self._past_dedup_window(path.name, records)  # counted before the spool says it is empty
            self.spool.remove(path)
            self.on_forwarded(len(records))
            log.info("spool_forwarded", segment=path.name, records=len(records))
        return True

    def _past_dedup_window(self, segment: str, records: list[Spooled]) -> None:
        """Warn of records the processors' dedup no longer remembers: had the provider delivered one
        of them again meanwhile, it could become a second event (docs/operations.md)."""
        if self.dedup_window_s is None:
            return
        now = time.time()  # the spool's clock: spooled_at is wall time
        ages = [now - r.spooled_at for r in records if now - r.spooled_at > self.dedup_window_s]
        if ages:
            log.warning(
                "spool_forwarded_past_dedup_window",
                segment=segment,
                records=len(ages),
                oldest_age_s=round(max(ages)),
                dedup_window_s=self.dedup_window_s,
            )
            self.on_past_dedup_window(len(ages))

    def stop(self, drain_s: float) -> int:
        """Stop; forward what is spooled for up to `drain_s` first. Returns the records left."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.timeout_s + 5)
        deadline = time.monotonic() + drain_s
        # Still in a round (Kafka slower than timeout_s): one sender at a time, what remains waits on disk.
        while self.spool.records and time.monotonic() < deadline and not self._thread.is_alive():
            if not self.forward(deadline):
                time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        left = self.spool.records
        self.spool.close()
        return left
