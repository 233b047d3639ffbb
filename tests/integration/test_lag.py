"""kycstream_consumer_lag: each partition's end (read to partition EOF, the embedded broker's listed
high watermarks being far below it) less the group's committed offset, exported by the processor
and the reconciler for their own groups."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined]
from prometheus_client import CollectorRegistry

from processors import probes
from processors.kafka import config, lag, topics
from processors.kafka.lag import LagMonitor
from processors.kafka.serde import Codec
from processors.settings import KafkaSettings, TopicSettings
from tests.conftest import (
    committed,
    committed_to_end,
    ends,
    processing,
    produce_raw,
    raw_delivery,
    reconciling,
    unique,
    wait_until,
)

pytestmark = pytest.mark.broker


def _topic(kafka: KafkaSettings, partitions: int) -> str:
    name = unique("test.lag")
    topics.create(AdminClient(config.admin(kafka)), (topics.TopicSpec("raw", name, partitions, 1),))
    return name


def _produce(kafka: KafkaSettings, topic: str, count: int) -> None:
    producer = Producer(config.producer(kafka))
    for i in range(count):
        producer.produce(topic, key=f"esign:{unique('lag')}-{i}".encode(), value=b"x")
    assert producer.flush(30) == 0


def _commit(kafka: KafkaSettings, group: str, offsets: dict[tuple[str, int], int]) -> None:
    consumer = Consumer(config.consumer(kafka, group))
    try:
        consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=False)
    finally:
        consumer.close()


def _expected(kafka: KafkaSettings, group: str, topic: str, partitions: int) -> dict[tuple[str, str, int], int]:
    """Every partition's lag, an empty one's too (random keys can leave one empty: `ends` omits it)."""
    done, end = committed(kafka, group, topic), ends(kafka, topic)
    return {(group, topic, p): end.get(p, 0) - done.get(p, 0) for p in range(partitions)}


def test_lag_is_each_partitions_end_less_the_committed_offset(kafka: KafkaSettings) -> None:
    topic, group = _topic(kafka, 3), unique("lag-group")
    _produce(kafka, topic, 60)
    end = ends(kafka, topic)
    assert set(end) == {0, 1, 2}
    _commit(kafka, group, {(topic, 0): 2, (topic, 1): end[1]})  # partition 2: nothing committed
    registry = CollectorRegistry()
    monitor = LagMonitor(kafka, {group: [topic]}, lag.gauge(registry), role="test", interval_s=3600)
    try:
        assert monitor.refresh() == {(group, topic, 0): end[0] - 2, (group, topic, 1): 0, (group, topic, 2): end[2]}
        _produce(kafka, topic, 30)  # read from where the last refresh ended
        _commit(kafka, group, {(topic, 2): 1})
        assert monitor.refresh() == _expected(kafka, group, topic, 3)
        assert sum(monitor.refresh().values()) == 90 - 2 - end[1] - 1
        labels = {"group": group, "topic": topic, "partition": "2"}
        assert registry.get_sample_value("kycstream_consumer_lag", labels) == ends(kafka, topic)[2] - 1
    finally:
        monitor.close()


def _lag_lines(url: str, group: str) -> dict[tuple[str, str], float]:
    """`(topic, partition) -> value` of the kycstream_consumer_lag samples of `group` on /metrics."""
    found = {}
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith("kycstream_consumer_lag{") and f'group="{group}"' in line:
            labels = dict(part.split("=", 1) for part in line[line.index("{") + 1 : line.index("}")].split(","))
            found[(labels["topic"].strip('"'), labels["partition"].strip('"'))] = float(line.rsplit(" ", 1)[1])
    return found


def test_the_processor_exports_its_groups_lag_on_its_metrics_endpoint(
    kafka: KafkaSettings, topic_settings: TopicSettings, codec: Codec
) -> None:
    group = unique("billing-normalizer")  # not the default group: the metric says which
    with processing(kafka, topic_settings, group_id=group) as normalizer:
        server = probes.serve(0, normalizer.health, normalizer.metrics.registry, host="127.0.0.1")
        url = f"http://127.0.0.1:{server.server_port}"
        try:
            bodies = [
                b'{"submissionId":"%s","status":"COMPLETED","result":"VALID"}' % unique("s").encode() for _ in range(9)
            ]
            produce_raw(kafka, topic_settings.raw, [raw_delivery("esign", b) for b in bodies], codec)
            wait_until(lambda: committed_to_end(kafka, group, topic_settings.raw), 30, "the processor committed all")
            assert normalizer.lag.refresh() == _expected(kafka, group, topic_settings.raw, topic_settings.partitions)
            partitions = {str(p) for p in range(topic_settings.partitions)}
            assert _lag_lines(url, group) == {(topic_settings.raw, p): 0.0 for p in partitions}
        finally:
            server.shutdown()
            server.server_close()


def test_the_reconciler_exports_its_fetch_groups_lag(
    kafka: KafkaSettings, make_topics: Callable[..., TopicSettings]
) -> None:
    """Its fetch group's (events read for notices to fetch); the expected group never commits."""
    topic_settings = make_topics()
    _produce(kafka, topic_settings.events, 5)  # not VerificationEvents: skipped, still records
    group = unique("billing-reconciler")
    poll = {"base_url": "http://127.0.0.1:9", "token": "api-key", "admin_token": "admin-token"}
    with reconciling(kafka, topic_settings, {"incode": {"provider": "incode", "poll": poll}}, group) as reconciler:
        server = probes.serve(0, reconciler.health, reconciler.metrics.registry, host="127.0.0.1")
        url = f"http://127.0.0.1:{server.server_port}"
        try:
            wait_until(lambda: httpx.get(f"{url}/readyz", timeout=5).status_code == 200, 30, "ready: tables whole")
            fetch_group = f"{group}-fetch"
            assert reconciler.lag.refresh() == _expected(
                kafka, fetch_group, topic_settings.events, topic_settings.partitions
            )
            exported = _lag_lines(url, fetch_group)
            assert set(exported) == {(topic_settings.events, str(p)) for p in range(topic_settings.partitions)}
            assert _lag_lines(url, group) == {}
        finally:
            server.shutdown()
            server.server_close()
