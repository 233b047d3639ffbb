"""Which partition a keyed record went to: librdkafka's partitioners, computed without a producer.

kycstream's producers place every keyed record with DEFAULT, `murmur2_random`: Kafka's murmur2 of
the key, as the Java clients' default partitioner (and Kafka Streams, ksqlDB, Flink) places it, so
their topics keyed the same way are co-partitioned with kycstream's. librdkafka's own default,
`consistent_random` (CRC-32 of the key), is what kycstream used before: `kafka.extra.partitioner`
may choose it, or another, for topics filled that way (docs/operations.md, "Partitioning"), and
that same setting is read here.
"""

from __future__ import annotations

import zlib

DEFAULT = "murmur2_random"


def partition_for(key: bytes, partitions: int, partitioner: str = DEFAULT) -> int | None:
    """The partition a record with `key` goes to; None when the partitioner does not decide by key
    (`random`, or a name this module does not know): then any partition may hold it."""
    name = partitioner.removesuffix("_random")
    if name == "consistent":
        return zlib.crc32(key) % partitions
    if name == "murmur2":  # Java's BuiltInPartitioner.partitionForKey: toPositive(murmur2(key)) % n
        return (murmur2(key) & 0x7FFFFFFF) % partitions
    if name == "fnv1a":
        return fnv1a(key) % partitions
    return None


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (the Java client's `Utils.murmur2`, librdkafka's `rd_murmur2`), unsigned."""
    m, mask = 0x5BD1E995, 0xFFFFFFFF
    h = 0x9747B28C ^ len(data)
    whole = len(data) & ~3
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & mask
        k ^= k >> 24
        h = ((h * m) & mask) ^ ((k * m) & mask)
    tail = data[whole:]
    if len(tail) >= 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if tail:
        h = ((h ^ tail[0]) * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    return h ^ (h >> 15)


def fnv1a(data: bytes) -> int:
    """32-bit FNV-1a as librdkafka's `rd_fnv1a` has it: the absolute value of the signed hash (Sarama's)."""
    h = 0x811C9DC5
    for byte in data:
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    signed = h - (1 << 32) if h & 0x80000000 else h
    return abs(signed) & 0xFFFFFFFF
