"""The raw partitions one processor owns: restored before use, repaired after a crash, their dedup
keys expired, released on rebalance.

A raw partition's stores (its idempotency keys and its verifications' states) are restored from
partition p of the dedup and state topics (see recovery.py). In at_least_once a crash can leave
events whose dedup records were never written; `repair` finds them in the events topic from the
anchor their dedup records carry, and writes what is missing before the partition is used.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from processors import logs, state
from processors.avro.records import dedup_record
from processors.diskstore import Memory, RocksStates
from processors.errors import BrokerError, ConfigError
from processors.kafka import AdminClient, Consumer, KafkaException, config
from processors.model import VerificationEvent, VerificationState
from processors.normalizer import anchor, recovery
from processors.normalizer.metrics import ProcessorMetrics
from processors.normalizer.outputs import Batch, DedupOutput, Outputs
from processors.probes import Health
from processors.settings import ProcessorSettings

log = logs.get("kycstream.processor")


def _epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


class PartitionOwner:
    def __init__(
        self,
        settings: ProcessorSettings,
        outputs: Outputs,
        metrics: ProcessorMetrics,
        clock: Callable[[], datetime],
        *,
        repairs: bool,
        health: Health,
    ) -> None:
        self.topics = settings.topics
        self.p = settings.processor
        self.outputs = outputs
        self.codec = outputs.codec
        self.metrics = metrics
        self.clock = clock
        self.repairs = repairs  # a transaction never leaves events without their dedup records
        self.health = health
        self.window = timedelta(seconds=self.p.dedup_window_s)
        self.owned: dict[int, recovery.PartitionStores] = {}
        self.partitions = 0  # the raw topic's partition count (check_partitions)
        on_disk = "rocksdb" in (self.p.dedup_store, self.p.state_store)
        mb = 1 << 20
        self._memory = Memory(self.p.store_block_cache_mb * mb, self.p.store_write_buffer_mb * mb) if on_disk else None
        self._admin = AdminClient(config.admin(settings.kafka, role="processor")) if on_disk else None
        self._restorer = Consumer(
            config.consumer(
                settings.kafka,
                f"{self.p.group_id}-restore",
                role="processor-restore",
                **recovery.RESTORE_CONSUMER,  # bulk reads: never wait for data, fetch far ahead
            )
        )

    def check_partitions(self) -> int:
        """Raw, events, state and dedup must have the same partition count: outputs are co-partitioned."""
        try:
            metadata = self._restorer.list_topics(timeout=10)
        except KafkaException as exc:
            raise BrokerError(f"Kafka did not answer: {exc.args[0].str()}") from exc
        counts = {}
        for name in (self.topics.raw, self.topics.events, self.topics.state, self.topics.dedup, self.topics.dlq):
            topic = metadata.topics.get(name)
            if topic is None or topic.error is not None:
                raise ConfigError(f"topic {name} does not exist: run `kycstream topics create` first")
            counts[name] = len(topic.partitions)
        raw = counts[self.topics.raw]
        wrong = {n: c for n, c in counts.items() if n != self.topics.dlq and c != raw}
        if wrong:
            raise ConfigError(
                f"{self.topics.raw} has {raw} partitions but "
                + ", ".join(f"{n} has {c}" for n, c in wrong.items())
                + ": events, state and dedup are co-partitioned with the raw topic and need the same count"
            )
        self.partitions = raw
        return raw

    def restore(self, partitions: list[int]) -> None:
        """Take ownership of raw partitions: restore their stores, then repair after a crash."""
        started = time.monotonic()
        fresh = {
            p: recovery.open_stores(self.p, self.topics, self.codec, self._memory, p)
            for p in partitions
            if p not in self.owned
        }
        if not fresh:
            return
        self.health.not_ready(f"restoring partitions {sorted(fresh)}")
        try:
            self._check_disk(fresh)
        except Exception:
            for stores in fresh.values():
                stores.close()
            raise
        # One budget for the whole restore, both reads: it runs inside the group consumer's poll,
        # and must end before max.poll.interval.ms (limits.check_restore_timeout).
        deadline = started + self.p.restore_timeout_s
        recovery.restore(
            self._restorer, self.codec, self.topics.dedup, self.topics.state, fresh, self.clock(), self._left(deadline)
        )
        self.owned.update(fresh)
        repaired = self._repair(fresh, deadline) if self.repairs else 0
        # What was restored lives as long as the partition is owned: out of the cyclic collector's
        # full passes, which otherwise rescan every state and key (~8% of the processor's time).
        gc.collect()
        gc.freeze()
        elapsed = time.monotonic() - started
        for partition, stores in fresh.items():
            stores.expired.clear()
            self.metrics.restore_seconds.labels(str(partition)).set(elapsed)
            self.metrics.dedup_keys.labels(str(partition)).set(len(stores.dedup))
        self.metrics.owned.set(len(self.owned))
        self.metrics.repaired.inc(repaired)
        self.health.beat()  # progress: the restore's gap is bounded by restore_timeout_s (limits.liveness_deadline)
        self.health.ready()
        log.info(
            "partitions_restored",
            partitions=sorted(fresh),
            keys=sum(len(s.dedup) for s in fresh.values()),
            states=sum(len(s.states) for s in fresh.values()),
            repaired=repaired,
            read=sum(s.read_records for s in fresh.values()),
            seconds=round(elapsed, 3),
        )

    def _check_disk(self, fresh: dict[int, recovery.PartitionStores]) -> None:
        """A store on disk is used from its offsets when its changelogs are the ones it was built
        from; else it is wiped, to be rebuilt. It records what it was built for."""
        on_disk = {p: s for p, s in fresh.items() if s.disk is not None}
        if not on_disk or self._admin is None:
            return
        if not self.partitions:
            self.check_partitions()
        ids = recovery.identify(self._admin, [self.topics.dedup, self.topics.state])
        for partition, stores in on_disk.items():
            assert stores.disk is not None
            why = recovery.validate(self._restorer, stores, ids, self.partitions, self.topics.dedup, self.topics.state)
            if why is not None:
                log.warning("store_rebuilt", partition=partition, why=why)
                stores.disk.wipe()
            stores.disk.commit(partitions=self.partitions, identity=ids)

    @staticmethod
    def _left(deadline: float) -> float:
        return max(0.001, deadline - time.monotonic())

    def _repair(self, fresh: dict[int, recovery.PartitionStores], deadline: float) -> int:
        """Events written without their dedup records (a crash between the two, see anchor.py):
        remember them, write their states and dedup records, and tombstone the keys found expired
        meanwhile."""
        batch = Batch()
        repaired = 0
        anchors = {p: stores.repair_from for p, stores in fresh.items()}
        dedup = {p: stores.dedup for p, stores in fresh.items()}
        for partition, offset, event in anchor.unmarked(
            self._restorer, self.codec, self.topics.events, anchors, dedup, self._left(deadline)
        ):
            if event.idempotency_key in batch.keys.get(partition, {}):
                continue
            # The state may already count it (states are acknowledged with their events).
            self.remember(fresh[partition], batch, event, count=not self.counted(fresh[partition], event))
            batch.event_offsets.setdefault(partition, []).append(offset)
            repaired += 1
        for partition, stores in fresh.items():
            self.outputs.tombstones(batch, partition, sorted(stores.expired))
        self.outputs.states(batch)
        self.outputs.flush_or_raise(batch, "restore")
        self.learn(batch)
        acked: dict[int, int] = {}
        self.outputs.write_dedup(self.dedup_records(batch, anchors=anchors), acked=acked)  # the anchors unchanged
        self.learn_keys(batch, acked)
        return repaired

    def release(self, partition: int) -> None:
        stores = self.owned.pop(partition, None)
        if stores is not None:
            stores.close()
        self.metrics.owned.set(len(self.owned))

    # --- what a batch learns -------------------------------------------------------------------------

    def remember(
        self, stores: recovery.PartitionStores, batch: Batch, event: VerificationEvent, count: bool = True
    ) -> None:
        """The batch holds the event's key, and its verification's state counting it (unless the
        restored state counts it already)."""
        p = stores.partition
        batch.keys.setdefault(p, {})[event.idempotency_key] = event
        if count:
            pending = batch.states.setdefault(p, {})
            current = pending.get(event.key) or stores.states.get(event.key)
            if batch.now is None:
                batch.now = self.clock()
            pending[event.key] = state.apply(current, event, batch.now)

    @staticmethod
    def current(stores: recovery.PartitionStores, batch: Batch, key: str) -> VerificationState | None:
        """The verification's state as of this point of the batch."""
        pending = batch.states.get(stores.partition)
        return (pending.get(key) if pending else None) or stores.states.get(key)

    def refresh(self, stores: recovery.PartitionStores, batch: Batch, event: VerificationEvent) -> None:
        """The state takes the provider time of a repeat of its own status (state.refresh)."""
        current = self.current(stores, batch, event.key)
        if current is not None:
            if batch.now is None:
                batch.now = self.clock()
            batch.states.setdefault(stores.partition, {})[event.key] = state.refresh(current, event, batch.now)

    @staticmethod
    def counted(stores: recovery.PartitionStores, event: VerificationEvent) -> bool:
        return state.counted(stores.states.get(event.key), event)

    def learn(self, batch: Batch) -> None:
        """Only acknowledged outputs are remembered, so a rewound batch is redone in full. A store
        on disk takes the states with the offset of the last state record acknowledged."""
        for partition, states in batch.states.items():
            stores = self.owned.get(partition)
            if stores is not None:
                encoded = batch.encoded_states.get(partition, {})
                if isinstance(stores.states, RocksStates) and encoded.keys() >= states.keys():
                    for key in states:  # the bytes produced: not encoded a second time
                        stores.states.put_encoded(key.encode(), encoded[key])
                else:
                    stores.states.update(states)
                if stores.states_on_disk and stores.disk is not None:
                    stores.disk.commit(state_next=batch.state_offsets[partition] + 1)

    def learn_keys(self, batch: Batch, acked: dict[int, int]) -> None:
        """The batch's new keys, once their dedup records are acknowledged (`acked`: the last
        offset per partition): a store on disk writes them with that offset and their anchor, so
        it never holds a key whose record may be missing (anchor.py)."""
        for partition, keys in batch.keys.items():
            stores = self.owned.get(partition)
            if stores is None:
                continue
            for key in keys:
                stores.dedup.add(key, batch.expires_s)
            if stores.dedup_on_disk and stores.disk is not None and partition in acked:
                stores.disk.commit(dedup_next=acked[partition] + 1, anchor=batch.anchors.get(partition))

    def dedup_records(self, batch: Batch, anchors: dict[int, int] | None = None) -> list[DedupOutput]:
        """(partition, key, encoded DedupRecord) for each new key of the batch; the store learns them
        once they are acknowledged (learn_keys). All of a batch's records share their times and,
        per partition, their events-offset anchor (`anchors`: kept as they are, else the batch's)."""
        now = self.clock()
        first_seen, expires = _epoch_ms(now), _epoch_ms(now + self.window)
        encode, topic = self.codec.encode, self.topics.dedup
        records = []
        batch.expires_s = expires // 1000
        for partition, keys in batch.keys.items():
            at = anchors[partition] if anchors is not None else anchor.for_batch(batch.event_offsets.get(partition, ()))
            if anchors is None:
                batch.anchors[partition] = at
            for key, event in keys.items():
                record = dedup_record(key, event.event_id, first_seen, expires, at)
                records.append((partition, key.encode(), encode("DedupRecord", record, topic)))
        return records

    def expire(self, batch: Batch) -> int:
        """Tombstone the idempotency keys whose window has passed; how many."""
        now_s = int(self.clock().timestamp())
        count = 0
        for partition, stores in self.owned.items():
            keys = stores.dedup.pop_expired(now_s)
            self.outputs.tombstones(batch, partition, keys)
            count += len(keys)
            self.metrics.dedup_keys.labels(str(partition)).set(len(stores.dedup))
        return count

    def close(self) -> None:
        for partition in list(self.owned):
            self.release(partition)
        self._restorer.close()
