"""Avro encoding of the domain model: schemas parsed once, single-object encoding by default.

Two steps kept apart, as confluent-kafka does: `*_to_record` / `*_from_record` turn model objects
into the dicts the schemas describe; `Codec` turns those dicts into bytes and back: with codecs
compiled from the current schemas (avrocompile), fastavro for the registry and retired schemas.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import fastavro
import fastavro.schema

from processors.errors import SerdeError
from processors.kafka.avrocompile import RecordReader, RecordWriter, compile_reader, compile_writer
from processors.model import (
    Check,
    CheckOutcome,
    DeadLetter,
    DedupRecord,
    Expectation,
    Origin,
    RawDelivery,
    RawRef,
    Reason,
    VerificationEvent,
    VerificationState,
    VerificationStatus,
)
from schemas import NAMESPACE, SCHEMA_DIR

RecordType = Literal[
    "RawDelivery", "VerificationEvent", "VerificationState", "DeadLetter", "DedupRecord", "Expectation"
]
RECORD_TYPES: tuple[RecordType, ...] = (
    "RawDelivery",
    "VerificationEvent",
    "VerificationState",
    "DeadLetter",
    "DedupRecord",
    "Expectation",
)
SINGLE_OBJECT_MAGIC = b"\xc3\x01"


def _load_definitions(directory: Path) -> dict[str, dict[str, Any]]:
    return {path.name.removesuffix(".avsc"): json.loads(path.read_text()) for path in sorted(directory.glob("*.avsc"))}


def expand_schema(name: str, definitions: Mapping[str, Any]) -> dict[str, Any]:
    """The full schema of `name`, each named type inlined at its first use (standalone JSON)."""
    seen: set[str] = set()

    def inline(node: Any, namespace: str) -> Any:
        if isinstance(node, str):
            full = node if "." in node else f"{namespace}.{node}"
            if full in definitions and full not in seen:
                seen.add(full)
                return inline(definitions[full], namespace)
            return node
        if isinstance(node, list):
            return [inline(branch, namespace) for branch in node]
        if isinstance(node, dict):
            if node.get("type") in ("record", "enum", "fixed"):
                seen.add(f"{node.get('namespace', namespace)}.{node['name']}")
            out = dict(node)
            if "fields" in out:
                out["fields"] = [{**f, "type": inline(f["type"], namespace)} for f in out["fields"]]
            for key in ("items", "values"):
                if key in out:
                    out[key] = inline(out[key], namespace)
            if isinstance(out.get("type"), dict | list) or (
                isinstance(out.get("type"), str) and out["type"] in definitions
            ):
                out["type"] = inline(out["type"], namespace)
            return out
        return node

    return dict(inline(f"{NAMESPACE}.{name}", NAMESPACE))


@dataclass(frozen=True)
class _Schema:
    name: str
    json: dict[str, Any]
    parsed: Any
    fingerprint: bytes


def _schema(name: str, definitions: Mapping[str, Any]) -> _Schema:
    full = expand_schema(name, definitions)
    parsed = fastavro.parse_schema(full)
    canonical = fastavro.schema.to_parsing_canonical_form(parsed)
    return _Schema(name, full, parsed, bytes.fromhex(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO")))


class Codec:
    """Encodes and decodes the five record types. Build one per process and share it."""

    def __init__(self, schema_registry: Mapping[str, str] | None = None, schema_dir: Path = SCHEMA_DIR) -> None:
        definitions = _load_definitions(schema_dir)
        self._schemas = {name: _schema(name, definitions) for name in RECORD_TYPES}
        # Writer schemas a reader may meet: the current ones plus retired versions in history/.
        self._writers: dict[bytes, Any] = {s.fingerprint: s.parsed for s in self._schemas.values()}
        history = schema_dir / "history"
        retired_definitions = _load_definitions(history) if history.is_dir() else {}
        for name in RECORD_TYPES:
            if f"{NAMESPACE}.{name}" in retired_definitions:
                retired = _schema(name, {**definitions, **retired_definitions})
                self._writers.setdefault(retired.fingerprint, retired.parsed)
        self._registry = _RegistrySerde(schema_registry, self._schemas) if schema_registry else None
        # Header, writer and reader compiled from each current schema: fastavro, which validates the
        # value against every union branch it tries, takes 2-4 times as long to encode, 1.5-2 to decode.
        self._compiled: dict[str, tuple[bytes, RecordWriter, RecordReader]] = {}
        if self._registry is None:
            for name, s in self._schemas.items():
                header = SINGLE_OBJECT_MAGIC + s.fingerprint
                self._compiled[name] = (header, compile_writer(s.json), compile_reader(s.json))

    def schema_json(self, name: RecordType) -> dict[str, Any]:
        return self._schemas[name].json

    def encode(self, name: RecordType, record: Mapping[str, Any], topic: str = "") -> bytes:
        if self._registry is not None:
            return self._registry.encode(name, record, topic)
        header, write, _ = self._compiled[name]
        try:
            return write(record, header)
        except (ValueError, TypeError, KeyError) as exc:
            raise SerdeError(f"cannot encode {name}: {exc}") from exc

    def decode(self, name: RecordType, data: bytes, topic: str = "") -> dict[str, Any]:
        if self._registry is not None:
            return self._registry.decode(name, data, topic)
        header, _, compiled = self._compiled[name]
        read: Callable[[bytes, int], Any] = compiled
        if data[:10] != header:  # not the current schema (the usual case): a retired one, or not ours
            if len(data) < 10 or data[:2] != SINGLE_OBJECT_MAGIC:
                raise SerdeError(f"not an Avro single-object encoded {name} (bad magic or too short)")
            writer = self._writers.get(data[2:10])
            if writer is None:
                raise SerdeError(
                    f"unknown schema fingerprint {data[2:10].hex()} for {name}: the record was written "
                    "with a schema this version does not have (add it to schemas/history/)"
                )
            current = self._schemas[name].parsed
            read = lambda d, p: fastavro.schemaless_reader(io.BytesIO(d[p:]), writer, current)  # noqa: E731
        try:
            value = read(data, 10)
        except Exception as exc:  # truncated or corrupt input raises a variety of errors
            raise SerdeError(f"corrupt {name} record: {type(exc).__name__}") from exc
        if not isinstance(value, dict):
            raise SerdeError(f"decoded {name} is not a record")
        return value


class _RegistrySerde:
    """Confluent wire format through confluent-kafka's schema-registry serializers."""

    def __init__(self, conf: Mapping[str, str], schemas: Mapping[RecordType, _Schema]) -> None:
        from confluent_kafka.schema_registry import SchemaRegistryClient
        from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer

        client = SchemaRegistryClient.new_client(dict(conf))  # mock:// URLs give an in-memory registry
        self._serializers = {name: AvroSerializer(client, json.dumps(s.json)) for name, s in schemas.items()}
        self._deserializers = {name: AvroDeserializer(client, json.dumps(s.json)) for name, s in schemas.items()}

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


