"""The compiled Avro codec against fastavro: same bytes, same decoded values, and refusals; the
schema features it leaves to fastavro. Apache Avro as the other oracle: test_avro_interop.py."""

from __future__ import annotations

import io
import struct
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import fastavro
import fastavro.validation
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processors.avro.codec import RECORD_TYPES, SINGLE_OBJECT_MAGIC, RecordType
from processors.avro.compiler import (
    DecodeError,
    EncodeError,
    UnsupportedSchemaError,
    compile_reader,
    compile_writer,
)
from processors.kafka.serde import Codec
from tests.avro_values import values

CODEC = Codec()
SCHEMAS = {name: CODEC.schema_json(name) for name in RECORD_TYPES}
WRITERS = {name: compile_writer(schema) for name, schema in SCHEMAS.items()}
READERS = {name: compile_reader(schema) for name, schema in SCHEMAS.items()}
EXAMPLES = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RECORDS = {name: values(schema) for name, schema in SCHEMAS.items()}


def fastavro_encode(schema: Any, record: Any) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), record)
    return out.getvalue()


def fastavro_decode(schema: Any, data: bytes) -> Any:
    return fastavro.schemaless_reader(io.BytesIO(data), fastavro.parse_schema(schema))


def assert_every_prefix_refused(read: Any, data: bytes) -> None:
    for end in range(len(data)):
        with pytest.raises((ValueError, IndexError, struct.error)):
            read(data[:end])


# --- the six record types -------------------------------------------------------------------------


@pytest.mark.parametrize("name", RECORD_TYPES)
@EXAMPLES
@given(data=st.data())
def test_same_bytes_and_values_as_fastavro(name: RecordType, data: st.DataObject) -> None:
    record = data.draw(RECORDS[name], label=name)
    expected = fastavro_encode(SCHEMAS[name], record)
    assert WRITERS[name](record) == expected
    assert READERS[name](expected) == fastavro_decode(SCHEMAS[name], expected)


@pytest.mark.parametrize("name", RECORD_TYPES)
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_truncated_or_extended_input_is_refused(name: RecordType, data: st.DataObject) -> None:
    encoded = WRITERS[name](data.draw(RECORDS[name], label=name))
    assert_every_prefix_refused(READERS[name], encoded)
    with pytest.raises(DecodeError, match=r"continues past the value \(1 bytes\)"):
        READERS[name](encoded + b"\x00")


@EXAMPLES
@given(record=RECORDS["VerificationEvent"])
def test_codec_writes_the_single_object_encoding_with_the_compiled_codec(record: dict[str, Any]) -> None:
    data = CODEC.encode("VerificationEvent", record)
    schema = SCHEMAS["VerificationEvent"]
    assert data[:2] == SINGLE_OBJECT_MAGIC
    assert data[10:] == fastavro_encode(schema, record)
    assert CODEC.decode("VerificationEvent", data) == fastavro_decode(schema, data[10:])


EVENT: dict[str, Any] = {
    "event_id": "e-1",
    "idempotency_key": "esign:s-1:COMPLETED",
    "provider": "esign",
    "source": "esign",
    "verification_id": "s-1",
    "status": "APPROVED",
    "provider_status": "COMPLETED/VALID",
    "event_type": None,
    "subject_id": "user-1",
    "session_id": None,
    "occurred_at": datetime(2026, 5, 8, 10, 30, tzinfo=UTC),
    "received_at": datetime(2026, 5, 8, 10, 31, 0, 123000, tzinfo=UTC),
    "checks": [{"name": "selfie", "outcome": "PASS", "score": 0.9, "code": None, "message": None}],
    "reasons": [{"code": "OK", "message": None, "field": None}],
    "attributes": {"registrationId": "6dab"},
    "raw_ref": {"topic": "raw", "partition": 2, "offset": 41, "request_id": "r-1"},
}
REF = EVENT["raw_ref"]
LETTER: dict[str, Any] = {
    "reason": "invalid_json",
    "detail": "bad",
    "failed_at": datetime(2026, 5, 8, tzinfo=UTC),
    "source_topic": "raw",
    "partition": 1,
    "offset": 7,
    "original_value": b"raw",
}


def _without(record: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != key}


