"""One raw partition's stores on local disk (RocksDB, through rocksdict): its dedup keys and its
verifications' states, with the changelog offsets they reflect, as quix-streams keeps its state.

Pure and Kafka-free. Changes wait in the store until `commit` writes them in one WriteBatch with
the offsets and the anchor: the owner commits only what Kafka acknowledged, so the store never
claims a changelog offset whose records it lacks, nor holds a key whose dedup record may be
missing (normalizer/anchor.py). On the next assignment only the changelogs' tail, from those
offsets, is read (normalizer/recovery.py); a store whose changelog was recreated is wiped.

One database, four kinds of entry, told apart by their first byte:
  d + key                      -> the key's expiry (8 bytes, seconds, big-endian, biased)
  e + expiry + key             -> b""   (the same, ordered by expiry: what pop_expired reads)
  s + key                      -> the state changelog's value bytes (decoded when read)
  m                            -> the checkpoint (JSON): offsets, anchor, counts, identity
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rocksdict import BlockBasedOptions, Cache, Options, Rdict, WriteBatch, WriteBufferManager

from processors.model import VerificationState

_KEY, _EXPIRY, _STATE, _META = b"d", b"e", b"s", b"m"
_BIAS = 1 << 63  # expiries before 1970 still sort first


def _expiry(seconds: int) -> bytes:
    return (seconds + _BIAS).to_bytes(8, "big")


def _seconds(expiry: bytes) -> int:
    return int.from_bytes(expiry, "big") - _BIAS


@dataclass
class Checkpoint:
    """What the data on disk reflects: each changelog read up to (not including) its `*_next`
    offset, the greatest anchor among the dedup records read, and which changelogs they were."""

    dedup_next: int = 0
    state_next: int = 0
    anchor: int = -1
    keys: int = 0
    states: int = 0
    partitions: int = 0  # the raw topic's partition count the store was built for (0: not yet known)
    identity: dict[str, str] = field(default_factory=dict)  # changelog topic -> its id (or marker)


class Memory:
    """RocksDB's memory, shared by every partition's store of one process: the block cache (reads)
    and the write buffers (memtables, charged to the same cache), each bounded by a setting."""

    def __init__(self, block_cache_bytes: int, write_buffer_bytes: int) -> None:
        self.cache = Cache(block_cache_bytes)
        self.write_buffers = WriteBufferManager.new_write_buffer_manager_with_cache(
            write_buffer_bytes, False, self.cache
        )
        self.write_buffer_bytes = write_buffer_bytes

    def options(self) -> Options:
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        table = BlockBasedOptions()
        table.set_block_cache(self.cache)
        table.set_bloom_filter(10, False)  # a lookup of an absent key (the usual case) reads no block
        table.set_cache_index_and_filter_blocks(True)  # index and filters inside the cache's bound
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        options.set_block_based_table_factory(table)
        options.set_write_buffer_manager(self.write_buffers)
        options.set_write_buffer_size(max(1 << 20, self.write_buffer_bytes // 2))
        options.set_max_write_buffer_number(2)
        options.set_max_open_files(256)
        options.set_keep_log_file_num(2)
        return options


class PartitionDB:
    """The database of one raw partition. `dedup` and `states` are its two views."""

    def __init__(
        self,
        path: Path,
        memory: Memory,
        encode_state: Callable[[VerificationState], bytes],
        decode_state: Callable[[bytes], VerificationState],
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._memory = memory
        self._db: Rdict | None = Rdict(str(path), memory.options())
        self._pending: dict[bytes, bytes | None] = {}  # written at the next commit
        self.encode_state = encode_state
        self.decode_state = decode_state
        self.checkpoint = self._read_checkpoint()
        self._keys, self._states = self.checkpoint.keys, self.checkpoint.states
        self.dedup = RocksDedupStore(self)
        self.states = RocksStates(self)

    @property
    def db(self) -> Rdict:
        if self._db is None:
            raise RuntimeError(f"the store at {self.path} is closed")
        return self._db

    def _read_checkpoint(self) -> Checkpoint:
        raw = self.db.get(_META)
        return Checkpoint(**json.loads(raw)) if raw else Checkpoint()

    # --- reading and writing through the pending changes ---------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        if key in self._pending:
            return self._pending[key]
        value: bytes | None = self.db.get(key)
        return value

    def put(self, key: bytes, value: bytes | None) -> None:
        self._pending[key] = value

    @property
    def dirty(self) -> bool:
        return bool(self._pending)

    @property
    def pending(self) -> dict[bytes, bytes | None]:
        return self._pending

    def commit(
        self,
        *,
        dedup_next: int | None = None,
        state_next: int | None = None,
        anchor: int | None = None,
        partitions: int | None = None,
        identity: dict[str, str] | None = None,
    ) -> None:
        """Write the pending changes and the checkpoint in one WriteBatch. An offset only moves
        forward: a caller never makes the store claim less than it holds either."""
        cp = self.checkpoint
        if dedup_next is not None:
            cp.dedup_next = max(cp.dedup_next, dedup_next)
        if state_next is not None:
            cp.state_next = max(cp.state_next, state_next)
        if anchor is not None:
            cp.anchor = max(cp.anchor, anchor)
        if partitions is not None:
            cp.partitions = partitions
        if identity is not None:
            cp.identity = dict(identity)
        cp.keys, cp.states = self._keys, self._states
        batch = WriteBatch(raw_mode=True)
        for key, value in self._pending.items():
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        batch.put(_META, json.dumps(asdict(cp)).encode())
        self.db.write(batch)
        self._pending.clear()

    def rollback(self) -> None:
        """Forget the changes not committed (outputs that were never acknowledged)."""
        self._pending.clear()
        self._keys, self._states = self.checkpoint.keys, self.checkpoint.states

    def wipe(self) -> None:
        """Start empty: the changelog the data came from is gone or was replaced."""
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)
        self._db = Rdict(str(self.path), self._memory.options())
        self._pending.clear()
        self.checkpoint = Checkpoint()
        self._keys = self._states = 0

    def close(self) -> None:
        """Close, keeping the files: the next owner on this disk reads only the changelogs' tail."""
        if self._db is not None:
            self._pending.clear()
            self._db.close()
            self._db = None


