"""Dedup stores: which idempotency keys were seen within the window, per raw partition.

Pure and Kafka-free: the runner restores them from the `kyc.dedup.v1` changelog and writes
every change back there.
"""

from __future__ import annotations

import sqlite3
from array import array
from itertools import compress
from operator import itemgetter
from pathlib import Path
from typing import Protocol

_BUCKET_S = 60


class DedupStore(Protocol):
    def __contains__(self, key: str) -> bool: ...

    def __len__(self) -> int: ...

    def add(self, key: str, expires_at_s: int) -> None: ...

    def add_utf8(self, key: bytes, expires_at_s: int) -> None:
        """add(key.decode(), ...) for a key already UTF-8 encoded (a record key as Kafka gives it)."""
        ...

    def discard(self, key: str) -> None: ...

    def discard_utf8(self, key: bytes) -> None: ...

    def pop_expired(self, now_s: int) -> list[str]: ...

    def close(self) -> None: ...


# MemoryDedupStore's layout. A shard is its keys' entries one after the other, each
#   SEP, 2 bytes of the key's hash (each < 64), the key's UTF-8 bytes, END, the expiry minute in 4 bytes
# (base 254, big-endian: the bytes compare as the minutes do, and are never SEP or END). UTF-8 has
# neither 0xFE nor 0xFF, so SEP starts an entry wherever it is, and END ends its key. Looking a key
# up searches its shard for SEP + its hash bytes (3 bytes: a fast search, even in a long shard),
# then compares the key in place.
_SEP, _END = b"\xff", b"\xfe"
_TAGS = [_SEP + bytes((t >> 6, t & 63)) for t in range(4096)]  # SEP + hash bytes, by 12 bits of hash
_TAG_SHIFT = 40  # the hash bits of the tag: far above those choosing the shard
_BASE = 254
_MINUTES = _BASE**4  # minutes from the epoch a stamp holds (to the year 9880); others go to _odd
_LOAD = 8  # keys per shard (on average) before the shards grow fourfold
_FIRST_SHARDS = 64


