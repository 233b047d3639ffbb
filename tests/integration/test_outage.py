"""The processor across a Kafka outage longer than its flush deadline: nothing lost, nothing doubled.

Its own embedded broker behind a TCP proxy (advertised as the broker's listener), so the test can
cut the processor off while records it produced are still queued in its producer.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import pytest

from processors.kafka import topics
from processors.kafka.serde import Codec
from processors.normalizer.runner import Normalizer
from processors.settings import KafkaSettings, TopicSettings
from tests.conftest import committed_to_end, processing, produce_raw, read, unique, wait_until
from tests.integration.test_effectively_once import _stream
from tests.tcpproxy import TcpProxy

pytestmark = pytest.mark.broker


class _CutWithOutputsQueued:
    """Cuts the proxy from inside the processor: the first time, once `after` events were written,
    that a batch waits for its outputs with some of them still unacknowledged after the cut. Those
    records are certain to be in flight through the whole outage."""

    def __init__(self, normalizer: Normalizer, proxy: TcpProxy, after: int) -> None:
        self.done = threading.Event()
        self.queued = 0
        engine, outputs = normalizer.engine, normalizer.engine.outputs
        drain = outputs.drain

        def cut_then_drain(stop: threading.Event | None) -> int:
            if not self.done.is_set() and engine.tally["events"] >= after:
                proxy.cut()
                if queued := len(outputs.producer):
                    self.queued = queued
                    self.done.set()
                else:  # everything was acknowledged before the cut: try the next batch
                    proxy.restore()
            return drain(stop)

        outputs.drain = cut_then_drain  # type: ignore[method-assign]


def _through_an_outage(
    proxied: tuple[KafkaSettings, TcpProxy], codec: Codec, partitions: int, cut_s: float, **section: Any
) -> float:
    """10,000 deliveries (10% repeats) through a processor cut off from Kafka for `cut_s` while a
    batch's outputs are in flight; asserts every event once, returns the batches it rewound."""
    kafka, proxy = proxied
    names = TopicSettings(partitions=partitions)
    topics.create_all(kafka, names)
    expected = 10_000
    deliveries, _ = _stream(expected, 0.10, seed=partitions)
    produce_raw(kafka, names.raw, deliveries, codec)
    group = unique("outage")
    with processing(kafka, names, group_id=group, batch_size=50, retry_backoff_s=0.2, **section) as normalizer:
        cut = _CutWithOutputsQueued(normalizer, proxy, after=500)
        wait_until(cut.done.is_set, 60, "a batch waited for its outputs after the cut")
        time.sleep(cut_s)  # sleep: a fault's duration (the outage itself)
        proxy.restore()
        wait_until(lambda: committed_to_end(kafka, group, names.raw), 120, "the processor committed the raw topic")
        events = read(kafka, names.events, codec, "VerificationEvent")
        rewound = float(normalizer.metrics.retries._value.get())

    assert cut.queued > 0
    ids = Counter(e["event_id"] for e in events)
    doubled = [i for i, count in ids.items() if count > 1]
    assert not doubled, f"{len(doubled)} events written twice"
    assert len(ids) == expected, f"{expected - len(ids)} events missing"
    return rewound


def test_an_outage_past_the_flush_deadline_doubles_no_event(
    proxied: tuple[KafkaSettings, TcpProxy], codec: Codec
) -> None:
    """Several 1 s flush deadlines pass while outputs wait in the producer: the batch waits for
    their delivery reports instead of being redone beside them (it used to write 50 events twice)."""
    rewound = _through_an_outage(proxied, codec, 1, 4.0, flush_timeout_s=1.0)
    assert rewound == 0, "outputs within delivery_timeout_s are waited for, not failed"


def test_outputs_failed_for_good_are_redone_once_kafka_is_back(
    proxied: tuple[KafkaSettings, TcpProxy], codec: Codec, store: dict[str, Any]
) -> None:
    """An outage longer than delivery_timeout_s: some of a batch's outputs failed, others may have
    landed. The processor takes its partitions over again (the restore finds what landed), replaces
    its fenced producer and redoes the batch: every event once."""
    rewound = _through_an_outage(proxied, codec, 2, 10.0, flush_timeout_s=1.0, delivery_timeout_s=2.0, **store)
    assert rewound >= 1, "the outage failed a batch for good"
