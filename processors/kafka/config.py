"""librdkafka configuration with safe defaults, built from KafkaSettings.

`kafka.extra` is applied last, over kycstream's values (what it may not change is refused when the
settings load: processors.settings.EXTRA_REFUSED), and each client gets only the properties of its
kind, so librdkafka prints no CONFWARN. Each client's own log lines go through the structured
logger, with its role (processors.logs.librdkafka).
"""

from __future__ import annotations

from typing import Any

from processors import logs
from processors.kafka import partitioner
from processors.settings import KafkaSettings

# librdkafka's CONFIGURATION.md (2.x), column C/P: the properties of one kind of client only.
CONSUMER_ONLY = frozenset(
    {
        "auto.commit.enable",
        "auto.commit.interval.ms",
        "auto.offset.reset",
        "check.crcs",
        "consume.callback.max.messages",
        "coordinator.query.interval.ms",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "enable.partition.eof",
        "fetch.error.backoff.ms",
        "fetch.max.bytes",
        "fetch.message.max.bytes",
        "fetch.min.bytes",
        "fetch.queue.backoff.ms",
        "fetch.wait.max.ms",
        "group.id",
        "group.instance.id",
        "group.protocol",
        "group.protocol.type",
        "group.remote.assignor",
        "heartbeat.interval.ms",
        "isolation.level",
        "max.partition.fetch.bytes",
        "max.poll.interval.ms",
        "max.poll.records",
        "offset.store.method",
        "offset.store.path",
        "offset.store.sync.interval.ms",
        "partition.assignment.strategy",
        "queued.max.messages.kbytes",
        "queued.min.messages",
        "session.timeout.ms",
        "share.acknowledgement.mode",
    }
)
PRODUCER_ONLY = frozenset(
    {
        "acks",
        "batch.num.messages",
        "batch.size",
        "compression.codec",
        "compression.level",
        "compression.type",
        "delivery.report.only.error",
        "delivery.timeout.ms",
        "enable.gapless.guarantee",
        "enable.idempotence",
        "linger.ms",
        "message.send.max.retries",
        "message.timeout.ms",
        "partitioner",
        "queue.buffering.backpressure.threshold",
        "queue.buffering.max.kbytes",
        "queue.buffering.max.messages",
        "queue.buffering.max.ms",
        "queuing.strategy",
        "request.required.acks",
        "request.timeout.ms",
        "retries",
        "sticky.partitioning.linger.ms",
        "transaction.timeout.ms",
        "transactional.id",
    }
)


def common(k: KafkaSettings) -> dict[str, Any]:
    """The connection properties and every `kafka.extra` property, for no client in particular."""
    return _connection(k) | k.extra


def _connection(k: KafkaSettings) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "bootstrap.servers": k.bootstrap_servers,
        "client.id": k.client_id,
        "security.protocol": k.security_protocol,
    }
    if k.sasl_mechanism:
        conf["sasl.mechanism"] = k.sasl_mechanism
    if k.sasl_username:
        conf["sasl.username"] = k.sasl_username
    if k.sasl_password:
        conf["sasl.password"] = k.sasl_password.get_secret_value()
    for key, value in (
        ("ssl.ca.location", k.ssl_ca_location),
        ("ssl.certificate.location", k.ssl_certificate_location),
        ("ssl.key.location", k.ssl_key_location),
    ):
        if value:
            conf[key] = value
    return conf


def _finish(k: KafkaSettings, conf: dict[str, Any], role: str, other_kinds: frozenset[str]) -> dict[str, Any]:
    """`conf` with kafka.extra over it (without the other kinds' properties) and the role's logger."""
    extra = {key: value for key, value in k.extra.items() if key not in other_kinds}
    return conf | extra | {"logger": logs.librdkafka(role)}


def producer(k: KafkaSettings, *, role: str = "producer", **overrides: Any) -> dict[str, Any]:
    """Durable by default: acks=all with idempotence, so retries never duplicate or reorder. Keys are
    placed as Java clients place them (processors.kafka.partitioner.DEFAULT), unless kafka.extra says."""
    conf = _connection(k) | {
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 5,
        "compression.type": "lz4",
        "partitioner": partitioner.DEFAULT,
    }
    return _finish(k, conf | overrides, role, CONSUMER_ONLY)


def consumer(k: KafkaSettings, group_id: str | None, *, role: str = "consumer", **overrides: Any) -> dict[str, Any]:
    """Manual offset storage and commit: offsets move only after outputs are acknowledged."""
    conf = _connection(k) | {
        "group.id": group_id or "kycstream-reader",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": True,
        "isolation.level": "read_committed",
    }
    return _finish(k, conf | overrides, role, PRODUCER_ONLY)


def admin(k: KafkaSettings, *, role: str = "admin") -> dict[str, Any]:
    return _finish(k, _connection(k), role, CONSUMER_ONLY | PRODUCER_ONLY)


def schema_registry(k: KafkaSettings) -> dict[str, str] | None:
    if not k.schema_registry_url:
        return None
    conf = {"url": k.schema_registry_url}
    if k.schema_registry_basic_auth:
        conf["basic.auth.user.info"] = k.schema_registry_basic_auth.get_secret_value()
    return conf
