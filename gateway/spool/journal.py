"""The gateway's local journal for `on_kafka_unavailable: spool` sources: while Kafka is away, a
delivery is answered 200 once its exact raw record is appended here and fsynced; a forwarder
(gateway.sink.SpoolForwarder) sends the journal to the raw topic, in order, once Kafka
answers, and removes only what Kafka acknowledged.

Segment files of framed records, append-only: `KS` + payload length + CRC-32 + payload. A segment
is sealed when the forwarder takes it and deleted once all its records are acknowledged, so a
crash mid-drain sends a segment again (the normalizer's dedup absorbs the repeats) and a crash
mid-append leaves at most a torn last record. Opening the spool reads every segment: records whose
checksum fails, and torn tails, are logged with the bytes lost and dropped; the valid records on
either side are kept (the scan resynchronizes on the next frame that checks out).

Order per verification: a record's key is `provider:verification_id`, and the spool counts the
records it holds per key. A delivery whose key has a record here is spooled behind it (never sent
around it); any other goes straight to Kafka while the forwarder drains, unless the forwarder has
just found Kafka away (`kafka_away`), when it is spooled at once instead of waiting for a timeout.
A key leaves the count only when Kafka acknowledged its last spooled record, so a delivery sent
directly always lands after every spooled one of its verification.

A record Kafka refuses for good (e.g. over its size limit: spooled by a version that did not check)
is moved to `quarantine/` beside the segments, in the same framing, and counted: it no longer
blocks the records behind it, and an operator decides what to do with it (docs/operations.md).

Why files and not SQLite: the records are written once, read once in order and deleted a segment
at a time, and a flipped byte must cost one record, not make the whole store unreadable (SQLite
reports such a database as malformed). The frame check is zlib.crc32, the same as Kafka's own
record batches use (CRC-32C there).
"""

from __future__ import annotations

import os
import struct
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from processors import logs

log = logs.get("kycstream.spool")

_MAGIC = b"KS"
_FRAME = struct.Struct(">2sII")  # magic, payload length, crc32(payload)
_META = struct.Struct(">dI")  # spooled_at (epoch seconds), length of the JSON [key, headers]
_MAX_PAYLOAD = 64 * 1024 * 1024
_SEGMENT_BYTES = 8 * 1024 * 1024  # an active segment past this is sealed at the next append


@dataclass(frozen=True, slots=True)
class Spooled:
    """One raw record, exactly as it would have been produced."""

    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    spooled_at: float


@dataclass(frozen=True, slots=True)
class Damage:
    segment: str
    offset: int
    lost_bytes: int
    why: str


def frame(record: Spooled) -> bytes:
    meta = orjson.dumps([record.key.decode("latin-1"), [[k, v.decode("latin-1")] for k, v in record.headers]])
    payload = _META.pack(record.spooled_at, len(meta)) + meta + record.value
    return _FRAME.pack(_MAGIC, len(payload), zlib.crc32(payload)) + payload


def _unframe(payload: bytes) -> Spooled:
    spooled_at, meta_len = _META.unpack_from(payload)
    key, headers = orjson.loads(payload[_META.size : _META.size + meta_len])
    return Spooled(
        key=key.encode("latin-1"),
        value=payload[_META.size + meta_len :],
        headers=tuple((k, v.encode("latin-1")) for k, v in headers),
        spooled_at=spooled_at,
    )


def scan(data: bytes, segment: str = "") -> tuple[list[Spooled], list[Damage]]:
    """The valid records of a segment's bytes, and what was damaged (pure)."""
    records: list[Spooled] = []
    damage: list[Damage] = []
    pos, bad_from = 0, -1

    def close_bad(upto: int, why: str) -> None:
        nonlocal bad_from
        if bad_from >= 0:
            damage.append(Damage(segment, bad_from, upto - bad_from, why))
            bad_from = -1

    while pos < len(data):
        record = _record_at(data, pos)
        if record is None:
            if bad_from < 0:
                bad_from = pos
            nxt = data.find(_MAGIC, pos + 1)
            if nxt < 0:
                close_bad(len(data), "torn or corrupt tail")
                break
            pos = nxt
            continue
        close_bad(pos, "corrupt record")
        parsed, pos = record
        records.append(parsed)
    return records, damage


