"""The record codec as Kafka uses it: the single-object encoding (processors.avro.codec), or the
Confluent wire format through a schema registry when one is configured (for every record type, or
all but the internal topics' when kafka.schema_registry_internal_topics is single_object)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from processors.avro import codec
from processors.avro.codec import RECORD_TYPES, RecordType
from processors.errors import SerdeError
from processors.kafka.config import Registry
from schemas import SCHEMA_DIR

# The records of the topics only kycstream reads back (dedup, expected) or restores from (state).
INTERNAL: frozenset[RecordType] = frozenset({"DedupRecord", "VerificationState", "Expectation"})


class Codec(codec.Codec):
    """Encodes and decodes kycstream's record types. Build one per process and share it.

    `schema_registry`: config.schema_registry(kafka), or a registry client's configuration alone
    (e.g. {"url": "mock://name"}, an in-memory registry) with the defaults."""

    def __init__(
        self, schema_registry: Registry | Mapping[str, Any] | None = None, schema_dir: Path = SCHEMA_DIR
    ) -> None:
        super().__init__(schema_dir)
        registry = Registry(dict(schema_registry)) if isinstance(schema_registry, Mapping) else schema_registry
        self.registry = registry
        self.registry_client: Any = None
        if registry:
            framed = [n for n in RECORD_TYPES if registry.internal_topics == "registry" or n not in INTERNAL]
            wire = _RegistrySerde(registry, {name: self.schema_json(name) for name in framed})
            self.registry_client = wire.client
            self.use_wire_format(wire, framed)

    def close(self) -> None:
        """Close the registry client's HTTP connections (a role's codec lives as long as the process)."""
        if self.registry_client is not None and hasattr(self.registry_client, "close"):
            self.registry_client.close()

    def record_name(self, name: RecordType) -> str:
        """The schema's full name, as a subject name strategy sees it (kycstream.VerificationEvent)."""
        schema = self.schema_json(name)
        return f"{schema['namespace']}.{schema['name']}" if schema.get("namespace") else str(schema["name"])


class _RegistrySerde:
    """Confluent wire format through confluent-kafka's schema-registry serializers."""

    def __init__(self, registry: Registry, schemas: Mapping[RecordType, dict[str, Any]]) -> None:
        from confluent_kafka.schema_registry import SchemaRegistryClient
        from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer

        from processors.kafka.registry import STRATEGIES

        self.client = SchemaRegistryClient.new_client(dict(registry.client))  # mock:// URLs: in memory
        conf = {
            "auto.register.schemas": registry.auto_register,
            "use.latest.version": registry.use_latest_version,
            "subject.name.strategy": STRATEGIES[registry.subject_name_strategy],
        }
        self._serializers = {name: AvroSerializer(self.client, json.dumps(s), conf=conf) for name, s in schemas.items()}
        self._deserializers = {name: AvroDeserializer(self.client, json.dumps(s)) for name, s in schemas.items()}

    def encode(self, name: RecordType, record: Mapping[str, Any], topic: str) -> bytes:
        from confluent_kafka.serialization import MessageField, SerializationContext

        try:
            data = self._serializers[name](dict(record), SerializationContext(topic, MessageField.VALUE))
        except Exception as exc:
            raise SerdeError(f"schema registry could not encode {name} for {topic}: {exc}") from exc
        assert data is not None
        return bytes(data)

    def decode(self, name: RecordType, data: bytes, topic: str) -> dict[str, Any]:
        from confluent_kafka.serialization import MessageField, SerializationContext

        try:
            value = self._deserializers[name](data, SerializationContext(topic, MessageField.VALUE))
        except Exception as exc:
            raise SerdeError(f"schema registry could not decode {name} from {topic}: {exc}") from exc
        if not isinstance(value, dict):
            raise SerdeError(f"decoded {name} is not a record")
        return value
