"""The gateway's Prometheus metrics, on a registry of its own per app."""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from gateway.spool.journal import Spool


class LoopHistogram:
    """A histogram without labels, exposed exactly as prometheus_client's Histogram (_bucket,
    _count, _sum, _created), observed with one bisect and no lock: for a metric written on one
    thread, the event loop's (Histogram.observe takes two locks and loops over the buckets in
    Python: 6% of the webhook path). Read by /metrics, served on that same loop."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry) -> None:
        self._name, self._documentation = name, documentation
        self._bounds = [*sorted(float(b) for b in buckets if float(b) != float("inf")), float("inf")]
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self._created = time.time()
        registry.register(self)

    def observe(self, amount: float) -> None:
        self._counts[bisect_left(self._bounds, amount)] += 1  # the first bucket whose bound >= amount
        self._sum += amount

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation)
        buckets, total = [], 0
        for bound, count in zip(self._bounds, self._counts, strict=True):
            total += count
            buckets.append((floatToGoString(bound), float(total)))
        family.add_metric([], buckets, self._sum)
        family.samples.append(Sample(f"{self._name}_created", {}, self._created))
        yield family


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "kycstream_gateway_requests",
            "Webhook requests by source and HTTP status.",
            ["source", "status"],
            registry=self.registry,
        )
        self.produce_seconds = LoopHistogram(
            "kycstream_gateway_produce_seconds",
            "Time from produce to Kafka acknowledgement of the raw record.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "kycstream_gateway_in_flight", "Requests awaiting Kafka acknowledgement.", registry=self.registry
        )
        self.unroutable = Counter(
            "kycstream_gateway_unroutable",
            "Deliveries keyed by request id because the provider module raised reading their verification "
            "id (their order per verification is not kept; see webhook_unroutable in the log), by source.",
            ["source"],
            registry=self.registry,
        )
        self.spooled = Counter(
            "kycstream_gateway_spooled",
            "Deliveries answered 200 from the local spool because Kafka was away, by source.",
            ["source"],
            registry=self.registry,
        )
        self.spool_forwarded = Counter(
            "kycstream_gateway_spool_forwarded", "Spooled records acknowledged by Kafka.", registry=self.registry
        )
        self.spool_forward_failures = Counter(
            "kycstream_gateway_spool_forward_failures",
            "Spooled records (or forwarder rounds, for kafka_unreachable) that Kafka did not take, by "
            "error; retried, except those quarantined (see spool_forward_failed in the log).",
            ["error"],
            registry=self.registry,
        )
        self.spool_quarantined = Gauge(
            "kycstream_gateway_spool_quarantined_records",
            "Spooled records Kafka refuses for good (e.g. over its size limit), moved to the spool's "
            "quarantine/ directory: answered 200, not in Kafka. An operator must act (docs/operations.md).",
            registry=self.registry,
        )
        self.spool_forwarded_past_dedup_window = Counter(
            "kycstream_gateway_spool_forwarded_past_dedup_window",
            "Spooled records forwarded later than gateway.spool.dedup_window_s after they were spooled.",
            registry=self.registry,
        )
        self.spool_damaged_bytes = Counter(
            "kycstream_gateway_spool_damaged_bytes",
            "Bytes of the spool found corrupt or torn at start (their records are lost; see the log).",
            registry=self.registry,
        )
        self.spool_records = Gauge(
            "kycstream_gateway_spool_records", "Records in the spool, not yet in Kafka.", registry=self.registry
        )
        self.spool_bytes = Gauge("kycstream_gateway_spool_bytes", "Bytes of the spool.", registry=self.registry)
        self.spool_max_bytes = Gauge(
            "kycstream_gateway_spool_max_bytes", "gateway.spool.max_bytes (0: no spool).", registry=self.registry
        )
        self.spool_oldest_age = Gauge(
            "kycstream_gateway_spool_oldest_age_seconds",
            "Age of the oldest record in the spool (0 when empty).",
            registry=self.registry,
        )

    def watch(self, spool: Spool) -> None:
        """The spool gauges read the spool when scraped."""
        self.spool_records.set_function(lambda: spool.records)
        self.spool_bytes.set_function(lambda: spool.bytes)
        self.spool_max_bytes.set(spool.max_bytes)
        self.spool_oldest_age.set_function(lambda: 0.0 if (t := spool.oldest) is None else spool.clock() - t)
        self.spool_quarantined.set_function(lambda: spool.quarantined)
        self.spool_damaged_bytes.inc(sum(d.lost_bytes for d in spool.damage))
