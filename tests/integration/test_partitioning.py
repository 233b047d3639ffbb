"""kycstream's producers place keys as Java's producer does (PRODUCT.md: "Keys are placed with Kafka's
murmur2"), checked through the broker against a Java program compiled here: the oracle shares no
code with librdkafka or processors/kafka/partitioner.py."""

from __future__ import annotations

import random
import shutil
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined]

from processors.kafka import config, reader, topics
from processors.kafka.partitioner import partition_for
from processors.settings import KafkaSettings
from tests.conftest import unique

pytestmark = pytest.mark.broker

ORACLE = Path(__file__).parent / "java" / "KafkaPartition.java"
COUNTS = (6, 12)


@pytest.fixture(scope="module")
def java_partition(tmp_path_factory: pytest.TempPathFactory) -> Callable[[list[bytes]], list[tuple[int, ...]]]:
    """The partitions Java's producer gives each key, for each of COUNTS."""
    if not (shutil.which("javac") and shutil.which("java")):
        pytest.skip("no JDK on PATH (javac, java): the Java oracle cannot be compiled; install openjdk-17-jdk-headless")
    classes = tmp_path_factory.mktemp("java")
    subprocess.run(["javac", "-d", str(classes), str(ORACLE)], check=True, capture_output=True, timeout=120)

    def partitions(keys: list[bytes]) -> list[tuple[int, ...]]:
        out = subprocess.run(
            ["java", "-cp", str(classes), "KafkaPartition", *map(str, COUNTS)],
            input="\n".join(k.hex() for k in keys) + "\n",
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        return [tuple(int(p) for p in line.split()) for line in out.splitlines()]

    return partitions


def _keys(count: int) -> list[bytes]:
    """Keys like kycstream's (`provider:verification_id`, request ids) of every length mod 4, some not ASCII."""
    rng = random.Random(31)
    providers = ("esign", "signicat", "incode", "metamap", "xendit", "persona", "sümsub")
    keys = {
        f"{rng.choice(providers)}:{uuid.UUID(int=rng.getrandbits(128)).hex[: rng.randint(1, 32)]}" for _ in range(900)
    }
    keys |= {str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(90)}
    keys |= {"x" * n for n in range(1, 11)} | {"21", "foobar", "abc", "a-little-bit-long-string"}
    return sorted(k.encode() for k in keys)[:1000]


def test_keys_are_placed_as_javas_producer_places_them(
    kafka: KafkaSettings, java_partition: Callable[[list[bytes]], list[tuple[int, ...]]]
) -> None:
    keys = _keys(1000)
    assert len(keys) == 1000
    java = dict(zip(keys, java_partition(keys), strict=True))
    admin = AdminClient(config.admin(kafka))
    producer = Producer(config.producer(kafka))  # every role's producer: no partitioner named here
    for i, count in enumerate(COUNTS):
        topic = unique(f"test.partitioning.{count}")
        topics.create(admin, (topics.TopicSpec("raw", topic, count, 1),))
        for key in keys:
            producer.produce(topic, key=key, value=b"x")
        assert producer.flush(30) == 0
        placed = {r.key: r.partition for r in reader.read_all(kafka, topic)}  # where the broker holds them
        assert len(placed) == len(keys)
        wrong = {k: (p, java[k][i]) for k, p in placed.items() if p != java[k][i]}
        assert not wrong, f"{len(wrong)} of {len(keys)} keys not in Java's partition of {count} (ours, Java's)"
        assert {k: partition_for(k, count) for k in keys} == placed, "kycstream inspect looks where they are"
