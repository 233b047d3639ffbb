"""The processor's Prometheus metrics (the reconciler's live with it, the gateway's in gateway/)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from processors.kafka import lag


class ProcessorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "kycstream_events", "Events emitted by provider and status.", ["provider", "status"], registry=r
        )
        self.dead_letters = Counter(
            "kycstream_dead_letters",
            "Deliveries sent to the DLQ by provider and reason.",
            ["provider", "reason"],
            registry=r,
        )
        self.notices = Counter(
            "kycstream_notices",
            "Provider notices that are no verification result (no event, no dead letter), by kind.",
            ["provider", "kind"],
            registry=r,
        )
        self.dedup_hits = Counter(
            "kycstream_dedup_hits", "Deliveries recognised as repeats, by provider.", ["provider"], registry=r
        )
        self.reversals = Counter(
            "kycstream_reversals",
            "Results seen before that became events again: newer by the provider's time, and a change "
            "of the state (verified -> rejected -> verified), by provider.",
            ["provider"],
            registry=r,
        )
        self.retries = Counter(
            "kycstream_batch_retries", "Batches rewound because an output was not acknowledged.", registry=r
        )
        self.repaired = Counter(
            "kycstream_restore_repaired_events",
            "Events found without their dedup record on restore (after a crash).",
            registry=r,
        )
        self.restore_seconds = Gauge(
            "kycstream_restore_seconds", "Duration of the last restore, by partition.", ["partition"], registry=r
        )
        self.dedup_keys = Gauge(
            "kycstream_dedup_keys", "Idempotency keys held, by partition.", ["partition"], registry=r
        )
        self.owned = Gauge("kycstream_partitions_owned", "Raw partitions this processor owns.", registry=r)
        self.consumer_lag = lag.gauge(r)  # the processor group's, on the raw topic
