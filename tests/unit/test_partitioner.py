"""processors.kafka.partitioner: Kafka's murmur2 as Java has it, and which partition a key goes to.

The broker test (tests/integration/test_partitioning.py) checks librdkafka's placement against a
Java program; here, Kafka's own test vectors and the rules around them, without a broker."""

from __future__ import annotations

import pytest

from processors.kafka import config
from processors.kafka.partitioner import DEFAULT, murmur2, partition_for
from processors.settings import KafkaSettings

# Apache Kafka's UtilsTest.testMurmur2 (clients/src/test/java/org/apache/kafka/common/utils), the
# expected values as Java's signed ints.
KAFKA_VECTORS = [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
]


@pytest.mark.parametrize(("data", "java"), KAFKA_VECTORS)
def test_murmur2_is_kafkas(data: bytes, java: int) -> None:
    assert murmur2(data) == java % 2**32


@pytest.mark.parametrize(("data", "java"), KAFKA_VECTORS)
def test_the_partition_is_javas_to_positive_modulo(data: bytes, java: int) -> None:
    for partitions in (1, 6, 7, 12):  # BuiltInPartitioner.partitionForKey: toPositive(murmur2) % n
        assert partition_for(data, partitions) == (java & 0x7FFFFFFF) % partitions


def test_keys_are_placed_as_java_clients_place_them_by_default() -> None:
    assert DEFAULT == "murmur2_random"
    assert config.producer(KafkaSettings())["partitioner"] == DEFAULT


def test_extra_keeps_the_crc32_placement_of_older_topics() -> None:
    kafka = KafkaSettings(extra={"partitioner": "consistent_random"})
    assert config.producer(kafka)["partitioner"] == "consistent_random"
    assert "partitioner" not in config.consumer(kafka, "g") and "partitioner" not in config.admin(kafka)


def test_a_partitioner_that_does_not_hash_the_key_places_nothing() -> None:
    assert partition_for(b"esign:sub-1", 3, "random") is None
    assert partition_for(b"esign:sub-1", 3, "consistent_random") == partition_for(b"esign:sub-1", 3, "consistent")