def _stamp(minute: int) -> bytes:
    return bytes((minute // _BASE**3, minute // _BASE**2 % _BASE, minute // _BASE % _BASE, minute % _BASE))


def _minute(stamp: bytes) -> int:
    return ((stamp[0] * _BASE + stamp[1]) * _BASE + stamp[2]) * _BASE + stamp[3]


def _find(shard: bytes, tag: bytes, key: bytes) -> int:
    """Where the entry of `key` (its tag and its bytes then END) starts in `shard`, or -1."""
    at = shard.find(tag)
    while at >= 0 and not shard.startswith(key + _END, at + 3):
        at = shard.find(tag, at + 3)
    return at


class MemoryDedupStore:
    """Keys packed into bytes objects ("shards", chosen by the key's hash), with their expiry
    minutes: the key's bytes and 8 more each (~100 bytes a key of 80 characters, shards included),
    and no Python object per key.

    A lookup hashes the key and searches its shard (2 to 8 keys on average); a change rebuilds
    that shard. Each shard's soonest expiry minute (a lower bound: a removal leaves it) says which
    shards pop_expired reads. Keys whose expiry has no stamp (before 1970, after 9880) are kept
    apart, in a dict."""

    def __init__(self) -> None:
        self._shards: list[bytes] = [b""] * _FIRST_SHARDS
        self._soonest = array("I", [_MINUTES] * _FIRST_SHARDS)  # per shard: no entry expires before
        self._mask = _FIRST_SHARDS - 1
        self._count = 0  # keys in the shards
        self._limit = _LOAD * _FIRST_SHARDS  # more keys than this: the shards grow
        self._stamps: dict[int, bytes] = {}  # minute -> its stamp, for the minutes in use
        self._odd: dict[bytes, int] = {}  # key -> expiry minute, when that has no stamp

    def __contains__(self, key: str) -> bool:
        raw = key.encode()
        if self._odd and raw in self._odd:
            return True
        h = hash(raw)
        return _find(self._shards[h & self._mask], _TAGS[h >> _TAG_SHIFT & 0xFFF], raw) >= 0

    def __len__(self) -> int:
        return self._count + len(self._odd)

    def add(self, key: str, expires_at_s: int) -> None:
        self.add_utf8(key.encode(), expires_at_s)

    def add_utf8(self, key: bytes, expires_at_s: int) -> None:
        """add() of a key already UTF-8 encoded (only valid UTF-8: the layout relies on it)."""
        minute = -(-expires_at_s // _BUCKET_S)
        if self._odd:
            self._odd.pop(key, None)
        if not 0 <= minute < _MINUTES:
            self.discard_utf8(key)
            self._odd[key] = minute
            return
        stamp = self._stamps.get(minute)
        if stamp is None:
            stamp = self._stamps[minute] = _stamp(minute)
        h = hash(key)
        i = h & self._mask
        tag = _TAGS[h >> _TAG_SHIFT & 0xFFF]
        shard = self._shards[i]
        at = shard.find(tag)
        while at >= 0 and not shard.startswith(key + _END, at + 3):
            at = shard.find(tag, at + 3)
        if at < 0:
            self._shards[i] = b"".join((shard, tag, key, _END, stamp))
            self._count += 1
            if self._count > self._limit:
                self._soonest[i] = min(self._soonest[i], minute)
                self._grow()  # after which i is not necessarily the key's shard
                return
        else:
            at += len(key) + 4
            self._shards[i] = shard[:at] + stamp + shard[at + 4 :]
        if minute < self._soonest[i]:
            self._soonest[i] = minute

    def discard(self, key: str) -> None:
        self.discard_utf8(key.encode())

    def discard_utf8(self, key: bytes) -> None:
        if self._odd and self._odd.pop(key, None) is not None:
            return
        h = hash(key)
        i = h & self._mask
        shard = self._shards[i]
        at = _find(shard, _TAGS[h >> _TAG_SHIFT & 0xFFF], key)
        if at >= 0:
            self._shards[i] = shard[:at] + shard[at + len(key) + 8 :]
            self._count -= 1

    def pop_expired(self, now_s: int) -> list[str]:
        now_minute = now_s // _BUCKET_S  # a key filed under minute m is due once m * 60 <= now_s
        expired = [(m, k) for k, m in self._odd.items() if m <= now_minute]
        for _, key in expired:
            del self._odd[key]
        due = list(compress(range(len(self._soonest)), map(now_minute.__ge__, self._soonest)))
        if due:
            last = _stamp(min(now_minute, _MINUTES - 1))  # due: stamped at most this
            for i in due:
                entries = self._shards[i].split(_SEP)[1:]
                kept = []
                soonest = _MINUTES
                for entry in entries:
                    stamp = entry[-4:]
                    if stamp <= last:
                        expired.append((_minute(stamp), entry[2:-5]))
                    else:
                        kept.append(entry)
                        soonest = min(soonest, _minute(stamp))
                self._count -= len(entries) - len(kept)
                self._shards[i] = _SEP + _SEP.join(kept) if kept else b""
                self._soonest[i] = soonest
            for minute in [m for m in self._stamps if m <= now_minute]:
                del self._stamps[minute]
        expired.sort(key=lambda e: e[0])  # by expiry minute, as they became due
        return [key.decode() for _, key in expired]

    def close(self) -> None:
        self._shards = [b""] * _FIRST_SHARDS
        self._soonest = array("I", [_MINUTES] * _FIRST_SHARDS)
        self._mask = _FIRST_SHARDS - 1
        self._count = 0
        self._limit = _LOAD * _FIRST_SHARDS
        self._stamps.clear()
        self._odd.clear()

    def _grow(self) -> None:
        """Four times the shards: shard i's entries go to i, i + n, i + 2n or i + 3n, by the next two
        bits of their key's hash (growing fourfold rereads each entry a third as often as doubling)."""
        n = len(self._shards)
        shards = self._shards + [b""] * (3 * n)
        self._soonest *= 4
        bits = n.bit_length() - 1  # n is a power of two
        key = itemgetter(slice(2, -5))  # an entry without its tag's hash bytes, END and stamp
        for i in range(n):
            entries = shards[i].split(_SEP)[1:]
            if not entries:
                continue
            quarters = [h >> bits & 3 for h in map(hash, map(key, entries))]
            for q in range(4):
                part = list(compress(entries, map(q.__eq__, quarters)))
                shards[i + q * n] = _SEP + _SEP.join(part) if part else b""
        self._shards = shards
        self._mask = 4 * n - 1
        self._limit = _LOAD * 4 * n


class SqliteDedupStore:
    """For windows that outgrow memory: one SQLite file per partition (the changelog stays the truth)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)  # rebuilt from the changelog on every assignment
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.executescript(
            "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;"
            "CREATE TABLE seen (key TEXT PRIMARY KEY, expires INTEGER NOT NULL) WITHOUT ROWID;"
            "CREATE INDEX seen_expires ON seen (expires);"
        )
        self._path = path

    def __contains__(self, key: str) -> bool:
        return self._db.execute("SELECT 1 FROM seen WHERE key = ?", (key,)).fetchone() is not None

    def __len__(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM seen").fetchone()[0])

    def add(self, key: str, expires_at_s: int) -> None:
        self._db.execute("INSERT OR REPLACE INTO seen VALUES (?, ?)", (key, expires_at_s))

    def add_utf8(self, key: bytes, expires_at_s: int) -> None:
        self.add(key.decode(), expires_at_s)

    def discard_utf8(self, key: bytes) -> None:
        self.discard(key.decode())

    def discard(self, key: str) -> None:
        self._db.execute("DELETE FROM seen WHERE key = ?", (key,))

    def pop_expired(self, now_s: int) -> list[str]:
        rows = self._db.execute("DELETE FROM seen WHERE expires <= ? RETURNING key", (now_s,)).fetchall()
        return [row[0] for row in rows]

    def close(self) -> None:
        self._db.close()
        self._path.unlink(missing_ok=True)
