"""A governed schema registry: the subjects kycstream writes (named by the configured strategy), the
check a role makes at start when it does not register them itself, and `kycstream schemas
register [--check]`, the CI step that checks compatibility and registers before a deploy."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from confluent_kafka.schema_registry import (
    Schema,
    record_subject_name_strategy,
    topic_record_subject_name_strategy,
    topic_subject_name_strategy,
)
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from processors.avro.codec import RecordType
from processors.errors import BrokerError, ConfigError
from processors.kafka.serde import Codec
from processors.settings import TopicSettings

STRATEGIES = {
    "topic": topic_subject_name_strategy,
    "record": record_subject_name_strategy,
    "topic_record": topic_record_subject_name_strategy,
}
REGISTER = (
    "register it with `kycstream schemas register` (the CI step before a deploy, docs/platforms.md), "
    "or set kafka.schema_registry_auto_register: true"
)


def writes(t: TopicSettings, *records: RecordType) -> dict[RecordType, str]:
    """The topic each of `records` (default: every record type) is written to."""
    topics: dict[RecordType, str] = {
        "RawDelivery": t.raw,
        "VerificationEvent": t.events,
        "VerificationState": t.state,
        "DeadLetter": t.dlq,
        "DedupRecord": t.dedup,
        "Expectation": t.expected,
    }
    return {record: topic for record, topic in topics.items() if not records or record in records}


@dataclass(frozen=True)
class Subject:
    name: str
    record: RecordType
    topic: str

    def __str__(self) -> str:
        return f"{self.name} ({self.record} on {self.topic})"


def subjects(codec: Codec, writes: Mapping[RecordType, str]) -> list[Subject]:
    """The subjects of the records in `writes` (record type -> topic) that go through the registry."""
    registry = codec.registry
    if registry is None:
        return []
    strategy = STRATEGIES[registry.subject_name_strategy]

    def name(record: RecordType, topic: str) -> str:
        return str(strategy(SerializationContext(topic, MessageField.VALUE), codec.record_name(record)))

    return [
        Subject(name(record, topic), record, topic)
        for record, topic in writes.items()
        if not codec.single_object_for(record)
    ]


def require(codec: Codec, writes: Mapping[RecordType, str]) -> None:
    """With auto-registration off, every subject a role writes must hold what its serializer will
    look up (kycstream's schema, or any latest version with use_latest_version): else refuse to start,
    naming the subjects, rather than fail on the first record."""
    registry = codec.registry
    if registry is None or registry.auto_register:
        return
    missing = []
    for subject in subjects(codec, writes):
        try:
            if registry.use_latest_version:
                codec.registry_client.get_latest_version(subject.name)
            else:
                codec.registry_client.lookup_schema(subject.name, _schema(codec, subject.record))
        except SchemaRegistryError as exc:
            if exc.http_status_code != 404:
                raise _unreachable(registry.url, exc) from exc
            missing.append(str(subject))
    if missing:
        what = "kycstream's schema" if not registry.use_latest_version else "a version"
        raise ConfigError(
            f"schema registry {registry.url} has no {what} under subject {', '.join(missing)}, and "
            f"kafka.schema_registry_auto_register is off: {REGISTER}"
        )


Outcome = Literal["new", "compatible", "incompatible", "registered"]


def check(codec: Codec, writes: Mapping[RecordType, str]) -> list[tuple[Subject, Outcome]]:
    """Each subject: new (none yet), compatible or incompatible with its latest version (by the
    subject's compatibility level)."""
    results: list[tuple[Subject, Outcome]] = []
    for subject in subjects(codec, writes):
        try:
            compatible = codec.registry_client.test_compatibility(subject.name, _schema(codec, subject.record))
        except SchemaRegistryError as exc:
            if exc.http_status_code != 404:
                assert codec.registry is not None
                raise _unreachable(codec.registry.url, exc) from exc
            results.append((subject, "new"))
            continue
        results.append((subject, "compatible" if compatible else "incompatible"))
    return results


def register(codec: Codec, subject: Subject) -> int:
    """Register kycstream's schema under `subject` (its id: the existing one when it is there)."""
    try:
        return int(codec.registry_client.register_schema(subject.name, _schema(codec, subject.record)))
    except SchemaRegistryError as exc:
        assert codec.registry is not None
        raise _unreachable(codec.registry.url, exc) from exc


def _schema(codec: Codec, record: RecordType) -> Schema:
    return Schema(json.dumps(codec.schema_json(record)), "AVRO")


def _unreachable(url: str, exc: Any) -> BrokerError:
    return BrokerError(
        f"schema registry {url} answered {exc.http_status_code} ({exc.error_message}): check "
        "kafka.schema_registry_url and its credentials (docs/platforms.md)"
    )
