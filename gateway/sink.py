"""The gateway's way into Kafka: raw envelopes, Avro-encoded, acknowledged or refused in time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from processors import logs, tracing
from processors.avro.records import delivery_to_record, expectation_to_record
from processors.errors import BrokerError, RecordTooLarge
from processors.kafka import config, registry
from processors.kafka.producer import AsyncProducer, Delivered, max_record_bytes, record_bytes, varint_size
from processors.kafka.serde import Codec
from processors.kafka.topics import specs
from processors.model import Expectation, RawDelivery
from processors.settings import KafkaSettings, TopicSettings

if TYPE_CHECKING:
    pass

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
        registry.require(self._codec, registry.writes(topics, "RawDelivery", "Expectation"))
        conf = config.producer(
            kafka,
            role="gateway",
            **{
                "linger.ms": linger_ms,
                # Past the deadline the caller has answered 503 and the sender will retry.
                "message.timeout.ms": max(1000, int(produce_timeout_s * 1000)),
                # Reconnect within a second once Kafka is back (librdkafka backs off up to 10 s):
                # until then every delivery waits out its deadline and is refused or spooled.
                "reconnect.backoff.max.ms": 1000,
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
        return max(0, room - varint_size(room))

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
