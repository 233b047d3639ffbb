"""The gateway's way into Kafka: raw envelopes, Avro-encoded, acknowledged or refused in time."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from processors import logs, tracing
from processors.avro.records import delivery_to_record, expectation_to_record
from processors.errors import BrokerError, RecordTooLarge
from processors.kafka import config
from processors.kafka.producer import AsyncProducer, Delivered, produce
from processors.kafka.serde import Codec
from processors.kafka.topics import specs
from processors.model import Expectation, RawDelivery
from processors.pipeline import raised_at
from processors.settings import KafkaSettings, TopicSettings

if TYPE_CHECKING:
    from gateway.spool import Spool, Spooled

log = logs.get("kycstream.gateway")

# librdkafka's reckoning of a record against the producer's `message.max.bytes`
# (rd_kafka_msg_max_wire_size): a v2 record's largest framing (length 5, attributes 1, timestamp
# delta 10, offset delta 5, key length 5, value length 5, header count 5) plus key, value and each
# header's varint-framed name and value. Past it produce() refuses with MSG_SIZE_TOO_LARGE, so a
# delivery measured with it is refused (413) before anything is produced or spooled.
_RECORD_FRAMING = 36
_DEFAULT_MAX_RECORD = 1_000_000  # librdkafka's message.max.bytes


def record_bytes(key: bytes, value: bytes, headers: Sequence[tuple[str, bytes]]) -> int:
    """A record's size as librdkafka checks it against `message.max.bytes`."""
    size = _RECORD_FRAMING + len(key) + len(value)
    for name, data in headers:
        encoded = name.encode()
        size += _varint_size(len(encoded)) + len(encoded) + _varint_size(len(data)) + len(data)
    return size


def max_record_bytes(conf: dict[str, Any]) -> int:
    """The largest record a producer built from `conf` sends (kafka.extra may set message.max.bytes)."""
    return int(conf.get("message.max.bytes", _DEFAULT_MAX_RECORD))


def _varint_size(n: int) -> int:
    """Bytes of n as a zigzag varint (Kafka's record fields and Avro's lengths alike)."""
    z, size = n << 1, 1
    while z >= 0x80:
        z >>= 7
        size += 1
    return size


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
        conf = config.producer(
            kafka,
            role="gateway",
            **{
                "linger.ms": linger_ms,
                # Past the deadline the caller has answered 503 and the sender will retry.
                "message.timeout.ms": max(1000, int(produce_timeout_s * 1000)),
            },
        )
        self.max_record_bytes = max_record_bytes(conf)
        self._producer = AsyncProducer(conf, timeout_s=produce_timeout_s)
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

    def largest_body(self, source: str, provider: str) -> int:
        """The largest body a raw record of this source can hold: the producer's record limit less
        the envelope with nothing optional in it (no kept header, the shortest key). Larger bodies
        never fit; smaller ones are measured whole by `check`."""
        empty = RawDelivery(
            request_id="0" * 36, source=source, provider=provider, method="PUT", received_at=datetime.now(UTC), body=b""
        )
        value, headers = self.envelope(empty)
        key = b"0" * min(36, len(provider) + 2)  # a request id, or `provider:` and one character
        room = self.max_record_bytes - record_bytes(key, value, headers) + 1  # + the empty body's length byte
        return max(0, room - _varint_size(room))

    def check(self, key: bytes, value: bytes, headers: Sequence[tuple[str, bytes]]) -> None:
        """Raise RecordTooLarge when Kafka can never take this record."""
        size = record_bytes(key, value, headers)
        if size > self.max_record_bytes:
            raise RecordTooLarge(
                f"the delivery's raw record would be {size} bytes (body, headers and envelope), over the "
                f"{self.max_record_bytes} bytes a Kafka record may hold here (kafka message.max.bytes): "
                "it can never be written; send a smaller body"
            )

    async def write(self, delivery: RawDelivery, key: str) -> Delivered:
        if not tracing.ENABLED:
            value, headers = self.envelope(delivery)
            self.check(key.encode(), value, headers)
            return await self._producer.send(self.topic, value, key.encode(), list(headers))
        with tracing.sending(self.topic) as span:
            value, headers = self.envelope(delivery)
            self.check(key.encode(), value, headers)
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


# Kafka refuses these records however often they are sent: they are quarantined, not retried.
_REFUSED_FOR_GOOD = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_MSG_SIZE,
        KafkaError.INVALID_RECORD,
        KafkaError._INVALID_ARG,
    }
)