# --- model <-> record dicts -------------------------------------------------------------------


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def delivery_to_record(d: RawDelivery) -> dict[str, Any]:
    return {
        "request_id": d.request_id,
        "source": d.source,
        "provider": d.provider,
        "method": d.method,
        "received_at": _utc(d.received_at),
        "body": d.body,
        "headers": dict(d.headers),
        "remote_addr": d.remote_addr,
        "content_type": d.content_type,
        "origin": d.origin,
    }


def _origin(value: object) -> Origin:
    if value == "poll" or value == "fetch":
        return value
    return "callback"


def delivery_from_record(r: Mapping[str, Any]) -> RawDelivery:
    return RawDelivery(
        request_id=r["request_id"],
        source=r["source"],
        provider=r["provider"],
        method=r["method"],
        received_at=r["received_at"],
        body=r["body"],
        headers=dict(r.get("headers") or {}),
        remote_addr=r.get("remote_addr"),
        content_type=r.get("content_type"),
        origin=_origin(r.get("origin")),
    )


def event_to_record(e: VerificationEvent) -> dict[str, Any]:
    return {
        "event_id": e.event_id,
        "idempotency_key": e.idempotency_key,
        "provider": e.provider,
        "source": e.source,
        "verification_id": e.verification_id,
        "status": e.status.value,
        "provider_status": e.provider_status,
        "event_type": e.event_type,
        "subject_id": e.subject_id,
        "session_id": e.session_id,
        "occurred_at": _utc(e.occurred_at),
        "received_at": _utc(e.received_at),
        "checks": [
            {"name": c.name, "outcome": c.outcome.value, "score": c.score, "code": c.code, "message": c.message}
            for c in e.checks
        ],
        "reasons": [{"code": r.code, "message": r.message, "field": r.field} for r in e.reasons],
        "attributes": dict(e.attributes),
        "raw_ref": (
            None
            if e.raw_ref is None
            else {
                "topic": e.raw_ref.topic,
                "partition": e.raw_ref.partition,
                "offset": e.raw_ref.offset,
                "request_id": e.raw_ref.request_id,
            }
        ),
    }


