"""The gateway's way into Kafka: raw envelopes, Avro-encoded, acknowledged or refused in time."""

from __future__ import annotations

import asyncio
import time

from processors.errors import BrokerError
from processors.kafka import config
from processors.kafka.producer import AsyncProducer, Delivered
from processors.kafka.serde import Codec, delivery_to_record, expectation_to_record
from processors.kafka.topics import specs
from processors.model import Expectation, RawDelivery
from processors.settings import KafkaSettings, TopicSettings


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

    async def write(self, delivery: RawDelivery, key: str) -> Delivered:
        value = self._codec.encode("RawDelivery", delivery_to_record(delivery), self.topic)
        headers: list[tuple[str, str | bytes | None]] = [
            ("kycstream-request-id", delivery.request_id.encode()),
            ("kycstream-source", delivery.source.encode()),
            ("kycstream-provider", delivery.provider.encode()),
        ]
        return await self._producer.send(self.topic, value, key.encode(), headers)

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
