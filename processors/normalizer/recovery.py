"""Restoring one raw partition's stores from their changelogs, before the partition is processed.

Outputs are co-partitioned with the raw topic (events, state and dedup records of raw partition p
go to partition p of their topics), so partition p of each changelog holds exactly what the owner
of raw partition p needs. Restores read to partition EOF, never trusting high watermarks, and
never rely on the broker having compacted anything: tombstones and expiry are applied here.

A store on disk (rocksdb) reads only the tail, from the offsets it reflects, when its changelogs
are the ones it was built from (their topic ids, checked with `identify`) and still hold those
offsets; otherwise it is wiped and rebuilt from the beginning.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from processors import logs
from processors.avro.dedupread import ExpiryReader, expiry_reader
from processors.avro.records import dedup_from_record, state_from_record, state_to_record
from processors.dedup import DedupStore, MemoryDedupStore, SqliteDedupStore
from processors.diskstore import READ_CACHE, Memory, PartitionDB, RocksDedupStore, RocksStates
from processors.errors import ConfigError
from processors.kafka import (
    OFFSET_BEGINNING,
    AdminClient,
    Consumer,
    Message,
    TopicPartition,
    topics,
)
from processors.kafka.reader import read_batches
from processors.kafka.serde import Codec
from processors.model import VerificationState
from processors.normalizer import anchor
from processors.settings import ProcessorSection, TopicSettings

log = logs.get("kycstream.processor")

# A disk store commits what it restored every this many records: a restore cut short by a crash
# or a timeout goes on from there next time. A rebuild's batch holds them meanwhile (~12 MB).
_RESTORE_COMMIT_EVERY = 50_000

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
    states: dict[str, VerificationState] | RocksStates = field(default_factory=dict)
    expired: set[str] = field(default_factory=set)  # found expired while restoring: to tombstone
    repair_from: int = anchor.NONE  # events-topic offset from which events may lack their dedup record
    restored_keys: int = 0
    disk: PartitionDB | None = None  # the store on disk, when dedup or states live there
    read_records: int = 0  # changelog records the restore read (all of them, or a disk store's tail)

    @property
    def dedup_on_disk(self) -> bool:
        return self.disk is not None and self.dedup is self.disk.dedup

    @property
    def states_on_disk(self) -> bool:
        return self.disk is not None and self.states is self.disk.states

    def close(self) -> None:
        self.dedup.close()
        if self.disk is not None:
            self.disk.close()


def new_store(kind: str, state_dir: Path, topic: str, partition: int) -> DedupStore:
    if kind == "sqlite":
        return SqliteDedupStore(state_dir / f"dedup-{topic}-{partition}.sqlite")
    return MemoryDedupStore()


def disk_path(state_dir: Path, topics: TopicSettings, partition: int) -> Path:
    return state_dir / "rocksdb" / topics.dedup / str(partition)


def open_stores(
    p: ProcessorSection, topics: TopicSettings, codec: Codec, memory: Memory | None, partition: int
) -> PartitionStores:
    """The stores of one raw partition, of the kinds the settings choose."""
    if memory is None:
        return PartitionStores(partition, new_store(p.dedup_store, p.state_dir, topics.dedup, partition))
    disk = PartitionDB(
        disk_path(p.state_dir, topics, partition),
        memory,
        lambda s: codec.encode("VerificationState", state_to_record(s), topics.state),
        lambda raw: state_from_record(codec.decode("VerificationState", raw, topics.state)),
        read_cache=READ_CACHE,
    )
    dedup = disk.dedup if p.dedup_store == "rocksdb" else new_store(p.dedup_store, p.state_dir, topics.dedup, partition)
    states: dict[str, VerificationState] | RocksStates = disk.states if p.state_store == "rocksdb" else {}
    return PartitionStores(partition, dedup, states, disk=disk)


def identify(admin: AdminClient, names: list[str], timeout: float = 10) -> dict[str, str]:
    """Each topic's id: a topic deleted and created again under the same name has a new one."""
    return topics.topic_ids(admin, names, timeout)


def validate(
    consumer: Consumer,
    stores: PartitionStores,
    ids: dict[str, str],
    partitions: int,
    dedup_topic: str,
    state_topic: str,
) -> str | None:
    """Why the store on disk cannot be trusted (it is then wiped), or None. Raises when it was built
    for another partition count: its keys belong to other partitions now (docs/runbook.md)."""
    disk = stores.disk
    assert disk is not None
    cp = disk.checkpoint
    if cp.partitions and cp.partitions != partitions:
        raise ConfigError(
            f"the store at {disk.path} was built for {cp.partitions} partitions and the topics have "
            f"{partitions} now: keys moved between partitions. Grow into a new set of topics instead "
            "(`kycstream partitions grow --to N`, docs/runbook.md, growing partitions), or delete "
            "processor.state_dir to start over"
        )
    if not cp.identity:
        return None if (cp.dedup_next, cp.state_next) == (0, 0) else "no changelog identity recorded"
    for topic, next_offset in ((dedup_topic, cp.dedup_next), (state_topic, cp.state_next)):
        if cp.identity.get(topic) != ids.get(topic):
            return f"{topic} is not the topic the store was built from (its id changed: recreated)"
        # Only the low watermark: the embedded broker's high watermark under-reports (reader.py),
        # and a recreated topic is told by its id.
        low, _ = consumer.get_watermark_offsets(TopicPartition(topic, stores.partition), timeout=10, cached=False)
        if next_offset < low:
            return f"{topic}[{stores.partition}] starts at {low}, after the store's offset {next_offset} (truncated)"
    return None


