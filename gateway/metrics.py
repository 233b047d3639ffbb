"""The gateway's Prometheus metrics, on a registry of its own per app."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


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
