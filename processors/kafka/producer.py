"""Producing: an asyncio-facing producer whose awaits end at each record's own delivery report.

Concurrent requests share librdkafka's batches (linger.ms); nobody flushes per record.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from processors.errors import BrokerError


@dataclass(frozen=True, slots=True)
class Delivered:
    topic: str
    partition: int
    offset: int


class ProduceTimeout(BrokerError):
    """Kafka did not acknowledge in time; the caller should answer 503 so the sender retries."""


class AsyncProducer:
    """Wraps a confluent-kafka Producer; a background thread serves its delivery callbacks."""

    def __init__(self, conf: dict[str, Any]) -> None:
        self._producer = Producer(conf)
        self._running = True
        self._thread = threading.Thread(target=self._serve, name="kafka-delivery", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while self._running:
            self._producer.poll(0.05)

    async def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | str | None = None,
        headers: list[tuple[str, str | bytes | None]] | None = None,
        timeout: float = 5.0,
    ) -> Delivered:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Delivered] = loop.create_future()

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            loop.call_soon_threadsafe(_settle, future, err, msg)

        try:
            self._producer.produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)
        except BufferError as exc:
            raise BrokerError("the producer queue is full: Kafka is not keeping up") from exc
        except KafkaException as exc:
            raise BrokerError(f"Kafka refused the record: {exc.args[0].str()}") from exc
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError as exc:
            raise ProduceTimeout(f"Kafka did not acknowledge within {timeout:g}s") from exc

    def list_topics(self, timeout: float) -> dict[str, int]:
        try:
            metadata = self._producer.list_topics(timeout=timeout)
        except KafkaException as exc:
            raise BrokerError(f"Kafka did not answer within {timeout:g}s") from exc
        return {name: len(t.partitions) for name, t in metadata.topics.items() if not t.error}

    def close(self, timeout: float = 10.0) -> int:
        """Deliver what is queued (up to `timeout`) and stop; returns the records left undelivered."""
        left = int(self._producer.flush(timeout))
        self._running = False
        self._thread.join(timeout=1.0)
        return left


def _settle(future: asyncio.Future[Delivered], err: KafkaError | None, msg: Message) -> None:
    if future.done():
        return
    if err is not None:
        future.set_exception(BrokerError(f"Kafka rejected the record: {err.str()}"))
    else:
        future.set_result(Delivered(msg.topic() or "", msg.partition() or 0, msg.offset() or 0))
