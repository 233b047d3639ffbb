"""Consumer lag as a metric: `kycstream_consumer_lag{group,topic,partition}`, refreshed off the hot path.

Lag is a partition's end less the group's committed offset (less its first offset where the group
has committed nothing: it starts from the earliest record). The end is where a read of the partition
reports EOF, from the furthest of the committed offset, the listed high watermark and the end seen
last time: a broker whose ListOffsets under-reports (the embedded one answers far below the end)
only makes that read longer; on Kafka, whose answer is the end, it is one empty fetch. The roles
run one monitor each, in a thread of its own with its own consumers (one per group, assigned, never
joining or committing), so the refresh never waits on or for the main loop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from prometheus_client import CollectorRegistry, Gauge

from processors import logs
from processors.errors import BrokerError
from processors.kafka import config, reader
from processors.settings import KafkaSettings

log = logs.get("kycstream.lag")

INTERVAL_S = 15.0  # twice per default scrape interval (30 s, deploy/monitoring/podmonitors.yaml)
_READ_TIMEOUT_S = 30.0

Lag = dict[tuple[str, str, int], int]  # (group, topic, partition) -> records behind


def gauge(registry: CollectorRegistry) -> Gauge:
    return Gauge(
        "kycstream_consumer_lag",
        "Records of a partition past the group's committed offset (the end read to partition EOF), by "
        "group, topic and partition. Every member of a group exports the whole group's: aggregate with max.",
        ["group", "topic", "partition"],
        registry=registry,
    )


class LagMonitor:
    """The lag of `groups` (group -> the topics it consumes) into `lag`, every `interval_s`."""

    def __init__(
        self,
        kafka: KafkaSettings,
        groups: Mapping[str, list[str]],
        lag: Gauge,
        *,
        role: str,
        interval_s: float = INTERVAL_S,
    ) -> None:
        self.kafka = kafka
        self.groups = dict(groups)
        self.lag = lag
        self.role = role
        self.interval_s = interval_s
        self._consumers: dict[str, Consumer] = {}  # created on first use, in the refreshing thread
        self._ends: dict[tuple[str, int], int] = {}  # the end each partition had last time
        self._lock = threading.Lock()  # one refresh at a time: a consumer is not shared between threads
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._under_reported = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"{self.role}-lag", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(_READ_TIMEOUT_S + 5)
        with self._lock:
            for consumer in self._consumers.values():
                consumer.close()
            self._consumers.clear()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except (BrokerError, KafkaException) as exc:  # the values stay as they were; next time
                log.warning("lag_refresh_failed", role=self.role, error=str(exc))
            self._stop.wait(self.interval_s)

    def refresh(self) -> Lag:
        """Read every group's lag now, set the gauge and return it."""
        found: Lag = {}
        with self._lock:
            for group, topics in self.groups.items():
                for topic in topics:
                    for partition, behind in self._group_lag(group, topic).items():
                        found[(group, topic, partition)] = behind
                        self.lag.labels(group, topic, str(partition)).set(behind)
        return found

    def _consumer(self, group: str) -> Consumer:
        if group not in self._consumers:
            conf = config.consumer(self.kafka, group, role=f"{self.role}-lag", **{"fetch.wait.max.ms": 10})
            self._consumers[group] = Consumer(conf)
        return self._consumers[group]

    def _group_lag(self, group: str, topic: str) -> dict[int, int]:
        consumer = self._consumer(group)
        partitions = reader.topic_partitions(consumer, topic)
        committed = {
            tp.partition: tp.offset
            for tp in consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        }
        starts: dict[int, int] = {}
        from_here: list[TopicPartition] = []
        for p in partitions:
            low, listed = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
            starts[p] = committed[p] if committed.get(p, -1) >= 0 else low
            from_here.append(TopicPartition(topic, p, max(starts[p], listed, self._ends.get((topic, p), 0))))
        ends = self._ends_read(consumer, topic, from_here)
        listed_ends = {tp.partition: tp.offset for tp in from_here}
        if not self._under_reported and any(ends[p] > listed_ends[p] for p in partitions):
            self._under_reported = True  # once per monitor: the broker's ListOffsets is behind its data
            log.info("lag_watermarks_under_report", role=self.role, topic=topic)
        self._ends.update({(topic, p): end for p, end in ends.items()})
        return {p: max(0, ends[p] - starts[p]) for p in partitions}

    def _ends_read(self, consumer: Consumer, topic: str, starts: list[TopicPartition]) -> dict[int, int]:
        """Each partition's end: the offset its partition EOF reports, read from `starts`."""
        consumer.assign(starts)
        ends: dict[int, int] = {}
        deadline = time.monotonic() + _READ_TIMEOUT_S
        try:
            while len(ends) < len(starts):
                if time.monotonic() > deadline:
                    raise BrokerError(f"reading {topic} to its end took over {_READ_TIMEOUT_S:g}s")
                for msg in consumer.consume(10_000, 0.2):
                    error = msg.error()
                    if error is not None and error.code() == KafkaError._PARTITION_EOF:
                        ends[msg.partition() or 0] = msg.offset() or 0
                    elif error is not None:
                        raise BrokerError(f"reading {topic}[{msg.partition()}] failed: {error.str()}")
        finally:
            consumer.unassign()
        return ends
