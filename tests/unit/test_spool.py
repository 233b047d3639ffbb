"""The gateway's spool journal: what is appended survives, in order; damage costs only the damaged records."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.spool.journal import Spool, Spooled, frame, scan


def _record(i: int, at: float = 1000.0) -> Spooled:
    return Spooled(
        f"esign:s-{i}".encode(), b"\xc3\x01value-" + bytes([i]) * 40, (("kycstream-request-id", b"r"),), at + i
    )


def _spool(path: Path, **limits: float) -> Spool:
    return Spool(
        path, int(limits.get("max_bytes", 1 << 30)), limits.get("max_age_s", 3600), clock=lambda: 1000.0
    ).open()


def test_frames_round_trip_in_order() -> None:
    records = [_record(i) for i in range(5)]
    assert scan(b"".join(frame(r) for r in records)) == (records, [])


def test_appended_records_survive_a_new_process_in_order(tmp_path: Path) -> None:
    first = _spool(tmp_path)
    for i in range(3):
        first.append(_record(i))
    # no close(): a crash after the last fsync
    again = _spool(tmp_path)
    assert again.records == 3 and again.oldest == 1000.0
    paths = again.take()
    assert [r.key for p in paths for r in again.read(p)] == [b"esign:s-0", b"esign:s-1", b"esign:s-2"]


def test_a_segment_is_removed_only_when_the_forwarder_says_so(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    spool.append(_record(0))
    [taken] = spool.take()
    spool.append(_record(1))  # arrives while the first segment is being forwarded: a new segment
    assert spool.records == 2
    spool.remove(taken)
    assert spool.records == 1 and not taken.exists()
    [rest] = spool.take()
    assert [r.key for r in spool.read(rest)] == [b"esign:s-1"]


def test_a_torn_tail_keeps_the_valid_prefix_and_says_what_was_lost(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    for i in range(3):
        spool.append(_record(i))
    spool.close()
    [segment] = list(tmp_path.glob("segment-*.spool"))
    data = segment.read_bytes()
    segment.write_bytes(data[: len(data) - 10])  # killed mid-append
    again = _spool(tmp_path)
    assert again.records == 2
    assert [(d.lost_bytes, d.why) for d in again.damage] == [(len(frame(_record(2))) - 10, "torn or corrupt tail")]
    assert scan(segment.read_bytes())[1] == [], "the damage is repaired on disk, reported once"


@pytest.mark.parametrize("where", ["payload", "length"])
def test_a_flipped_byte_costs_that_record_only(tmp_path: Path, where: str) -> None:
    spool = _spool(tmp_path)
    for i in range(3):
        spool.append(_record(i))
    spool.close()
    [segment] = list(tmp_path.glob("segment-*.spool"))
    data = bytearray(segment.read_bytes())
    second = len(frame(_record(0)))
    data[second + (30 if where == "payload" else 4)] ^= 0x40
    segment.write_bytes(bytes(data))
    again = _spool(tmp_path)
    kept = [r.key for p in again.take() for r in again.read(p)]
    assert kept == [b"esign:s-0", b"esign:s-2"]
    assert len(again.damage) == 1 and again.damage[0].offset == second


def test_full_by_size_or_by_age(tmp_path: Path) -> None:
    small = _spool(tmp_path / "a", max_bytes=len(frame(_record(0))) + 1)
    assert small.full() is None
    small.append(_record(0))
    small.append(_record(1))
    assert "max_bytes" in (small.full() or "")
    old = Spool(tmp_path / "b", 1 << 30, 60, clock=lambda: 5000.0).open()
    assert old.full() is None
    old.append(_record(0, at=1000.0))
    assert "max_age_s" in (old.full() or "")


def test_a_short_write_is_an_error_and_leaves_the_segment_clean(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk may take part of a record without raising: the append fails (the delivery is
    refused, never a 200) and the part written is cut off, so the records around it stay whole."""
    spool = _spool(tmp_path)
    spool.append(_record(0))
    real_write = os.write
    monkeypatch.setattr("gateway.spool.journal.os.write", lambda fd, data: real_write(fd, data[: len(data) // 2]))
    with pytest.raises(OSError, match="short write"):
        spool.append(_record(1))
    monkeypatch.undo()
    assert spool.records == 1 and not spool.holds(b"esign:s-1")
    spool.append(_record(2))
    spool.close()
    again = _spool(tmp_path)
    assert again.damage == []
    assert [r.key for p in again.take() for r in again.read(p)] == [b"esign:s-0", b"esign:s-2"]


def test_keys_are_held_until_kafka_acknowledged_their_segment(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    spool.append(_record(0))
    spool.append(_record(0))
    [taken] = spool.take()
    spool.append(_record(1))
    assert spool.holds(b"esign:s-0") and spool.holds(b"esign:s-1") and not spool.holds(b"esign:s-2")
    spool.remove(taken)
    assert not spool.holds(b"esign:s-0") and spool.holds(b"esign:s-1")
    assert _spool(tmp_path).holds(b"esign:s-1"), "a new process knows the keys of what it found"


def test_quarantined_records_leave_the_segment_and_are_kept_aside(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    for i in range(3):
        spool.append(_record(i))
    [taken] = spool.take()
    records = spool.read(taken)
    spool.quarantine(taken, [records[1]], [records[0], records[2]])
    assert spool.records == 2 and spool.quarantined == 1 and not spool.holds(b"esign:s-1")
    assert [r.key for r in spool.read(taken)] == [b"esign:s-0", b"esign:s-2"]
    [aside] = (tmp_path / "quarantine").glob("*.spool")
    assert scan(aside.read_bytes()) == ([records[1]], [])
    again = _spool(tmp_path)
    assert again.quarantined == 1 and again.records == 2
