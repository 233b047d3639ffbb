"""Dedup stores: which idempotency keys were seen within the window, per raw partition.

Pure and Kafka-free: the runner restores them from the `kyc.dedup.v1` changelog and writes
every change back there. Expiry is by minute buckets, so finding expired keys is cheap.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from pathlib import Path
from typing import Protocol

_BUCKET_S = 60


class DedupStore(Protocol):
    def __contains__(self, key: str) -> bool: ...

    def __len__(self) -> int: ...

    def add(self, key: str, expires_at_s: int) -> None: ...

    def discard(self, key: str) -> None: ...

    def pop_expired(self, now_s: int) -> list[str]: ...

    def close(self) -> None: ...


class MemoryDedupStore:
    """Keys as UTF-8 bytes mapped to a shared per-minute bucket number: ~170 bytes a key."""

    def __init__(self) -> None:
        self._expiry: dict[bytes, int] = {}
        self._buckets: dict[int, list[bytes]] = defaultdict(list)
        self._interned: dict[int, int] = {}

    def __contains__(self, key: str) -> bool:
        return key.encode() in self._expiry

    def __len__(self) -> int:
        return len(self._expiry)

    def add(self, key: str, expires_at_s: int) -> None:
        minute = -(-expires_at_s // _BUCKET_S)
        bucket = self._interned.setdefault(minute, minute)  # one int object shared by the bucket's keys
        raw = key.encode()
        self._expiry[raw] = bucket
        self._buckets[bucket].append(raw)

    def discard(self, key: str) -> None:
        self._expiry.pop(key.encode(), None)

    def pop_expired(self, now_s: int) -> list[str]:
        expired: list[str] = []
        for bucket in sorted(b for b in self._buckets if b * _BUCKET_S <= now_s):
            self._interned.pop(bucket, None)
            for raw in self._buckets.pop(bucket):
                if self._expiry.get(raw) == bucket:
                    del self._expiry[raw]
                    expired.append(raw.decode())
        return expired

    def close(self) -> None:
        self._expiry.clear()
        self._buckets.clear()
        self._interned.clear()


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

    def discard(self, key: str) -> None:
        self._db.execute("DELETE FROM seen WHERE key = ?", (key,))

    def pop_expired(self, now_s: int) -> list[str]:
        rows = self._db.execute("DELETE FROM seen WHERE expires <= ? RETURNING key", (now_s,)).fetchall()
        return [row[0] for row in rows]

    def close(self) -> None:
        self._db.close()
        self._path.unlink(missing_ok=True)
