"""The processor across a Kafka outage longer than its flush deadline: nothing lost, nothing doubled.

Its own embedded broker behind a TCP proxy (advertised as the broker's listener), so the test can
cut the processor off while records it produced are still queued in its producer.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import pytest

from processors.kafka import embedded, topics
from processors.kafka.serde import Codec
from processors.settings import KafkaSettings, TopicSettings
from tests.conftest import processing, produce_raw, read
from tests.integration.test_exactly_once import _stream
from tests.tcpproxy import TcpProxy

pytestmark = pytest.mark.broker


@pytest.fixture
def proxied() -> Iterator[tuple[KafkaSettings, TcpProxy]]:
    port = embedded.free_port()
    proxy = TcpProxy("127.0.0.1", port).start()
    running = embedded.start("127.0.0.1", port, advertised_port=proxy.port)
    try:
        yield KafkaSettings(bootstrap_servers=running.bootstrap_servers), proxy
    finally:
        running.stop()
        proxy.close()


def test_an_outage_past_the_flush_deadline_doubles_no_event(
    proxied: tuple[KafkaSettings, TcpProxy], codec: Codec
) -> None:
    kafka, proxy = proxied
    names = TopicSettings(partitions=1)
    topics.create_all(kafka, names)
    expected = 10_000
    deliveries, _ = _stream(expected, 0.10, seed=11)
    produce_raw(kafka, names.raw, deliveries, codec)

    # Small batches and a 1 s flush deadline: the cut comes while batches are being produced, and
    # their records are still queued in the producer when the deadline passes.
    with processing(kafka, names, batch_size=50, flush_timeout_s=1.0, retry_backoff_s=0.2) as normalizer:
        deadline = time.monotonic() + 60
        while normalizer.engine.tally["events"] < 500:
            assert time.monotonic() < deadline, "the processor did not start"
            time.sleep(0.01)
        proxy.cut()
        time.sleep(4)  # several flush deadlines pass while Kafka is unreachable
        proxy.restore()
        events = read(kafka, names.events, codec, "VerificationEvent", at_least=expected, timeout=90)
        time.sleep(3)  # anything doubled would arrive now
        events = read(kafka, names.events, codec, "VerificationEvent")

    ids = Counter(e["event_id"] for e in events)
    doubled = [i for i, count in ids.items() if count > 1]
    assert not doubled, f"{len(doubled)} events written twice"
    assert len(ids) == expected, f"{expected - len(ids)} events missing"


def test_outputs_failed_for_good_are_redone_once_kafka_is_back(
    proxied: tuple[KafkaSettings, TcpProxy], codec: Codec
) -> None:
    """An outage longer than delivery_timeout_s: some of a batch's outputs failed, others may have
    landed. The processor takes its partitions over again (the restore finds what landed) and redoes
    the batch: every event once."""
    kafka, proxy = proxied
    names = TopicSettings(partitions=2)
    topics.create_all(kafka, names)
    expected = 10_000
    deliveries, _ = _stream(expected, 0.10, seed=12)
    produce_raw(kafka, names.raw, deliveries, codec)

    section = {"batch_size": 50, "flush_timeout_s": 1.0, "delivery_timeout_s": 2.0, "retry_backoff_s": 0.2}
    with processing(kafka, names, **section) as normalizer:
        deadline = time.monotonic() + 60
        while normalizer.engine.tally["events"] < 500:
            assert time.monotonic() < deadline, "the processor did not start"
            time.sleep(0.01)
        proxy.cut()
        time.sleep(10)  # the queued outputs time out: failed for good
        proxy.restore()
        events = read(kafka, names.events, codec, "VerificationEvent", at_least=expected, timeout=90)
        time.sleep(3)
        events = read(kafka, names.events, codec, "VerificationEvent")
        retries = normalizer.metrics.retries._value.get()

    ids = Counter(e["event_id"] for e in events)
    doubled = [i for i, count in ids.items() if count > 1]
    assert retries >= 1, "the outage failed a batch"
    assert not doubled, f"{len(doubled)} events written twice"
    assert len(ids) == expected, f"{expected - len(ids)} events missing"