# (record type, record, the field the error names); fastavro's validation refuses every one.
INVALID: list[tuple[RecordType, dict[str, Any], str]] = [
    ("VerificationEvent", {**EVENT, "provider": None}, "provider"),
    ("VerificationEvent", {**EVENT, "provider": b"esign"}, "provider"),
    ("VerificationEvent", {**EVENT, "provider": 5}, "provider"),
    ("VerificationEvent", _without(EVENT, "event_id"), "event_id"),
    ("VerificationEvent", {**EVENT, "status": "NOPE"}, "status"),
    ("VerificationEvent", {**EVENT, "status": None}, "status"),
    ("VerificationEvent", {**EVENT, "status": ["APPROVED"]}, "status"),
    ("VerificationEvent", {**EVENT, "subject_id": 1}, "subject_id"),
    ("VerificationEvent", {**EVENT, "received_at": None}, "received_at"),
    ("VerificationEvent", {**EVENT, "received_at": "2026-05-08T10:31:00Z"}, "received_at"),
    ("VerificationEvent", {**EVENT, "occurred_at": 1.5}, "occurred_at"),
    ("VerificationEvent", {**EVENT, "checks": None}, "checks"),
    ("VerificationEvent", {**EVENT, "checks": "selfie"}, "checks"),
    ("VerificationEvent", {**EVENT, "checks": [{"name": "x", "outcome": "MAYBE"}]}, "checks.outcome"),
    ("VerificationEvent", {**EVENT, "checks": [{"name": "x", "outcome": "PASS", "score": "0.9"}]}, "checks.score"),
    ("VerificationEvent", {**EVENT, "checks": [{"outcome": "PASS"}]}, "checks.name"),
    ("VerificationEvent", {**EVENT, "checks": ["selfie"]}, "checks"),
    ("VerificationEvent", {**EVENT, "attributes": {"k": 1}}, "attributes"),
    ("VerificationEvent", {**EVENT, "attributes": {1: "v"}}, "attributes"),
    ("VerificationEvent", {**EVENT, "attributes": [("k", "v")]}, "attributes"),
    ("VerificationEvent", {**EVENT, "raw_ref": _without(REF, "request_id")}, "raw_ref.request_id"),
    ("VerificationEvent", {**EVENT, "raw_ref": {**REF, "offset": 2**63}}, "raw_ref.offset"),
    ("VerificationEvent", {**EVENT, "raw_ref": {**REF, "offset": -(2**63) - 1}}, "raw_ref.offset"),
    ("VerificationEvent", {**EVENT, "raw_ref": {**REF, "offset": 41.0}}, "raw_ref.offset"),
    ("VerificationEvent", {**EVENT, "raw_ref": {**REF, "partition": True}}, "raw_ref.partition"),
    ("VerificationEvent", {**EVENT, "raw_ref": {**REF, "partition": 2**31}}, "raw_ref.partition"),
    ("VerificationEvent", {**EVENT, "raw_ref": "raw:2:41"}, "raw_ref"),
    ("DeadLetter", {**LETTER, "original_value": "raw"}, "original_value"),
    ("DeadLetter", {**LETTER, "original_key": "key"}, "original_key"),
    ("DeadLetter", {**LETTER, "failed_at": datetime(2026, 5, 8).date()}, "failed_at"),
    ("VerificationState", {"status": "APPROVED"}, "key"),
    (
        "Expectation",
        {"source": "s", "provider": "p", "verification_id": "v", "expected_at": 0, "window_s": True},
        "window_s",
    ),
]
# fastavro's writer writes these all the same (a bool or 2**40 as an int, a float as a long, a
# memoryview as bytes, any iterable as an array); its validation refuses them, and so does the compiled one.
LAX: list[tuple[RecordType, dict[str, Any], str]] = [
    ("DeadLetter", {**LETTER, "partition": True}, "partition"),
    ("DeadLetter", {**LETTER, "partition": 2**40}, "partition"),
    ("DeadLetter", {**LETTER, "offset": 7.0}, "offset"),
    ("DeadLetter", {**LETTER, "original_value": memoryview(b"raw")}, "original_value"),
    ("VerificationEvent", {**EVENT, "reasons": {"r": {"code": "c"}}.values()}, "reasons"),
]