def event_from_record(r: Mapping[str, Any]) -> VerificationEvent:
    ref = r.get("raw_ref")
    return VerificationEvent(
        event_id=r["event_id"],
        idempotency_key=r["idempotency_key"],
        provider=r["provider"],
        source=r["source"],
        verification_id=r["verification_id"],
        status=VerificationStatus(r["status"]),
        provider_status=r["provider_status"],
        event_type=r.get("event_type"),
        subject_id=r.get("subject_id"),
        session_id=r.get("session_id"),
        occurred_at=r.get("occurred_at"),
        received_at=r["received_at"],
        checks=tuple(
            Check(c["name"], CheckOutcome(c["outcome"]), c.get("score"), c.get("code"), c.get("message"))
            for c in r.get("checks") or ()
        ),
        reasons=tuple(Reason(x["code"], x.get("message"), x.get("field")) for x in r.get("reasons") or ()),
        attributes=dict(r.get("attributes") or {}),
        raw_ref=None if ref is None else RawRef(ref["topic"], ref["partition"], ref["offset"], ref["request_id"]),
    )


def state_to_record(s: VerificationState) -> dict[str, Any]:
    return {
        "key": s.key,
        "provider": s.provider,
        "verification_id": s.verification_id,
        "status": s.status.value,
        "last_event_id": s.last_event_id,
        "updated_at": _utc(s.updated_at),
        "occurred_at": _utc(s.occurred_at),
        "decided_at": _utc(s.decided_at),
        "event_count": s.event_count,
        "raw_offset": s.raw_offset,
    }


def state_from_record(r: Mapping[str, Any]) -> VerificationState:
    return VerificationState(
        key=r["key"],
        provider=r["provider"],
        verification_id=r["verification_id"],
        status=VerificationStatus(r["status"]),
        last_event_id=r["last_event_id"],
        updated_at=r["updated_at"],
        occurred_at=r.get("occurred_at"),
        decided_at=r.get("decided_at"),
        event_count=r.get("event_count", 1),
        raw_offset=r.get("raw_offset", -1),
    )


def dead_letter_to_record(d: DeadLetter) -> dict[str, Any]:
    return {
        "reason": d.reason,
        "detail": d.detail,
        "failed_at": _utc(d.failed_at),
        "source_topic": d.source_topic,
        "partition": d.partition,
        "offset": d.offset,
        "original_value": d.original_value,
        "original_key": d.original_key,
        "request_id": d.request_id,
        "source": d.source,
        "provider": d.provider,
    }


def dead_letter_from_record(r: Mapping[str, Any]) -> DeadLetter:
    return DeadLetter(
        reason=r["reason"],
        detail=r["detail"],
        failed_at=r["failed_at"],
        source_topic=r["source_topic"],
        partition=r["partition"],
        offset=r["offset"],
        original_value=r["original_value"],
        original_key=r.get("original_key"),
        request_id=r.get("request_id"),
        source=r.get("source"),
        provider=r.get("provider"),
    )


def dedup_to_record(d: DedupRecord) -> dict[str, Any]:
    first_seen_at, expires_at = _utc(d.first_seen_at), _utc(d.expires_at)
    assert first_seen_at is not None and expires_at is not None
    return dedup_record(d.idempotency_key, d.event_id, first_seen_at, expires_at, d.events_offset)


def dedup_record(
    key: str, event_id: str, first_seen_at: datetime | int, expires_at: datetime | int, events_offset: int
) -> dict[str, Any]:
    """A DedupRecord's dict without the model object; timestamps as aware datetimes or epoch ms (the
    processor writes one per event, all of a batch with the same times: it converts them once)."""
    return {
        "idempotency_key": key,
        "event_id": event_id,
        "first_seen_at": first_seen_at,
        "expires_at": expires_at,
        "events_offset": events_offset,
    }


def dedup_from_record(r: Mapping[str, Any]) -> DedupRecord:
    return DedupRecord(
        r["idempotency_key"], r["event_id"], r["first_seen_at"], r["expires_at"], r.get("events_offset", -1)
    )


def expectation_to_record(e: Expectation) -> dict[str, Any]:
    return {
        "source": e.source,
        "provider": e.provider,
        "verification_id": e.verification_id,
        "lookup": dict(e.lookup),
        "expected_at": _utc(e.expected_at),
        "window_s": e.window_s,
    }


def expectation_from_record(r: Mapping[str, Any]) -> Expectation:
    return Expectation(
        source=r["source"],
        provider=r["provider"],
        verification_id=r["verification_id"],
        expected_at=r["expected_at"],
        lookup=dict(r.get("lookup") or {}),
        window_s=r.get("window_s"),
    )
