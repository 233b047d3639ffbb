"""The gateway's Prometheus metrics, on a registry of its own per app."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from gateway.spool import Spool


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "kycstream_gateway_requests",
            "Webhook requests by source and HTTP status.",
            ["source", "status"],
            registry=self.registry,
        )
        self.produce_seconds = Histogram(
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
        self.spool_damaged_bytes.inc(sum(d.lost_bytes for d in spool.damage))
