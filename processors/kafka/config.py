"""librdkafka configuration with safe defaults, built from KafkaSettings."""

from __future__ import annotations

from typing import Any

from processors.settings import KafkaSettings


def common(k: KafkaSettings) -> dict[str, Any]:
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
    conf.update(k.extra)
    return conf


def producer(k: KafkaSettings, **overrides: Any) -> dict[str, Any]:
    """Durable by default: acks=all with idempotence, so retries never duplicate or reorder."""
    conf = common(k) | {
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 5,
        "compression.type": "lz4",
    }
    conf.update(overrides)
    return conf


def consumer(k: KafkaSettings, group_id: str | None, **overrides: Any) -> dict[str, Any]:
    """Manual offset storage and commit: offsets move only after outputs are acknowledged."""
    conf = common(k) | {
        "group.id": group_id or "kycstream-reader",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": True,
        "isolation.level": "read_committed",
    }
    conf.update(overrides)
    return conf


def admin(k: KafkaSettings) -> dict[str, Any]:
    return common(k)


def schema_registry(k: KafkaSettings) -> dict[str, str] | None:
    if not k.schema_registry_url:
        return None
    conf = {"url": k.schema_registry_url}
    if k.schema_registry_basic_auth:
        conf["basic.auth.user.info"] = k.schema_registry_basic_auth.get_secret_value()
    return conf
