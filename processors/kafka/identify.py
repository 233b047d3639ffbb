"""Which of kycstream's record types a value is, from its bytes: the Avro single-object fingerprint,
or the schema id of the Confluent wire format (the registry knows the schema)."""

from __future__ import annotations

from processors.avro.codec import RECORD_TYPES, SINGLE_OBJECT_MAGIC, RecordType
from processors.errors import SerdeError
from processors.kafka.serde import Codec


def record_type(codec: Codec, value: bytes, topic: str) -> RecordType | None:
    """The record type `value` was written as, or None when it is none of kycstream's.

    The codec looks the writer schema up by the value's fingerprint (or registry id); a writer of
    another record type does not resolve to the reader's, so exactly one type decodes."""
    for name in RECORD_TYPES:
        try:
            codec.decode(name, value, topic)
        except SerdeError:
            continue
        return name
    return None


def describe(value: bytes, registry: bool) -> str:
    """What a value that is not a kycstream record looks like, for an error message."""
    if value[:2] == SINGLE_OBJECT_MAGIC and len(value) >= 10:
        return f"Avro single-object encoded with schema fingerprint {value[2:10].hex()}, none of kycstream's schemas"
    if value[:1] == b"\x00" and len(value) >= 5:
        schema_id = int.from_bytes(value[1:5], "big")
        if not registry:
            return f"Confluent wire format with schema id {schema_id}: set SCHEMA_REGISTRY_URL to decode it"
        return f"Confluent wire format with schema id {schema_id}, not one of kycstream's record types"
    if value.lstrip()[:1] in (b"{", b"["):
        return "JSON text, not Avro"
    return f"{len(value)} bytes starting {value[:8].hex()}, not a kycstream record"
