"""Restoring one raw partition's stores from their changelogs, before the partition is processed.

Outputs are co-partitioned with the raw topic (events, state and dedup records of raw partition p
go to partition p of their topics), so partition p of each changelog holds exactly what the owner
of raw partition p needs. Restores read to partition EOF, never trusting high watermarks, and
never rely on the broker having compacted anything: tombstones and expiry are applied here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from processors.avro.dedupread import expiry_reader
from processors.avro.records import dedup_from_record, state_from_record
from processors.dedup import DedupStore, MemoryDedupStore, SqliteDedupStore
from processors.kafka import OFFSET_BEGINNING, Consumer
from processors.kafka.reader import read_partitions
from processors.kafka.serde import Codec
from processors.model import VerificationState
from processors.normalizer import anchor

# The restoring consumer's librdkafka settings (beside the usual ones of config.consumer): read to
# the end, never wait for more data, and keep up to a million records a partition fetched ahead
# (default 100,000), so fetching keeps ahead of the decoding. Raw read of 1M DedupRecords to EOF on
# the embedded broker: 1.9 s instead of 5.7 s, for ~150 MB more of librdkafka's memory (RSS) while
# it reads (bench/RESULTS.md, bench-restore 2026-11-30).
RESTORE_CONSUMER: dict[str, object] = {
    "enable.partition.eof": True,
    "fetch.wait.max.ms": 10,
    "queued.min.messages": 1_000_000,
}


@dataclass
class PartitionStores:
    """What the owner of one raw partition holds: its dedup keys and its verifications' states."""

    partition: int
    dedup: DedupStore
    states: dict[str, VerificationState] = field(default_factory=dict)
    expired: set[str] = field(default_factory=set)  # found expired while restoring: to tombstone
    repair_from: int = anchor.NONE  # events-topic offset from which events may lack their dedup record
    restored_keys: int = 0


def new_store(kind: str, state_dir: Path, topic: str, partition: int) -> DedupStore:
    if kind == "sqlite":
        return SqliteDedupStore(state_dir / f"dedup-{topic}-{partition}.sqlite")
    return MemoryDedupStore()


def restore(
    consumer: Consumer,
    codec: Codec,
    dedup_topic: str,
    state_topic: str,
    stores: dict[int, PartitionStores],
    now: datetime,
    timeout: float,
) -> None:
    """Fill each partition's dedup store and state table from the changelogs, all partitions at once."""
    now_s = int(now.timestamp())
    starts = [(topic, p, OFFSET_BEGINNING) for p in stores for topic in (dedup_topic, state_topic)]
    fast = expiry_reader(codec)
    for msg in read_partitions(consumer, starts, timeout):
        target = stores[msg.partition() or 0]
        value = msg.value()
        if msg.topic() == dedup_topic:
            # The key stays the UTF-8 bytes Kafka gives (the store keeps them so); checked as
            # decode() would, so a key that is not UTF-8 still fails the restore.
            raw = msg.key() or b""
            if not raw.isascii():
                raw.decode()
            if value is None:
                target.dedup.discard_utf8(raw)
                if target.expired:
                    target.expired.discard(raw.decode())
                continue
            read = fast(value)  # expires_at (ms), events_offset; None: not the plain current encoding
            if read is None:
                record = dedup_from_record(codec.decode("DedupRecord", value, dedup_topic))
                expires_s, events_offset = int(record.expires_at.timestamp()), record.events_offset
            else:
                expires_ms, events_offset = read
                expires_s = expires_ms // 1000 if expires_ms >= 0 else -(-expires_ms // 1000)  # as timestamp()
            target.repair_from = anchor.advance(target.repair_from, events_offset)
            if expires_s > now_s:
                target.dedup.add_utf8(raw, expires_s)
                if target.expired:
                    target.expired.discard(raw.decode())  # seen again after its window: live, not to tombstone
            else:
                target.dedup.discard_utf8(raw)
                target.expired.add(raw.decode())
        elif value is None:
            target.states.pop((msg.key() or b"").decode(), None)
        else:
            key = (msg.key() or b"").decode()
            target.states[key] = state_from_record(codec.decode("VerificationState", value, state_topic))
    for target in stores.values():
        target.restored_keys = len(target.dedup)
