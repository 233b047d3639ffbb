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
An `e` entry whose `d` entry no longer says that expiry is stale (a rebuild writes without reading,
below): pop_expired drops it and expires nothing.

A rebuild into an empty store (`begin_rebuild`) writes the changelog as it comes, without reading
a key first: no counts kept (recounted at the end), the write-ahead log off. A crash then loses the
memtable, checkpoint and data alike (they are written in one batch), and RocksDB comes back at an
older, consistent checkpoint. `end_rebuild` flushes before anything written with the log is: a
write with the log after an unflushed one without it could outlive it and claim its offsets.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rocksdict import (
    BlockBasedIndexType,
    BlockBasedOptions,
    Cache,
    MemtableFactory,
    Options,
    Rdict,
    ReadOptions,
    WriteBatch,
    WriteBufferManager,
    WriteOptions,
)

from processors.model import VerificationState

_KEY, _EXPIRY, _STATE, _META = b"d", b"e", b"s", b"m"
_BIAS = 1 << 63  # expiries before 1970 still sort first
READ_CACHE = 20_000  # entries (~4 MB): a few of the processor's batches' reads
_LOG, _NO_LOG = WriteOptions(), WriteOptions()
_NO_LOG.disable_wal = True  # type: ignore[method-assign,assignment]  # a property; rocksdict's stub says a method


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
    keys: int = 0  # -1: not known (a rebuild cut short): counted when the store is opened
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

    def options(self, *, rebuild: bool = False) -> Options:
        """`rebuild`: memtables that append (sorted when flushed), for writes nobody reads until
        they are flushed: 0.25 us a record against 3 us into the skip list during a rebuild."""
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        table = BlockBasedOptions()
        table.set_block_cache(self.cache)
        table.set_bloom_filter(10, False)  # a lookup of an absent key (the usual case) reads no block
        table.set_cache_index_and_filter_blocks(True)  # index and filters inside the cache's bound
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        # Filters and indexes in 4 KB partitions under a small pinned top level: a whole file's
        # filter (~1 MB per million keys) evicted from the cache was read back for every lookup,
        # 200 us for an absent key at 1M keys against 0.5-0.8 us partitioned (bench/RESULTS.md).
        table.set_partition_filters(True)
        table.set_index_type(BlockBasedIndexType.two_level_index_search())
        table.set_pin_top_level_index_and_filter(True)
        table.set_metadata_block_size(4096)
        options.set_block_based_table_factory(table)
        options.set_write_buffer_manager(self.write_buffers)
        options.set_write_buffer_size(max(1 << 20, self.write_buffer_bytes // 2))
        options.set_max_write_buffer_number(2)
        options.set_max_open_files(256)
        options.set_keep_log_file_num(2)
        if rebuild:
            options.set_memtable_factory(MemtableFactory.vector())
            options.set_allow_concurrent_memtable_write(False)
        else:
            # A bloom filter of whole keys in each memtable (2 % of its size, in its arena: inside
            # the write buffers' bound): most of the processor's reads are of absent keys (a new
            # idempotency key, a new verification), and each searched the skip list. Engine.process,
            # 30k records: RocksDB's reads 89 -> 42 ms, its writes 74 -> 93 ms (the filter filled),
            # 1 us a record less. Not for a rebuild, which reads nothing.
            options.set_memtable_whole_key_filtering(True)
            options.set_memtable_prefix_bloom_ratio(0.02)
        return options


def _open(path: Path, options: Options) -> Rdict:
    # The options given for the default column family too: else rocksdict reopens an existing
    # database with the column family options of its OPTIONS file, without the shared cache (so
    # outside the memory bound) and with the memtables of the last open.
    return Rdict(str(path), options, column_families={"default": options})


class PartitionDB:
    """The database of one raw partition. `dedup` and `states` are its two views."""

    def __init__(
        self,
        path: Path,
        memory: Memory,
        encode_state: Callable[[VerificationState], bytes],
        decode_state: Callable[[bytes], VerificationState],
        *,
        read_cache: int = 0,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._memory = memory
        self._db: Rdict | None = _open(path, memory.options())
        self._pending: dict[bytes, bytes | None] = {}  # written at the next commit
        # What the database holds for keys read lately (None: absent), kept equal to it by commit,
        # cleared past `read_cache` entries (0: none kept). The processor's batch reads a key to
        # dedup or to apply a state, then writes it (counting whether it was there): that second
        # read went to RocksDB again. A reader of the whole table (the reconciler) keeps none.
        self._read: dict[bytes, bytes | None] = {}
        self._read_cache = read_cache
        self.encode_state = encode_state
        self.decode_state = decode_state
        self._rebuild: WriteBatch | None = None  # begin_rebuild .. end_rebuild: written as read
        self.checkpoint = self._read_checkpoint()
        if self.checkpoint.keys < 0 or self.checkpoint.states < 0:
            self.checkpoint.keys, self.checkpoint.states = self._count(_KEY), self._count(_STATE)
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

    def _count(self, prefix: bytes) -> int:
        bounds = ReadOptions()
        bounds.set_iterate_upper_bound(prefix[:-1] + bytes((prefix[-1] + 1,)))
        return sum(1 for _ in self.db.keys(from_key=prefix, read_opt=bounds))

    def get(self, key: bytes) -> bytes | None:
        if self._rebuild is not None:
            raise RuntimeError(f"the store at {self.path} is being rebuilt: nothing is read until end_rebuild")
        if key in self._pending:
            return self._pending[key]
        if key in self._read:
            return self._read[key]
        value: bytes | None = self.db.get(key)
        if self._read_cache:
            if len(self._read) >= self._read_cache:
                self._read.clear()
            self._read[key] = value
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
        if self._rebuild is not None:
            batch, self._rebuild = self._rebuild, WriteBatch(raw_mode=True)
            cp.keys = cp.states = -1
        else:
            batch = WriteBatch(raw_mode=True)
            for key, value in self._pending.items():
                if value is None:
                    batch.delete(key)
                else:
                    batch.put(key, value)
        batch.put(_META, json.dumps(asdict(cp)).encode())
        self.db.write(batch, _NO_LOG if self._rebuild is not None else _LOG)
        if self._read_cache:
            self._read.update(self._pending)
        self._pending.clear()

    def begin_rebuild(self) -> bool:
        """Write what follows without reading first, when the store is empty; False (nothing
        changes) when it holds anything: a tail is applied key by key, counted."""
        cp = self.checkpoint
        if (cp.dedup_next, cp.state_next, self._keys, self._states) != (0, 0, 0, 0) or self._pending:
            return False
        self._reopen(rebuild=True)
        self._rebuild = WriteBatch(raw_mode=True)
        return True

    @property
    def rebuilding(self) -> bool:
        return self._rebuild is not None

    def end_rebuild(
        self, *, dedup_next: int | None = None, state_next: int | None = None, anchor: int | None = None
    ) -> None:
        """Commit the rest; once rebuilding, make it durable, count the keys and states and commit
        the counts with the log on."""
        self.commit(dedup_next=dedup_next, state_next=state_next, anchor=anchor)
        if self._rebuild is not None:
            self._rebuild = None
            self.db.flush(True)
            self._reopen(rebuild=False)
            self._keys, self._states = self._count(_KEY), self._count(_STATE)
            self.commit()

    def _reopen(self, *, rebuild: bool) -> None:
        self._read.clear()
        self.db.close()
        self._db = _open(self.path, self._memory.options(rebuild=rebuild))

    def rollback(self) -> None:
        """Forget the changes not committed (outputs that were never acknowledged)."""
        if self._rebuild is not None:
            self._rebuild = WriteBatch(raw_mode=True)
        self._pending.clear()
        self._keys, self._states = self.checkpoint.keys, self.checkpoint.states

    def wipe(self) -> None:
        """Start empty: the changelog the data came from is gone or was replaced."""
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)
        self._db = _open(self.path, self._memory.options())
        self._pending.clear()
        self._read.clear()
        self._rebuild = None
        self.checkpoint = Checkpoint()
        self._keys = self._states = 0

    def close(self) -> None:
        """Close, keeping the files: the next owner on this disk reads only the changelogs' tail."""
        if self._db is not None:
            self._pending.clear()
            self._read.clear()
            self._rebuild = None  # what was committed stays (RocksDB flushes it on close)
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
        stamp = (expires_at_s + _BIAS).to_bytes(8, "big")  # _expiry, inline: a rebuild adds millions
        if (batch := db._rebuild) is not None:  # an older `e` entry of the key, if any, is stale
            batch.put(_KEY + key, stamp)
            batch.put(_EXPIRY + stamp + key, b"")
            return
        old = db.get(_KEY + key)
        if old is None:
            db._keys += 1
        elif old != stamp:
            db.put(_EXPIRY + old + key, None)
        db.put(_KEY + key, stamp)
        db.put(_EXPIRY + stamp + key, b"")

    def rebuild_adder(self) -> Callable[[bytes, int], None] | None:
        """During a rebuild, add_utf8 as one closure over the rebuild's batch (valid until the next
        commit, which starts another batch): a rebuild adds millions, and the method's lookups and
        checks cost ~0.2 us each. None when not rebuilding."""
        batch = self._db._rebuild
        if batch is None:
            return None
        put, key_prefix, expiry_prefix, bias = batch.put, _KEY, _EXPIRY, _BIAS

        def add(key: bytes, expires_at_s: int) -> None:
            stamp = (expires_at_s + bias).to_bytes(8, "big")
            put(key_prefix + key, stamp)
            put(expiry_prefix + stamp + key, b"")

        return add

    def discard(self, key: str) -> None:
        self.discard_utf8(key.encode())

    def discard_utf8(self, key: bytes) -> None:
        db = self._db
        if (batch := db._rebuild) is not None:
            batch.delete(_KEY + key)
            return
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
            if db.get(entry) is None:
                continue
            db.put(entry, None)
            if db.get(_KEY + key) == stamp:
                db.put(_KEY + key, None)
                db._keys -= 1
                popped.append(key.decode())
        if committed and db.dirty:
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
        if (batch := db._rebuild) is not None:
            if value is None:
                batch.delete(_STATE + key)
            else:
                batch.put(_STATE + key, value)
            return
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
