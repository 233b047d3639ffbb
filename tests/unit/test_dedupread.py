"""processors.avro.dedupread: a DedupRecord's expiry and events offset read in place agree with
Codec.decode wherever the fast path answers, and everything it does not take goes to decode
(retired schemas, the registry's wire format, bytes decode refuses), so a restore ends the same."""

from __future__ import annotations

import io
import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.avro.codec import SINGLE_OBJECT_MAGIC, expand_schema, fingerprint, load_definitions
from processors.avro.dedupread import MAX_MS, MIN_MS, expiry_reader
from processors.avro.records import dedup_from_record, dedup_to_record
from processors.dedup import MemoryDedupStore
from processors.errors import SerdeError
from processors.kafka.serde import Codec
from processors.model import DedupRecord
from processors.normalizer import recovery
from schemas import SCHEMA_DIR

CODEC = Codec()
READ = expiry_reader(CODEC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
KEY = "esign:4f6d9a1e-2b7c-4c1d-9a55-0e6f1b2c3d4e:COMPLETED:VALID:2026-05-08T10:30:00Z"
NOW = datetime(2026, 5, 8, 10, 30, tzinfo=UTC)


def _full(data: bytes, codec: Codec = CODEC) -> tuple[int, int]:
    """What restore took from a record before the fast path: expires_at's whole seconds, events_offset."""
    record = dedup_from_record(codec.decode("DedupRecord", data))
    return int(record.expires_at.timestamp()), record.events_offset


def _seconds(ms: int) -> int:
    return ms // 1000 if ms >= 0 else -(-ms // 1000)


def _encode(key: str, event_id: str, first_seen_ms: int, expires_ms: int, offset: int) -> bytes:
    record = DedupRecord(
        key, event_id, EPOCH + timedelta(milliseconds=first_seen_ms), EPOCH + timedelta(milliseconds=expires_ms), offset
    )
    return CODEC.encode("DedupRecord", dedup_to_record(record))


def test_a_current_record_is_read_in_place() -> None:
    data = _encode(KEY, "evt-1", 1_778_236_200_000, 1_778_841_000_123, 41)
    assert READ(data) == (1_778_841_000_123, 41)
    assert _full(data) == (1_778_841_000, 41)


_millis = st.integers(MIN_MS, MAX_MS)
_offsets = st.integers(-(2**63), 2**63 - 1)


@settings(max_examples=400, deadline=None)
@given(key=st.text(max_size=120), event_id=st.text(max_size=70), first=_millis, expires=_millis, offset=_offsets)
def test_random_records_read_as_decode_reads_them(
    key: str, event_id: str, first: int, expires: int, offset: int
) -> None:
    data = _encode(key, event_id, first, expires, offset)
    fast = READ(data)
    assert _full(data) == (_seconds(expires), offset)
    if fast is not None:
        assert (_seconds(fast[0]), fast[1]) == _full(data)
        assert fast == (expires, offset)
    # What it leaves to decode(): a string that is not ASCII, an event id of 64 bytes or more, a
    # key of 8192 or more, a varint of 10 bytes (a long below -2**62 or from 2**62).
    plain = key.isascii() and event_id.isascii() and len(event_id) < 64 and -(2**62) <= offset < 2**62
    assert (fast is not None) == plain


# The usual record's fast paths: times of 6-byte varints (epoch ms mid-1970 to 2039, either sign),
# events_offset of one to five bytes (tails of 13 to 17 bytes; 15 and 16 unpacked at once).
_six_byte_ms = st.integers(2**34, 2**41 - 1) | st.integers(-(2**41), -(2**34) - 1)
_short_offsets = st.integers(-(2**13), 2**13) | st.integers(-(2**27), 2**27) | st.integers(-(2**31), 2**31)


@settings(max_examples=400, deadline=None)
@given(
    first=_six_byte_ms, expires=_six_byte_ms, offset=_short_offsets, flip=st.integers(1, 17), byte=st.integers(0, 255)
)
def test_usual_records_read_as_decode_reads_them_whole_or_damaged(
    first: int, expires: int, offset: int, flip: int, byte: int
) -> None:
    data = _encode(KEY, "evt-1", first, expires, offset)
    assert READ(data) == (expires, offset)
    damaged = bytearray(data)
    damaged[-flip] = byte  # a byte of the tail (or the event id's last) changed
    fast = READ(bytes(damaged))
    if fast is not None:
        assert (_seconds(fast[0]), fast[1]) == _full(bytes(damaged))


def test_each_tail_byte_of_the_usual_records_damaged_agrees_with_decode() -> None:
    """Every byte of the tail of 6-byte times and offsets of one to five bytes, set to each of four
    values: the fast path answers the record as it was, or as decode() reads the damage, or None."""
    for offset in (5, 300, 70_000, 5_000_000, 700_000_000, -70_000, -5_000_000):
        data = _encode(KEY, "evt-1", 1_778_236_200_000, 1_778_841_000_123, offset)
        assert READ(data) == (1_778_841_000_123, offset)
        for back in range(1, 19):
            for byte in (0x00, 0x01, 0x7F, 0x80, 0x81, 0xFF):
                damaged = bytearray(data)
                damaged[-back] = byte
                fast = READ(bytes(damaged))
                if fast is not None:
                    assert (_seconds(fast[0]), fast[1]) == _full(bytes(damaged)), (offset, back, byte)


@settings(max_examples=600, deadline=None)
@given(body=st.binary(max_size=200))
def test_bytes_after_the_header_agree_with_decode_or_go_to_it(body: bytes) -> None:
    """Whatever follows the current header: the fast path answers only where decode answers the same."""
    data = _encode(KEY, "evt-1", 0, 0, 0)[:10] + body
    fast = READ(data)
    if fast is None:
        return
    assert (_seconds(fast[0]), fast[1]) == _full(data)


@settings(max_examples=300, deadline=None)
@given(cut=st.integers(0, 200), flip=st.integers(0, 200), byte=st.integers(0, 255))
def test_damaged_records_agree_with_decode_or_go_to_it(cut: int, flip: int, byte: int) -> None:
    data = bytearray(_encode(KEY, "evt-1", 1_778_236_200_000, 1_778_841_000_123, 41))
    if flip < len(data):
        data[flip] = byte
    damaged = bytes(data[: max(cut, 10)])
    fast = READ(damaged)
    if fast is not None:
        assert (_seconds(fast[0]), fast[1]) == _full(damaged)


@pytest.mark.parametrize(
    "data",
    [
        _encode(KEY, "evt-1", 0, 0, 0)[:20],  # truncated
        _encode(KEY, "evt-1", 0, 0, 0) + b"\x00",  # bytes left over
        _encode(KEY, "evt-1", 0, 0, 0)[:10] + b"\x01" + b"\x00" * 8,  # negative length
        _encode(KEY, "evt-1", 0, 0, 0)[:-3] + b"\xff" * 11,  # varint over 64 bits
        _encode(KEY, "evt-1", 0, 0, 0)[:-2] + b"\xfe\xff\xff\xff\xff\xff\xff\x01\x00",  # past year 9999
        _encode("k", "e", 0, 0, 0)[:11] + b"\xff" + _encode("k", "e", 0, 0, 0)[12:],  # not UTF-8
    ],
    ids=["truncated", "trailing", "negative-length", "long-varint", "out-of-range-date", "not-utf8"],
)
def test_corrupt_records_raise_what_decode_raised(data: bytes) -> None:
    assert READ(data) is None
    with pytest.raises(SerdeError):
        CODEC.decode("DedupRecord", data)
    stores = recovery.PartitionStores(0, MemoryDedupStore())
    with pytest.raises(SerdeError):
        _restore(CODEC, stores, [(KEY.encode(), data)])


def test_a_record_of_a_retired_schema_goes_to_decode(tmp_path: Path) -> None:
    """A DedupRecord written before events_offset existed: decode() resolves it (events_offset -1)."""
    shutil.copytree(SCHEMA_DIR, tmp_path / "schemas", ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    old = json.loads((SCHEMA_DIR / "kycstream.DedupRecord.avsc").read_text())
    old["fields"] = [f for f in old["fields"] if f["name"] != "events_offset"]
    (tmp_path / "schemas" / "history").mkdir(exist_ok=True)
    (tmp_path / "schemas" / "history" / "kycstream.DedupRecord.avsc").write_text(json.dumps(old))
    definitions = {**load_definitions(SCHEMA_DIR), "kycstream.DedupRecord": old}
    parsed = fastavro.parse_schema(expand_schema("DedupRecord", definitions))
    body = io.BytesIO()
    expires = NOW + timedelta(days=1)
    fastavro.schemaless_writer(
        body,
        parsed,
        {"idempotency_key": KEY, "event_id": "e", "first_seen_at": NOW, "expires_at": expires},
    )
    data = SINGLE_OBJECT_MAGIC + fingerprint(parsed) + body.getvalue()

    codec = Codec(schema_dir=tmp_path / "schemas")
    assert expiry_reader(codec)(data) is None
    assert _full(data, codec) == (int(expires.timestamp()), -1)
    stores = recovery.PartitionStores(0, MemoryDedupStore())
    _restore(codec, stores, [(KEY.encode(), data)])
    assert KEY in stores.dedup and stores.repair_from == -1 and not stores.expired


def test_the_registry_wire_format_goes_to_decode() -> None:
    codec = Codec({"url": "mock://kycstream-dedupread"})
    record = DedupRecord(KEY, "e", NOW, NOW + timedelta(days=1), 7)
    data = codec.encode("DedupRecord", dedup_to_record(record), "kyc.dedup.v1")
    read = expiry_reader(codec)
    assert read(data) is None
    assert read(_encode(KEY, "e", 0, 0, 0)) is None  # single-object bytes are not this codec's
    stores = recovery.PartitionStores(0, MemoryDedupStore())
    _restore(codec, stores, [(KEY.encode(), data)])
    assert KEY in stores.dedup and stores.repair_from == 7


def test_another_layout_is_never_read_in_place(tmp_path: Path) -> None:
    shutil.copytree(SCHEMA_DIR, tmp_path / "schemas", ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    path = tmp_path / "schemas" / "kycstream.DedupRecord.avsc"
    schema = json.loads(path.read_text())
    schema["fields"].append({"name": "note", "type": "string", "default": ""})
    path.write_text(json.dumps(schema))
    codec = Codec(schema_dir=tmp_path / "schemas")
    record = {**dedup_to_record(DedupRecord(KEY, "e", NOW, NOW + timedelta(days=1), 7)), "note": ""}
    assert expiry_reader(codec)(codec.encode("DedupRecord", record)) is None


def test_restore_fails_on_a_key_that_is_not_utf8_as_before() -> None:
    stores = recovery.PartitionStores(0, MemoryDedupStore())
    with pytest.raises(UnicodeDecodeError):
        _restore(CODEC, stores, [(b"\xc3(", _encode("k", "e", 0, 0, 0))])


# --- a fake consumer: the dedup partition's records, then its EOF (and the state partition's) ---


class _Msg:
    def __init__(self, topic: str, key: bytes | None, value: bytes | None, eof: bool = False) -> None:
        self._topic, self._key, self._value, self._eof = topic, key, value, eof

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 0

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def error(self) -> object:
        if not self._eof:
            return None
        from confluent_kafka import KafkaError

        return KafkaError(KafkaError._PARTITION_EOF)


class _Consumer:
    def __init__(self, records: list[tuple[bytes, bytes | None]]) -> None:
        self._pending = [_Msg("dedup", k, v) for k, v in records]
        self._pending += [_Msg("dedup", None, None, eof=True), _Msg("state", None, None, eof=True)]

    def assign(self, partitions: object) -> None:
        pass

    def consume(self, num_messages: int, timeout: float) -> list[_Msg]:
        out, self._pending = self._pending[:num_messages], self._pending[num_messages:]
        return out

    def unassign(self) -> None:
        pass


def _restore(codec: Codec, stores: recovery.PartitionStores, records: list[tuple[bytes, bytes | None]]) -> None:
    recovery.restore(_Consumer(records), codec, "dedup", "state", {0: stores}, NOW, 5)  # type: ignore[arg-type]
