"""Avro: every schema round-trips, the single-object wire format, registry mode, and evolution."""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import fastavro
import pytest

from processors.avro import records as serde
from processors.avro.codec import RecordType, expand_schema, fingerprint, load_definitions, retired_schemas
from processors.avro.compiler import UnsupportedSchemaError, compile_writer
from processors.errors import SerdeError
from processors.kafka.serde import Codec
from processors.model import (
    Check,
    CheckOutcome,
    DeadLetter,
    DedupRecord,
    Expectation,
    RawDelivery,
    RawRef,
    Reason,
    VerificationEvent,
    VerificationState,
    VerificationStatus,
)
from schemas import SCHEMA_DIR

T0 = datetime(2026, 5, 8, 10, 30, tzinfo=UTC)
T1 = datetime(2026, 5, 8, 10, 31, 0, 123000, tzinfo=UTC)

EVENT = VerificationEvent(
    event_id="e-1",
    idempotency_key="esign:s-1:COMPLETED:VALID:2026-05-08T10:30:00Z",
    provider="esign",
    source="esign",
    verification_id="s-1",
    status=VerificationStatus.APPROVED,
    provider_status="COMPLETED/VALID",
    received_at=T1,
    occurred_at=T0,
    raw_ref=RawRef("kyc.webhooks.raw.v1", 2, 41, "r-1"),
    event_type="submission_result",
    subject_id="user-1",
    session_id="sess-1",
    checks=(
        Check("selfie", CheckOutcome.PASS),
        Check("facematch", CheckOutcome.FAIL, 20.4, "legacy.error", "no match"),
    ),
    reasons=(Reason("DUKCAPIL_REJECTED", "mismatch", None), Reason("failure_reason", "expired", "doc[0]")),
    attributes={"registrationId": "6dab"},
)
OBJECTS = [
    (
        "RawDelivery",
        RawDelivery("r-1", "esign", "esign", "PUT", T1, b"\x00{}\xff", {"content-type": "x"}, "10.0.0.1", "x"),
        serde.delivery_to_record,
        serde.delivery_from_record,
    ),
    ("VerificationEvent", EVENT, serde.event_to_record, serde.event_from_record),
    (
        "VerificationState",
        VerificationState("esign:s-1", "esign", "s-1", VerificationStatus.REVIEW, "e-1", T1, T0, None, 3),
        serde.state_to_record,
        serde.state_from_record,
    ),
    (
        "DeadLetter",
        DeadLetter("invalid_json", "bad", T1, "raw", 1, 7, b"\xc3\x01raw", b"k", "r-1", "esign", "esign"),
        serde.dead_letter_to_record,
        serde.dead_letter_from_record,
    ),
    ("DedupRecord", DedupRecord("k", "e-1", T0, T1), serde.dedup_to_record, serde.dedup_from_record),
    (
        "Expectation",
        Expectation("esign", "esign", "s-1", T0, {"userId": "u-1", "userIdType": "nik"}, 600, T1, 3),
        serde.expectation_to_record,
        serde.expectation_from_record,
    ),
]


@pytest.mark.parametrize(("kind", "obj", "to_record", "from_record"), OBJECTS, ids=[o[0] for o in OBJECTS])
def test_every_schema_round_trips(kind, obj, to_record, from_record) -> None:  # type: ignore[no-untyped-def]
    codec = Codec()
    data = codec.encode(kind, to_record(obj))
    assert from_record(codec.decode(kind, data)) == obj


def test_single_object_encoding_is_the_avro_spec_form() -> None:
    codec = Codec()
    data = codec.encode("VerificationEvent", serde.event_to_record(EVENT))
    assert data[:2] == b"\xc3\x01"
    parsed = fastavro.parse_schema(codec.schema_json("VerificationEvent"))
    canonical = fastavro.schema.to_parsing_canonical_form(parsed)
    assert data[2:10] == bytes.fromhex(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"))
    # Any Avro reader with the schema decodes the body that follows the 10-byte header.
    assert fastavro.schemaless_reader(io.BytesIO(data[10:]), parsed)["event_id"] == "e-1"


def test_spec_fingerprint_vector() -> None:
    # Avro spec: CRC-64-AVRO of "null" is 0x63dd24e7cc258f8a, written little-endian.
    assert bytes.fromhex(fastavro.schema.fingerprint('"null"', "CRC-64-AVRO")) == bytes.fromhex("8a8f25cce724dd63")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "bad magic"),
        (b"{}", "bad magic"),
        (b"\xc3\x01" + b"\x00" * 8 + b"\x02", "unknown schema fingerprint"),
    ],
)
def test_undecodable_bytes_raise_serde_error(data: bytes, message: str) -> None:
    with pytest.raises(SerdeError, match=message):
        Codec().decode("VerificationEvent", data)