@pytest.mark.parametrize(
    ("name", "record", "field"), INVALID + LAX, ids=[f"{c[0]}-{c[2]}-{i}" for i, c in enumerate(INVALID + LAX)]
)
def test_invalid_records_are_refused_naming_the_field(name: RecordType, record: dict[str, Any], field: str) -> None:
    assert not fastavro.validation.validate(record, fastavro.parse_schema(SCHEMAS[name]), raise_errors=False)
    with pytest.raises(EncodeError) as refused:
        WRITERS[name](record)
    assert refused.value.path == field


@pytest.mark.parametrize(("name", "record"), [case[:2] for case in LAX])
def test_fastavro_writer_alone_takes_some_invalid_values(name: RecordType, record: dict[str, Any]) -> None:
    assert fastavro_encode(SCHEMAS[name], record)


@pytest.mark.parametrize("record", [None, "record", [("event_id", "e-1")]])
def test_a_record_must_be_a_mapping(record: Any) -> None:
    with pytest.raises(EncodeError, match="mapping"):
        WRITERS["VerificationEvent"](record)


def test_unencodable_strings_are_refused_as_fastavro_does() -> None:
    record = {**EVENT, "provider": "\ud800"}  # a lone surrogate: a str, but not UTF-8
    with pytest.raises(UnicodeEncodeError):
        fastavro_encode(SCHEMAS["VerificationEvent"], record)
    with pytest.raises(EncodeError, match="provider"):
        WRITERS["VerificationEvent"](record)


def test_missing_fields_with_defaults_are_written_as_fastavro_does() -> None:
    record = {k: v for k, v in EVENT.items() if k not in ("event_type", "checks", "attributes", "raw_ref")}
    assert WRITERS["VerificationEvent"](record) == fastavro_encode(SCHEMAS["VerificationEvent"], record)


def test_mappings_other_than_dicts_and_sequences_other_than_lists() -> None:
    from collections import OrderedDict, defaultdict
    from types import MappingProxyType

    record = MappingProxyType(
        {
            **EVENT,
            "checks": tuple(EVENT["checks"]),
            "attributes": defaultdict(str, {"k": "v"}),
            "raw_ref": OrderedDict(REF),
        }
    )
    expected = fastavro_encode(SCHEMAS["VerificationEvent"], dict(record))
    assert WRITERS["VerificationEvent"](record) == expected


@pytest.fixture
def new_york(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("new_york")
def test_naive_datetimes_are_local_time_as_fastavro_has_them() -> None:
    for naive in (
        datetime(2026, 5, 8, 10, 30, 0, 999999),
        datetime(1969, 12, 31, 23, 59, 59, 1000),
        datetime(2026, 1, 1),
    ):
        record = {"idempotency_key": "k", "event_id": "e", "first_seen_at": naive, "expires_at": naive}
        assert WRITERS["DedupRecord"](record) == fastavro_encode(SCHEMAS["DedupRecord"], record)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"\x01", "negative length"),  # idempotency_key's length: -1
        (b"\xff" * 10 + b"\x01", "longer than 64 bits"),
        (b"\x02k\x02e\x00\x00\x00" + b"\x03", "continues past the value"),
    ],
)
def test_corrupt_input_is_refused(body: bytes, error: str) -> None:
    with pytest.raises(DecodeError, match=error):
        READERS["DedupRecord"](body)


def test_bad_union_and_enum_indexes_are_refused() -> None:
    good = WRITERS["VerificationEvent"](EVENT)
    status_at = sum(1 + len(EVENT[f]) for f in ("event_id", "idempotency_key", "provider", "source", "verification_id"))
    assert good[status_at] == 2  # APPROVED, index 1
    with pytest.raises(DecodeError, match="bad enum index"):
        READERS["VerificationEvent"](good[:status_at] + b"\x0e" + good[status_at + 1 :])  # index 7 of 7
    event_type_at = status_at + 1 + 1 + len(EVENT["provider_status"])
    assert good[event_type_at] == 0  # event_type: null
    with pytest.raises(DecodeError, match="bad union index"):
        READERS["VerificationEvent"](good[:event_type_at] + b"\x04" + good[event_type_at + 1 :])


