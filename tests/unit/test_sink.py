"""The raw record's size as librdkafka reckons it against message.max.bytes (no broker needed:
produce() refuses an oversized record before it queues it)."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer

from processors.kafka.producer import record_bytes

LIMIT = 10_000


@pytest.mark.parametrize(
    ("key", "headers"),
    [
        (b"", []),
        (b"signicat:p-1", [("kycstream-request-id", b"r" * 36)]),
        (b"k" * 200, [("a", b"x" * 300), ("bb", b""), ("traceparent", b"0" * 55)]),
    ],
)
def test_record_bytes_is_librdkafkas_own_measure(key: bytes, headers: list[tuple[str, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": "127.0.0.1:1", "message.max.bytes": LIMIT})
    largest = LIMIT - record_bytes(key, b"", headers)
    assert record_bytes(key, b"v" * largest, headers) == LIMIT
    producer.produce("t", b"v" * largest, key, headers=headers)  # exactly at the limit: taken
    with pytest.raises(KafkaException) as refused:
        producer.produce("t", b"v" * (largest + 1), key, headers=headers)
    assert refused.value.args[0].code() == KafkaError.MSG_SIZE_TOO_LARGE
    producer.purge()