def _record_at(data: bytes, pos: int) -> tuple[Spooled, int] | None:
    if len(data) - pos < _FRAME.size:
        return None
    magic, length, crc = _FRAME.unpack_from(data, pos)
    end = pos + _FRAME.size + length
    if magic != _MAGIC or length > _MAX_PAYLOAD or end > len(data):
        return None
    payload = data[pos + _FRAME.size : end]
    if zlib.crc32(payload) != crc:
        return None
    try:
        return _unframe(payload), end
    except (ValueError, struct.error, UnicodeError):
        return None


@dataclass
class _Segment:
    path: Path
    records: int = 0
    size: int = 0
    oldest: float | None = None
    keys: Counter[bytes] = field(default_factory=Counter)


class Spool:
    """Thread-safe: the event loop appends (through a worker thread), the forwarder drains."""

    def __init__(
        self, directory: Path, max_bytes: int, max_age_s: float, clock: Callable[[], float] = time.time
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.clock = clock
        self._lock = threading.Lock()
        self._sealed: list[_Segment] = []
        self._active: _Segment | None = None
        self._fd: int | None = None
        self._next = 0
        self._keys: Counter[bytes] = Counter()  # records held per key, over every segment
        self.damage: list[Damage] = []
        self.quarantined = 0  # records in quarantine/ (found at start or moved there since)
        # The forwarder's last word: Kafka did not answer it. Deliveries then spool without trying.
        self.kafka_away = False

    # --- start --------------------------------------------------------------------------------

    def open(self) -> Spool:
        """Take over what a previous process left: every segment, checked; damaged ones rewritten
        with their valid records only (the damage is logged once, with what was lost)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for leftover in self.directory.glob("*.tmp"):
            leftover.unlink()
        for path in sorted(self.directory.glob("segment-*.spool")):
            records, damage = scan(path.read_bytes(), path.name)
            if damage:
                self.damage.extend(damage)
                for d in damage:
                    log.error("spool_damaged", segment=d.segment, offset=d.offset, lost_bytes=d.lost_bytes, why=d.why)
                self._rewrite(path, records)
            if not records:
                path.unlink()
                continue
            size = path.stat().st_size
            keys = Counter(r.key for r in records)
            self._sealed.append(_Segment(path, len(records), size, min(r.spooled_at for r in records), keys))
            self._keys.update(keys)
            self._next = max(self._next, int(path.stem.split("-")[1]) + 1)
        quarantine = self.directory / "quarantine"
        if quarantine.is_dir():
            self.quarantined = sum(len(scan(q.read_bytes())[0]) for q in quarantine.glob("*.spool"))
        if self.quarantined:
            log.error("spool_quarantine_found", records=self.quarantined, directory=str(quarantine))
        if self._sealed:
            log.warning("spool_found", records=self.records, bytes=self.bytes, segments=len(self._sealed))
        return self

    def _rewrite(self, path: Path, records: list[Spooled]) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(b"".join(frame(r) for r in records))
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        tmp.replace(path)
        self._fsync_dir()

    # --- the gateway's side -------------------------------------------------------------------

    def full(self) -> str | None:
        """Why the spool takes nothing more now, or None."""
        with self._lock:
            if self._bytes() >= self.max_bytes:
                return f"the spool holds {self._bytes()} bytes, its limit is {self.max_bytes} (gateway.spool.max_bytes)"
            oldest = self._oldest()
            if oldest is not None and self.clock() - oldest > self.max_age_s:
                return f"the spool's oldest record is over {self.max_age_s:g}s old (gateway.spool.max_age_s)"
        return None

    def holds(self, key: bytes) -> bool:
        """Whether a record of this key waits here (a delivery of that key must queue behind it)."""
        with self._lock:
            return key in self._keys

    def append(self, record: Spooled) -> None:
        """Write and fsync: when this returns the record survives a crash of this process. Raises
        OSError when it may not (a full disk, a short write): the delivery must then be refused."""
        data = frame(record)
        with self._lock:
            if self._active is None or self._active.size >= _SEGMENT_BYTES:
                self._start_segment()
            active, fd = self._active, self._fd
            assert active is not None and fd is not None
            try:
                written = os.write(fd, data)
                if written != len(data):  # a full disk may take part of it without raising
                    raise OSError(f"short write to the spool: {written} of {len(data)} bytes")
                os.fsync(fd)
            except OSError:
                self._cut_back(fd, active.size)
                raise
            active.records += 1
            active.size += len(data)
            active.keys[record.key] += 1
            self._keys[record.key] += 1
            if active.oldest is None:
                active.oldest = record.spooled_at

    def _cut_back(self, fd: int, size: int) -> None:
        """Remove a failed append's bytes, or, when even that fails, seal the segment where it is
        (its valid records stay; the torn tail is dropped, and logged, when it is read)."""
        try:
            os.ftruncate(fd, size)
        except OSError:
            self._seal()

    def _start_segment(self) -> None:
        self._seal()
        path = self.directory / f"segment-{self._next:012d}.spool"
        self._next += 1
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._active = _Segment(path)
        self._fsync_dir()  # the new file's name survives a crash too

    def _seal(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._active is not None:
            if self._active.records:
                self._sealed.append(self._active)
            else:
                self._active.path.unlink(missing_ok=True)
            self._active = None

    def _fsync_dir(self, directory: Path | None = None) -> None:
        fd = os.open(directory or self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # --- the forwarder's side -----------------------------------------------------------------

    def take(self) -> list[Path]:
        """Seal the active segment; the segments to forward, oldest first."""
        with self._lock:
            self._seal()
            return [s.path for s in self._sealed]

    def read(self, path: Path) -> list[Spooled]:
        records, damage = scan(path.read_bytes(), path.name)
        for d in damage:  # written by this process and checked since: only a failing disk gets here
            log.error("spool_damaged", segment=d.segment, offset=d.offset, lost_bytes=d.lost_bytes, why=d.why)
        return records

    def remove(self, path: Path) -> None:
        """Every record of this segment was acknowledged by Kafka."""
        with self._lock:
            for segment in self._sealed:
                if segment.path == path:
                    self._keys -= segment.keys
            self._sealed = [s for s in self._sealed if s.path != path]
            path.unlink(missing_ok=True)

    def quarantine(self, path: Path, refused: list[Spooled], kept: list[Spooled]) -> None:
        """Move the records Kafka refuses for good out of a taken segment, into quarantine/; the
        segment keeps the others, in order."""
        quarantine = self.directory / "quarantine"
        quarantine.mkdir(exist_ok=True)
        fd = os.open(quarantine / path.name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            data = b"".join(frame(r) for r in refused)
            if os.write(fd, data) != len(data):
                raise OSError(f"short write to {quarantine / path.name}")
            os.fsync(fd)
        finally:
            os.close(fd)
        self._fsync_dir(quarantine)
        with self._lock:
            segment = next(s for s in self._sealed if s.path == path)
            self._keys -= segment.keys
            if kept:
                self._rewrite(path, kept)
                segment.records, segment.size = len(kept), path.stat().st_size
                segment.keys = Counter(r.key for r in kept)
                segment.oldest = min(r.spooled_at for r in kept)
                self._keys.update(segment.keys)
            else:
                self._sealed.remove(segment)
                path.unlink(missing_ok=True)
            self.quarantined += len(refused)

    # --- what it holds ------------------------------------------------------------------------

    @property
    def records(self) -> int:
        with self._lock:
            return sum(s.records for s in self._segments())

    @property
    def bytes(self) -> int:
        with self._lock:
            return self._bytes()

    @property
    def oldest(self) -> float | None:
        with self._lock:
            return self._oldest()

    def _segments(self) -> list[_Segment]:
        return [*self._sealed, *([self._active] if self._active is not None else [])]

    def _bytes(self) -> int:
        return sum(s.size for s in self._segments())

    def _oldest(self) -> float | None:
        times = [s.oldest for s in self._segments() if s.oldest is not None]
        return min(times) if times else None

    def close(self) -> None:
        with self._lock:
            self._seal()