class SpoolForwarder:
    """Sends the gateway's spool to the raw topic, oldest segment first, each record as spooled, and
    removes a segment once Kafka acknowledged every record of it. A failed round sends the whole
    segment again later (the normalizer's dedup absorbs what had landed). A record Kafka refuses for
    good is quarantined (Spool.quarantine) so the records behind it go on; every failure is counted
    (`on_failed`) and logged, and the thread outlives any of them (`running` says so to /readyz)."""

    def __init__(
        self,
        spool: Spool,
        kafka: KafkaSettings,
        topic: str,
        *,
        timeout_s: float = 10.0,
        on_forwarded: Callable[[int], None] = lambda n: None,
        on_failed: Callable[[str, int], None] = lambda error, n: None,
        dedup_window_s: float | None = None,
        on_past_dedup_window: Callable[[int], None] = lambda n: None,
    ) -> None:
        self.spool = spool
        self.topic = topic
        self.timeout_s = timeout_s
        self.on_forwarded = on_forwarded
        self.on_failed = on_failed
        self._conf = config.producer(
            kafka, role="spool-forwarder", **{"message.timeout.ms": int(timeout_s * 1000), "linger.ms": 5}
        )
        self.dedup_window_s = dedup_window_s
        self.on_past_dedup_window = on_past_dedup_window
        self._producer = Producer(self._conf)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spool-forwarder", daemon=True)

    def start(self) -> SpoolForwarder:
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            if not self.spool.records:
                self._stop.wait(0.1)
                continue
            try:
                forwarded = self.forward(time.monotonic() + self.timeout_s)
            except Exception as exc:  # a disk error or a bug: said, counted and tried again, never the end
                log.error("spool_forwarder_failed", error=type(exc).__name__, at=raised_at(exc))
                self.on_failed(type(exc).__name__, 1)
                forwarded = False
            if forwarded:
                backoff = 0.5
            else:
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def forward(self, deadline: float) -> bool:
        """Forward every segment there is now; False at the first that Kafka did not take whole."""
        try:
            self._producer.list_topics(self.topic, timeout=2.0)  # Kafka away: spend no records' timeouts
        except KafkaException:
            self.spool.kafka_away = True
            self.on_failed("kafka_unreachable", 1)
            return False
        self.spool.kafka_away = False
        for path in self.spool.take():
            if not self._forward_segment(path, deadline):
                self.spool.kafka_away = True
                return False
        return True

    def _forward_segment(self, path: Path, deadline: float) -> bool:
        records = self.spool.read(path)
        errors: dict[int, KafkaError] = {}
        for i, record in enumerate(records):

            def on_delivery(err: KafkaError | None, msg: Message, i: int = i) -> None:
                if err is not None:
                    errors[i] = err

            try:
                produce(
                    self._producer,
                    self.topic,
                    record.value,
                    record.key,
                    headers=list(record.headers),
                    on_delivery=on_delivery,
                )
            except KafkaException as exc:  # refused before sending (e.g. over message.max.bytes)
                errors[i] = exc.args[0]
        left = self._producer.flush(max(0.1, deadline - time.monotonic()))
        refused = sorted(i for i, err in errors.items() if err.code() in _REFUSED_FOR_GOOD)
        if refused:
            self._quarantine(path, records, refused, errors)
        failed = [err for i, err in errors.items() if i not in refused]
        if left or failed:
            for name in {err.name() for err in failed}:
                self.on_failed(name, sum(err.name() == name for err in failed))
            if left:
                self.on_failed("undelivered", left)
            log.warning(
                "spool_forward_failed", segment=path.name, undelivered=left, errors=[e.str() for e in failed[:3]]
            )
            self._producer.purge()
            self._producer.flush(0)
            self._producer = Producer(self._conf)  # an idempotent producer whose records expired may be fenced
            return False
        self._past_dedup_window(path.name, records)  # counted before the spool says it is empty
        self.spool.remove(path)
        self.on_forwarded(len(records) - len(refused))
        log.info("spool_forwarded", segment=path.name, records=len(records) - len(refused))
        return True

    def _quarantine(
        self, path: Path, records: list[Spooled], refused: list[int], errors: dict[int, KafkaError]
    ) -> None:
        moved = [records[i] for i in refused]
        self.spool.quarantine(path, moved, [r for i, r in enumerate(records) if i not in refused])
        for i in refused:
            self.on_failed(errors[i].name(), 1)
        log.error(
            "spool_quarantined",
            segment=path.name,
            records=len(moved),
            errors=sorted({errors[i].str() for i in refused}),
            directory=str(self.spool.directory / "quarantine"),
        )

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