def test_truncated_record_raises_serde_error() -> None:
    codec = Codec()
    data = codec.encode("VerificationEvent", serde.event_to_record(EVENT))
    with pytest.raises(SerdeError, match="corrupt"):
        codec.decode("VerificationEvent", data[:20])


def test_records_of_another_type_are_refused() -> None:
    codec = Codec()
    data = codec.encode("DedupRecord", serde.dedup_to_record(DedupRecord("k", "e", T0, T1)))
    with pytest.raises(SerdeError):
        codec.decode("VerificationEvent", data)


def test_schema_registry_wire_format_with_mock_registry() -> None:
    codec = Codec({"url": "mock://kycstream-test"})
    data = codec.encode("VerificationEvent", serde.event_to_record(EVENT), "events")
    assert data[0] == 0, "Confluent wire format: magic byte 0 then a 4-byte schema id"
    assert serde.event_from_record(codec.decode("VerificationEvent", data, "events")) == EVENT


def test_old_writer_schema_reads_with_the_new_reader(tmp_path: Path) -> None:
    """Evolution: a record written before `attributes` and `event_type` existed decodes with defaults."""
    shutil.copytree(SCHEMA_DIR, tmp_path / "schemas", ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    old = json.loads((SCHEMA_DIR / "kycstream.VerificationEvent.avsc").read_text())
    old["fields"] = [f for f in old["fields"] if f["name"] not in ("attributes", "event_type")]
    (tmp_path / "schemas" / "history").mkdir(exist_ok=True)
    (tmp_path / "schemas" / "history" / "kycstream.VerificationEvent.avsc").write_text(json.dumps(old))

    definitions = {p.name.removesuffix(".avsc"): json.loads(p.read_text()) for p in SCHEMA_DIR.glob("*.avsc")}
    definitions["kycstream.VerificationEvent"] = old
    old_parsed = fastavro.parse_schema(expand_schema("VerificationEvent", definitions))
    fingerprint = fastavro.schema.fingerprint(fastavro.schema.to_parsing_canonical_form(old_parsed), "CRC-64-AVRO")
    record = serde.event_to_record(EVENT)
    body = io.BytesIO()
    fastavro.schemaless_writer(
        body, old_parsed, {k: v for k, v in record.items() if k not in ("attributes", "event_type")}
    )
    data = b"\xc3\x01" + bytes.fromhex(fingerprint) + body.getvalue()

    with pytest.raises(SerdeError, match="unknown schema fingerprint"):
        Codec().decode("VerificationEvent", data)
    decoded = Codec(schema_dir=tmp_path / "schemas").decode("VerificationEvent", data)
    assert decoded["attributes"] == {} and decoded["event_type"] is None
    assert decoded["checks"] == record["checks"]


def test_an_expectation_written_before_poll_times_were_kept_reads_as_never_polled() -> None:
    """The previous Expectation schema is kept in schemas/history: its records still decode."""
    (retired,) = (SCHEMA_DIR / "history").rglob("kycstream.Expectation.avsc")
    old = json.loads(retired.read_text())
    old_parsed = fastavro.parse_schema(old)
    fingerprint = fastavro.schema.fingerprint(fastavro.schema.to_parsing_canonical_form(old_parsed), "CRC-64-AVRO")
    record = serde.expectation_to_record(Expectation("esign", "esign", "s-1", T0, {"userId": "u-1"}, 600))
    body = io.BytesIO()
    old_record = {k: v for k, v in record.items() if k not in ("last_polled_at", "polls")}
    fastavro.schemaless_writer(body, old_parsed, old_record)
    data = b"\xc3\x01" + bytes.fromhex(fingerprint) + body.getvalue()

    decoded = serde.expectation_from_record(Codec().decode("Expectation", data))
    assert decoded == Expectation("esign", "esign", "s-1", T0, {"userId": "u-1"}, 600)
    assert (decoded.last_polled_at, decoded.polls) == (None, 0)


def test_a_schema_the_compiler_does_not_support_is_encoded_by_fastavro(tmp_path: Path) -> None:
    """A float, a boolean and a general union (no schema of ours has one): fastavro's reader and writer."""
    shutil.copytree(SCHEMA_DIR, tmp_path / "schemas", ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    path = tmp_path / "schemas" / "kycstream.VerificationEvent.avsc"
    schema = json.loads(path.read_text())
    schema["fields"] += [
        {"name": "confidence", "type": "float", "default": 0.0},
        {"name": "flag", "type": ["null", "boolean", "string"], "default": None},
    ]
    path.write_text(json.dumps(schema))
    codec = Codec(schema_dir=tmp_path / "schemas")
    assert codec.fastavro_types == {"VerificationEvent"}
    with pytest.raises(UnsupportedSchemaError):
        compile_writer(codec.schema_json("VerificationEvent"))

    record = {**serde.event_to_record(EVENT), "confidence": 0.5, "flag": True}
    data = codec.encode("VerificationEvent", record)
    parsed = fastavro.parse_schema(codec.schema_json("VerificationEvent"))
    body = io.BytesIO()
    fastavro.schemaless_writer(body, parsed, record)
    assert data[:2] == b"\xc3\x01" and data[10:] == body.getvalue()
    assert codec.decode("VerificationEvent", data) == record
    assert serde.event_from_record(codec.decode("VerificationEvent", data)) == EVENT
    # The same refusals as the compiled codec: a value of the wrong type, bytes left over.
    with pytest.raises(SerdeError, match="cannot encode"):
        codec.encode("VerificationEvent", {**record, "flag": 3})
    with pytest.raises(SerdeError, match="continues past the value"):
        codec.decode("VerificationEvent", data + b"\x00")
    with pytest.raises(SerdeError, match="corrupt"):
        codec.decode("VerificationEvent", data[:20])
    # The other record types keep their compiled codecs.
    dedup = serde.dedup_to_record(DedupRecord("k", "e", T0, T1))
    assert codec.decode("DedupRecord", codec.encode("DedupRecord", dedup)) == dedup


# --- EXPIRED: a symbol added at the end, with the enum's default -------------------------------------

BEFORE_EXPIRED = SCHEMA_DIR / "history" / "before-expired"


def _schema_with(name: str, *overrides: Path) -> dict:  # type: ignore[type-arg]
    definitions = load_definitions(SCHEMA_DIR)
    for directory in overrides:
        definitions.update(load_definitions(directory))
    return expand_schema(name, definitions)


def _single_object(schema: dict, record: dict) -> bytes:  # type: ignore[type-arg]
    parsed = fastavro.parse_schema(schema)
    out = io.BytesIO()
    out.write(b"\xc3\x01" + fingerprint(parsed))
    fastavro.schemaless_writer(out, parsed, record)
    return out.getvalue()


def _read_with(reader: dict, writer: dict, data: bytes) -> dict:  # type: ignore[type-arg]
    value = fastavro.schemaless_reader(
        io.BytesIO(data[10:]), fastavro.parse_schema(writer), fastavro.parse_schema(reader)
    )
    assert isinstance(value, dict)
    return value


EXPIRED_EVENT = serde.event_to_record(
    dataclasses.replace(EVENT, status=VerificationStatus.EXPIRED, checks=(), reasons=())
)


@pytest.mark.parametrize(
    ("kind", "record"),
    [
        ("VerificationEvent", serde.event_to_record(EVENT)),
        (
            "VerificationState",
            serde.state_to_record(VerificationState("k", "esign", "s-1", VerificationStatus.REVIEW, "e", T1)),
        ),
    ],
)
def test_records_written_before_expired_read_with_the_current_schema(kind: RecordType, record: dict) -> None:  # type: ignore[type-arg]
    """What the processors wrote before EXPIRED (schemas/history/before-expired) still decodes."""
    data = _single_object(_schema_with(kind, BEFORE_EXPIRED), record)
    assert data[:10] != Codec().encode(kind, record)[:10], "a new symbol is a new writer schema"
    assert Codec().decode(kind, data) == record


def test_an_expired_event_reads_as_the_default_on_a_reader_schema_with_the_default_but_not_the_symbol() -> None:
    """A consumer whose reader schema (generated classes, say) predates a symbol but has the default:
    given the writer schema (schemas/ of the writer, or the registry), it reads the default."""
    data = Codec().encode("VerificationEvent", EXPIRED_EVENT)
    writer = _schema_with("VerificationEvent")
    reader = copy.deepcopy(writer)
    status = next(f for f in reader["fields"] if f["name"] == "status")["type"]
    status["symbols"] = [s for s in status["symbols"] if s != "EXPIRED"]
    assert status["default"] == "PENDING"
    decoded = _read_with(reader, writer, data)
    assert decoded["status"] == "PENDING"
    assert {k: v for k, v in decoded.items() if k != "status"} == {
        k: v for k, v in EXPIRED_EVENT.items() if k != "status"
    }


def test_a_reader_on_the_schema_before_the_default_fails_on_expired() -> None:
    """Why consumers upgrade first (docs/consumers.md): the previous schema has no default to fall back to."""
    data = Codec().encode("VerificationEvent", EXPIRED_EVENT)
    with pytest.raises(fastavro.read.SchemaResolutionError):
        _read_with(_schema_with("VerificationEvent", BEFORE_EXPIRED), _schema_with("VerificationEvent"), data)
    approved = Codec().encode("VerificationEvent", serde.event_to_record(EVENT))
    assert (
        _read_with(_schema_with("VerificationEvent", BEFORE_EXPIRED), _schema_with("VerificationEvent"), approved)[
            "status"
        ]
        == "APPROVED"
    ), "every other symbol still reads"


def test_every_retired_generation_keeps_its_fingerprint() -> None:
    """Moving a retired file or changing a type it uses changes the fingerprint it resolves to, and
    records already in the topics stop decoding: these are the prefixes earlier versions wrote."""
    known = {s.fingerprint.hex() for s in retired_schemas(SCHEMA_DIR)}
    assert {"2a2120bc472a5453", "3dca4dc45bdfe695", "dccd78a463d3f0cb"} <= known


def test_a_dead_letter_written_before_original_size_reads_with_none() -> None:
    """schemas/history keeps the DeadLetter schema from before original_size (a cut original)."""
    definitions = {p.name.removesuffix(".avsc"): json.loads(p.read_text()) for p in SCHEMA_DIR.glob("*.avsc")}
    definitions["kycstream.DeadLetter"] = json.loads(
        (SCHEMA_DIR / "history" / "before-original-size" / "kycstream.DeadLetter.avsc").read_text()
    )
    old = fastavro.parse_schema(expand_schema("DeadLetter", definitions))
    fingerprint = fastavro.schema.fingerprint(fastavro.schema.to_parsing_canonical_form(old), "CRC-64-AVRO")
    letter = DeadLetter("invalid_json", "bad", T1, "raw", 1, 7, b"\xc3\x01raw", b"k", "r-1", "esign", "esign")
    record = serde.dead_letter_to_record(letter)
    del record["original_size"]
    body = io.BytesIO()
    fastavro.schemaless_writer(body, old, record)
    decoded = Codec().decode("DeadLetter", b"\xc3\x01" + bytes.fromhex(fingerprint) + body.getvalue())
    assert serde.dead_letter_from_record(decoded) == letter and letter.original_size is None
    cut = DeadLetter("invalid_json", "bad", T1, "raw", 1, 7, b"\xc3\x01r", original_size=1_000_000)
    assert (
        serde.dead_letter_from_record(
            Codec().decode("DeadLetter", Codec().encode("DeadLetter", serde.dead_letter_to_record(cut)))
        )
        == cut
    )
