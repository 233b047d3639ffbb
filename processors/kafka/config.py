"""librdkafka configuration with safe defaults, built from KafkaSettings.

`kafka.extra` is applied last, over kycstream's values (what it may not change is refused when the
settings load: processors.settings.EXTRA_REFUSED), and each client gets only the properties of its
kind, so librdkafka prints no CONFWARN. Each client's own log lines go through the structured
logger, with its role (processors.logs.librdkafka).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from processors import logs
from processors.kafka import msk, partitioner
from processors.secretfile import secret
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
    if k.sasl_oauthbearer_method == "oidc":  # librdkafka fetches and refreshes the token itself
        conf["sasl.oauthbearer.method"] = "oidc"
        conf["sasl.oauthbearer.client.secret"] = secret(
            k.sasl_oauthbearer_client_secret, k.sasl_oauthbearer_client_secret_file
        )
    elif k.sasl_oauthbearer_method == "msk_iam":
        region = k.msk_region()
        assert region is not None  # checked when the settings loaded
        conf["oauth_cb"] = msk.token_callback(region)
    for key, value in (
        ("sasl.username", k.sasl_username),
        ("sasl.password", secret(k.sasl_password, k.sasl_password_file)),
        ("sasl.oauthbearer.client.id", k.sasl_oauthbearer_client_id),
        ("sasl.oauthbearer.token.endpoint.url", k.sasl_oauthbearer_token_endpoint_url),
        ("sasl.oauthbearer.scope", k.sasl_oauthbearer_scope),
        ("sasl.oauthbearer.extensions", k.sasl_oauthbearer_extensions),
        ("ssl.ca.location", k.ssl_ca_location),
        ("ssl.certificate.location", k.ssl_certificate_location),
        ("ssl.key.location", k.ssl_key_location),
        ("ssl.key.password", secret(k.ssl_key_password, k.ssl_key_password_file)),
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


@dataclass(frozen=True)
class Registry:
    """A schema registry: its client's configuration, and how kycstream's serializers use it."""

    client: dict[str, Any]
    auto_register: bool = True
    use_latest_version: bool = False
    subject_name_strategy: Literal["topic", "record", "topic_record"] = "topic"
    internal_topics: Literal["registry", "single_object"] = "registry"

    @property
    def url(self) -> str:
        return str(self.client["url"])


def schema_registry(k: KafkaSettings) -> Registry | None:
    """confluent-kafka's SchemaRegistryClient configuration (secrets read from their files now)."""
    if not k.schema_registry_url:
        return None
    conf: dict[str, Any] = {"url": k.schema_registry_url}
    bearer = secret(k.schema_registry_bearer_token, k.schema_registry_bearer_token_file)
    if bearer:
        conf |= {"bearer.auth.credentials.source": "STATIC_TOKEN", "bearer.auth.token": bearer}
    elif k.schema_registry_oauth_token_endpoint_url:
        conf |= {
            "bearer.auth.credentials.source": "OAUTHBEARER",
            "bearer.auth.issuer.endpoint.url": k.schema_registry_oauth_token_endpoint_url,
            "bearer.auth.client.id": k.schema_registry_oauth_client_id,
            "bearer.auth.client.secret": secret(
                k.schema_registry_oauth_client_secret, k.schema_registry_oauth_client_secret_file
            ),
            "bearer.auth.scope": k.schema_registry_oauth_scope,
        }
    if "bearer.auth.credentials.source" in conf:  # Confluent Cloud's; another registry ignores the header
        conf["bearer.auth.logical.cluster"] = k.schema_registry_logical_cluster
        if k.schema_registry_identity_pool_id:
            conf["bearer.auth.identity.pool.id"] = k.schema_registry_identity_pool_id
    for key, value in (
        ("basic.auth.user.info", secret(k.schema_registry_basic_auth, k.schema_registry_basic_auth_file)),
        ("ssl.ca.location", k.schema_registry_ssl_ca_location),
        ("ssl.certificate.location", k.schema_registry_ssl_certificate_location),
        ("ssl.key.location", k.schema_registry_ssl_key_location),
    ):
        if value:
            conf[key] = value
    return Registry(
        conf,
        auto_register=k.schema_registry_auto_register,
        use_latest_version=k.schema_registry_use_latest_version,
        subject_name_strategy=k.schema_registry_subject_name_strategy,
        internal_topics=k.schema_registry_internal_topics,
    )
