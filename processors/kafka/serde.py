"""The record codec as Kafka uses it: the single-object encoding (processors.avro.codec), or the
Confluent wire format through a schema registry when one is configured."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from processors.avro import codec
from processors.avro.codec import RECORD_TYPES, RecordType
from processors.errors import SerdeError
from schemas import SCHEMA_DIR


class Codec(codec.Codec):
    """Encodes and decodes kycstream's record types. Build one per process and share it."""

    def __init__(self, schema_registry: Mapping[str, str] | None = None, schema_dir: Path = SCHEMA_DIR) -> None:
        super().__init__(schema_dir)
        if schema_registry:
            schemas = {name: self.schema_json(name) for name in RECORD_TYPES}
            self.use_wire_format(_RegistrySerde(schema_registry, schemas))


class _RegistrySerde:
    """Confluent wire format through confluent-kafka's schema-registry serializers."""

    def __init__(self, conf: Mapping[str, str], schemas: Mapping[RecordType, dict[str, Any]]) -> None:
        from confluent_kafka.schema_registry import SchemaRegistryClient
        from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer

        client = SchemaRegistryClient.new_client(dict(conf))  # mock:// URLs give an in-memory registry
        self._serializers = {name: AvroSerializer(client, json.dumps(s)) for name, s in schemas.items()}
        self._deserializers = {name: AvroDeserializer(client, json.dumps(s)) for name, s in schemas.items()}

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
