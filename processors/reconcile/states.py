"""The verifications' states, as the reconciler reads them by key: whether one is settled, and when
it last changed. Every reconciler reads the whole state topic (tables.py); where it keeps it is a
setting, `reconcile.state_store`:

  memory   a dict of every verification ever seen: memory grows with the table (the embedded default).
  rocksdb  one RocksDB per partition of the state topic under `reconcile.state_dir`, with the offset
           it reflects, written in one batch with the data (diskstore.py, the processor's store):
           memory bounded by two settings, not by the table, and a restart reads only the tail.
           A store whose topic was recreated (another topic id) or truncated past its offset is
           wiped and read again from the beginning.

Lookups ask every partition's store (a key's state sits in the partition of its raw delivery):
each absent key is answered by a bloom filter, without reading a block.
"""

from __future__ import annotations

from datetime import datetime

from processors import logs
from processors.avro.records import state_from_record
from processors.diskstore import Memory, PartitionDB
from processors.kafka import OFFSET_BEGINNING, AdminClient, Consumer, TopicPartition, config, topics
from processors.kafka.serde import Codec
from processors.model import VerificationState, VerificationStatus
from processors.settings import ReconcileSettings

log = logs.get("kycstream.reconcile")

Known = tuple[VerificationStatus, datetime]  # what the reconciler needs of a state
_COMMIT_EVERY = 10_000  # records a store holds pending before it writes them with their offset


class States:
    """A state table in memory (the default) or, with `rocksdb`, on disk per partition."""

    def __init__(self, settings: ReconcileSettings, codec: Codec) -> None:
        r = settings.reconcile
        self.topic = settings.topics.state
        self.codec = codec
        self._memory: dict[str, Known] = {}
        self._disk: dict[int, PartitionDB] = {}
        self._pending: dict[int, int] = {}  # partition -> records read since its store's last commit
        self._reached: dict[int, int] = {}  # partition -> next offset to write with its store's commit
        self._ids: dict[str, str] = {}
        self.records_read = 0  # since the start: all of the table, or a store's tail
        self._root = r.state_dir / "rocksdb" / "reconciler" / self.topic if r.state_store == "rocksdb" else None
        self._settings = settings
        if self._root is not None:
            mb = 1 << 20
            self._rocks_memory = Memory(r.store_block_cache_mb * mb, r.store_write_buffer_mb * mb)

    def starts(self, consumer: Consumer, partitions: list[int]) -> list[TopicPartition]:
        """Where to read each partition from: the beginning, or the offset its store on disk reflects."""
        if self._root is None:
            return [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions]
        admin = AdminClient(config.admin(self._settings.kafka, role="reconciler"))
        self._ids = topics.topic_ids(admin, [self.topic])
        return [TopicPartition(self.topic, p, self._open(consumer, p)) for p in partitions]

    def _open(self, consumer: Consumer, partition: int) -> int:
        assert self._root is not None
        db = PartitionDB(self._root / str(partition), self._rocks_memory, _unused_encoder, self._decode)
        self._disk[partition] = db
        cp = db.checkpoint
        why = None
        if cp.state_next and cp.identity.get(self.topic) != self._ids.get(self.topic):
            why = f"{self.topic} is not the topic the store was built from (its id changed: recreated)"
        elif cp.state_next:
            low, _ = consumer.get_watermark_offsets(TopicPartition(self.topic, partition), timeout=10, cached=False)
            if cp.state_next < low:
                why = f"{self.topic}[{partition}] starts at {low}, after the store's offset {cp.state_next}"
        if why is not None:
            log.warning("store_rebuilt", table="state", partition=partition, reason=why)
            db.wipe()
            return OFFSET_BEGINNING
        log.info("store_opened", table="state", partition=partition, offset=cp.state_next, states=len(db.states))
        return cp.state_next or OFFSET_BEGINNING

    def put(
        self, partition: int, offset: int, key: bytes, value: bytes | None, state: VerificationState | None
    ) -> None:
        """A record of the state topic: `state` its decoded value (None: a tombstone)."""
        self.records_read += 1
        db = self._disk.get(partition)
        if db is None:
            if state is None:
                self._memory.pop(key.decode(), None)
            else:
                self._memory[key.decode()] = (state.status, state.updated_at)
            return
        db.states.put_encoded(key, value if state is not None else None)
        self._reached[partition] = offset + 1
        self._pending[partition] = self._pending.get(partition, 0) + 1
        if self._pending[partition] >= _COMMIT_EVERY:
            self.commit(partition)

    def commit(self, partition: int) -> None:
        """Write what was read of `partition` with the offset it reached (a partition read to its end)."""
        db = self._disk.get(partition)
        if db is not None and self._pending.pop(partition, 0):
            db.commit(state_next=self._reached[partition], identity=self._ids)

    def get(self, key: str) -> Known | None:
        if not self._disk:
            return self._memory.get(key)
        found = [s for db in self._disk.values() if (s := db.states.get(key)) is not None]
        if not found:
            return None
        latest = max(found, key=lambda s: s.updated_at)
        return latest.status, latest.updated_at

    def close(self) -> None:
        for partition, db in self._disk.items():
            self.commit(partition)
            db.close()

    def _decode(self, raw: bytes) -> VerificationState:
        return state_from_record(self.codec.decode("VerificationState", raw, self.topic))


def _unused_encoder(state: VerificationState) -> bytes:
    raise AssertionError("the reconciler writes the state topic's records as read, never encodes one")