def test_blocks_with_byte_sizes_and_several_blocks_are_read() -> None:
    # Other writers may split arrays and maps into blocks, and give a block's size (count < 0).
    field = {"name": "m", "type": {"type": "map", "values": {"type": "array", "items": "long"}}}
    schema = {"type": "record", "name": "R", "fields": [field]}
    data = b"\x01\x10\x02a" + b"\x03\x04\x02\x04" + b"\x02\x06\x00" + b"\x02\x02b\x00" + b"\x00"
    # {"a": [1, 2] + [3], "b": []}: map block of -1 entry (8 bytes), array block of -2 items (2 bytes)
    assert compile_reader(schema)(data) == fastavro_decode(schema, data) == {"m": {"a": [1, 2, 3], "b": []}}


# --- named types and namespaces -------------------------------------------------------------------

INNER = {
    "type": "record",
    "name": "Inner",
    "fields": [
        {"name": "n", "type": "long"},
        {"name": "kind", "type": {"type": "enum", "name": "Kind", "namespace": "c", "symbols": ["X", "Y"]}},
        {"name": "again", "type": "c.Kind"},
    ],
}
NAMED = {
    "type": "record",
    "name": "Outer",
    "namespace": "a.b",
    "fields": [
        {"name": "first", "type": INNER},  # a.b.Inner, defined at its first use
        {"name": "second", "type": "Inner"},  # the same, by its short name in the enclosing namespace
        {"name": "third", "type": ["null", "a.b.Inner"]},
        {"name": "many", "type": {"type": "array", "items": "Inner"}},
        {"name": "kinds", "type": {"type": "map", "values": "c.Kind"}},
        {
            "name": "other",  # another Inner, in another namespace
            "type": {"type": "record", "name": "Inner", "namespace": "d", "fields": [{"name": "s", "type": "string"}]},
        },
        {"name": "others", "type": ["null", "d.Inner"], "default": None},
        {"name": "empty", "type": {"type": "record", "name": "Empty", "fields": []}},
    ],
}


@EXAMPLES
@given(record=values(NAMED))
def test_named_types_are_reused_by_name(record: dict[str, Any]) -> None:
    expected = fastavro_encode(NAMED, record)
    assert compile_writer(NAMED)(record) == expected
    assert compile_reader(NAMED)(expected) == fastavro_decode(NAMED, expected)


def test_one_function_per_named_record() -> None:
    write: Any = compile_writer(NAMED)
    namespace = write.__globals__  # the generated module's
    functions = sorted(name for name in namespace if name.startswith("write_"))
    assert [f.rsplit("_", 1)[0] for f in functions] == [
        "write_a_b_Empty",
        "write_a_b_Inner",
        "write_a_b_Outer",
        "write_d_Inner",
    ]


# --- what no schema of ours uses: left to fastavro (the codec's fallback: test_serde.py) ------------


def _record(*types: Any) -> dict[str, Any]:
    return {"type": "record", "name": "R", "fields": [{"name": f"f{i}", "type": t} for i, t in enumerate(types)]}


UNSUPPORTED = {
    "boolean": _record("boolean"),
    "float": _record("float"),
    "null alone": _record("null"),
    "fixed": _record({"type": "fixed", "name": "F", "size": 3}),
    "timestamp-micros": _record({"type": "long", "logicalType": "timestamp-micros"}),
    "another logical type": _record({"type": "string", "logicalType": "uuid"}),
    "a general union": _record(["null", "string", "long"]),
    "null last": _record(["string", "null"]),
    "a recursive record": {
        "type": "record",
        "name": "Node",
        "fields": [{"name": "next", "type": ["null", "Node"]}],
    },
    "an enum of 65 symbols": _record({"type": "enum", "name": "E", "symbols": [f"S{i}" for i in range(65)]}),
    "not a record": {"type": "array", "items": "long"},
}


@pytest.mark.parametrize("schema", UNSUPPORTED.values(), ids=UNSUPPORTED.keys())
def test_features_no_schema_uses_are_left_to_fastavro(schema: Any) -> None:
    fastavro.parse_schema(schema)  # valid Avro
    with pytest.raises(UnsupportedSchemaError):
        compile_writer(schema)
    with pytest.raises(UnsupportedSchemaError):
        compile_reader(schema)