def restore(
    consumer: Consumer,
    codec: Codec,
    dedup_topic: str,
    state_topic: str,
    stores: dict[int, PartitionStores],
    now: datetime,
    timeout: float,
) -> None:
    """Fill each partition's dedup store and state table from the changelogs, all partitions at once:
    from the beginning, or from the offsets a store on disk reflects."""
    now_s = int(now.timestamp())
    starts = []
    for p, target in stores.items():
        if target.disk is not None:
            target.disk.begin_rebuild()  # an empty store takes the changelogs as they come (diskstore.py)
        cp = target.disk.checkpoint if target.disk is not None else None
        if cp is not None and target.dedup_on_disk:
            target.repair_from = cp.anchor
        starts.append((dedup_topic, p, cp.dedup_next if cp and target.dedup_on_disk else OFFSET_BEGINNING))
        starts.append((state_topic, p, cp.state_next if cp and target.states_on_disk else OFFSET_BEGINNING))
    reached: dict[tuple[str, int], int] = {}
    committed = dict.fromkeys(stores, 0)  # read_records at each disk store's last commit
    fast = expiry_reader(codec)
    for batch in read_batches(consumer, starts, timeout):
        for topic, partition, run in _runs(batch):
            target = stores[partition]
            target.read_records += len(run)
            if topic == dedup_topic:
                _apply_dedup(target, run, now_s, fast, codec, dedup_topic)
            else:
                _apply_states(target, run, codec, state_topic)
            if target.disk is not None:
                reached[(topic, partition)] = (run[-1].offset() or 0) + 1
                if target.read_records - committed[partition] >= _RESTORE_COMMIT_EVERY:
                    committed[partition] = target.read_records
                    _commit_restored(target, reached, dedup_topic, state_topic)
    for target in stores.values():
        if target.disk is not None:
            _commit_restored(target, reached, dedup_topic, state_topic, last=True)
        target.restored_keys = len(target.dedup)


def _runs(batch: list[Message]) -> Iterator[tuple[str, int, list[Message]]]:
    """The batch in runs of one changelog partition's records, in order: usually one run, as
    partitions are fetched in turn (told by two list comprehensions rather than a loop)."""
    partitions = [msg.partition() or 0 for msg in batch]
    topics_ = [msg.topic() or "" for msg in batch]
    if partitions.count(partitions[0]) == len(batch) and topics_.count(topics_[0]) == len(batch):
        yield topics_[0], partitions[0], batch
        return
    first = 0
    for i in range(1, len(batch) + 1):
        if i == len(batch) or partitions[i] != partitions[first] or topics_[i] != topics_[first]:
            yield topics_[first], partitions[first], batch[first:i]
            first = i


def _apply_dedup(
    target: PartitionStores, run: list[Message], now_s: int, fast: ExpiryReader, codec: Codec, topic: str
) -> None:
    """A run of one dedup changelog partition's records: live keys added, tombstoned and expired
    ones removed (the expired listed to tombstone), the anchor advanced."""
    add: Callable[[bytes, int], None] = target.dedup.add_utf8
    discard, expired = target.dedup.discard_utf8, target.expired
    if isinstance(target.dedup, RocksDedupStore):
        add = target.dedup.rebuild_adder() or add  # the rebuild's batch written directly (diskstore.py)
    repair = target.repair_from
    for msg in run:
        # The key stays the UTF-8 bytes Kafka gives (the store keeps them so); checked as
        # decode() would, so a key that is not UTF-8 still fails the restore.
        raw = msg.key() or b""
        if not raw.isascii():
            raw.decode()
        value = msg.value()
        if value is None:
            discard(raw)
            if expired:
                expired.discard(raw.decode())
            continue
        read = fast(value)  # expires_at (ms), events_offset; None: not the plain current encoding
        if read is None:
            record = dedup_from_record(codec.decode("DedupRecord", value, topic))
            expires_s, events_offset = int(record.expires_at.timestamp()), record.events_offset
        else:
            expires_ms, events_offset = read
            expires_s = expires_ms // 1000 if expires_ms >= 0 else -(-expires_ms // 1000)  # as timestamp()
        if events_offset > repair:  # anchor.advance, inline: a rebuild reads millions
            repair = events_offset
        if expires_s > now_s:
            add(raw, expires_s)
            if expired:
                expired.discard(raw.decode())  # seen again after its window: live, not to tombstone
        else:
            discard(raw)
            expired.add(raw.decode())
    target.repair_from = repair


def _apply_states(target: PartitionStores, run: list[Message], codec: Codec, topic: str) -> None:
    states = target.states
    for msg in run:
        if isinstance(states, RocksStates):
            states.put_encoded(msg.key() or b"", msg.value())  # kept encoded: decoded when read
        elif (value := msg.value()) is None:
            states.pop((msg.key() or b"").decode(), None)
        else:
            states[(msg.key() or b"").decode()] = state_from_record(codec.decode("VerificationState", value, topic))


def _commit_restored(
    target: PartitionStores,
    reached: dict[tuple[str, int], int],
    dedup_topic: str,
    state_topic: str,
    *,
    last: bool = False,
) -> None:
    assert target.disk is not None
    p = target.partition
    (target.disk.end_rebuild if last else target.disk.commit)(
        dedup_next=reached.get((dedup_topic, p)) if target.dedup_on_disk else None,
        state_next=reached.get((state_topic, p)) if target.states_on_disk else None,
        anchor=target.repair_from if target.dedup_on_disk else None,
    )