class RocksDedupStore:
    """The DedupStore of a PartitionDB (see processors/dedup.py): expiry to the second."""

    def __init__(self, owner: PartitionDB) -> None:
        self._db = owner

    def __contains__(self, key: str) -> bool:
        return self._db.get(_KEY + key.encode()) is not None

    def __len__(self) -> int:
        return self._db._keys

    def add(self, key: str, expires_at_s: int) -> None:
        self.add_utf8(key.encode(), expires_at_s)

    def add_utf8(self, key: bytes, expires_at_s: int) -> None:
        db = self._db
        old = db.get(_KEY + key)
        stamp = _expiry(expires_at_s)
        if old is None:
            db._keys += 1
        elif old != stamp:
            db.put(_EXPIRY + old + key, None)
        db.put(_KEY + key, stamp)
        db.put(_EXPIRY + stamp + key, b"")

    def discard(self, key: str) -> None:
        self.discard_utf8(key.encode())

    def discard_utf8(self, key: bytes) -> None:
        db = self._db
        old = db.get(_KEY + key)
        if old is not None:
            db._keys -= 1
            db.put(_KEY + key, None)
            db.put(_EXPIRY + old + key, None)

    def pop_expired(self, now_s: int) -> list[str]:
        """The keys whose expiry is at most `now_s`, soonest first, removed. Between batches (nothing
        pending) the removal is committed at once: the caller tombstones them, and a crash before
        that leaves their records in the changelog, found expired by a rebuild."""
        db = self._db
        end = _EXPIRY + _expiry(now_s + 1)
        candidates = {k for k, v in db.pending.items() if k[:1] == _EXPIRY and k < end and v is not None}
        committed = not candidates and not db.dirty
        it = db.db.iter()
        it.seek(_EXPIRY)
        while it.valid() and (entry := it.key()) < end:
            candidates.add(entry)
            it.next()
        del it
        popped = []
        for entry in sorted(candidates):
            stamp, key = entry[1:9], entry[9:]
            if db.get(entry) is not None and db.get(_KEY + key) == stamp:
                db.put(_KEY + key, None)
                db.put(entry, None)
                db._keys -= 1
                popped.append(key.decode())
        if popped and committed:
            db.commit()
        return popped

    def close(self) -> None:
        self._db.close()


class RocksStates:
    """The state table of a PartitionDB: a mapping of `provider:verification_id` to its state."""

    def __init__(self, owner: PartitionDB) -> None:
        self._db = owner

    def get(self, key: str) -> VerificationState | None:
        raw = self._db.get(_STATE + key.encode())
        return None if raw is None else self._db.decode_state(raw)

    def __contains__(self, key: str) -> bool:
        return self._db.get(_STATE + key.encode()) is not None

    def __len__(self) -> int:
        return self._db._states

    def put_encoded(self, key: bytes, value: bytes | None) -> None:
        """A state changelog record as it is (None: a tombstone)."""
        db = self._db
        known = db.get(_STATE + key) is not None
        db._states += (value is not None) - known
        db.put(_STATE + key, value)

    def __setitem__(self, key: str, value: VerificationState) -> None:
        self.put_encoded(key.encode(), self._db.encode_state(value))

    def update(self, states: dict[str, VerificationState] | Iterable[tuple[str, VerificationState]]) -> None:
        for key, value in states.items() if isinstance(states, dict) else states:
            self[key] = value

    def pop(self, key: str, default: None = None) -> VerificationState | None:
        found = self.get(key)
        self.put_encoded(key.encode(), None)
        return found
