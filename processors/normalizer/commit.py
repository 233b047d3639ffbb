"""How a batch's outputs become durable before its raw offsets are committed: one interface, two
guarantees.

at_least_once (default, any broker), per batch:
  1. produce events, states and dead letters; wait for every acknowledgement. Any failure rewinds
     the consumer to the batch start and takes the batch's partitions over again, as after a crash.
  2. remember the batch's states, then produce their dedup records (each carrying the anchor:
     "every event below offset X of this partition has its record", anchor.py); retried until
     acknowledged; then remember the keys. A store on disk writes each with the changelog offset
     acknowledged, so it never reflects more than Kafka holds.
  3. the caller commits the offsets.
A crash between 1 and 2 leaves events without dedup records; the next owner of the partition
finds them by reading the events partition from X on restore (PartitionOwner.repair), so a
replayed delivery is still recognised: every event is written once (by event_id), none is lost.

exactly_once (real Kafka): the same outputs and the offsets in one transaction per batch; the
stores learn its states and keys once it committed. An aborted transaction rewinds and takes the
batch's partitions over again.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import ClassVar, Protocol

from prometheus_client import Counter

from processors import logs
from processors.kafka import Consumer, KafkaException, TopicPartition
from processors.normalizer.outputs import Batch, Outputs
from processors.normalizer.owner import PartitionOwner

log = logs.get("kycstream.processor")


class CommitStrategy(Protocol):
    repairs: ClassVar[bool]  # whether a restore must look for events without their dedup records

    def begin(self) -> None:
        """Before the batch's first output."""

    def finish(self, batch: Batch, consumer: Consumer | None, stop: threading.Event) -> list[TopicPartition] | None:
        """Make the batch durable. None when it is not (the consumer was rewound to redo it); else
        the offsets the caller commits next (none when the transaction committed them)."""

    def aside(self, write: Callable[[Batch], int]) -> int:
        """Outputs outside any raw batch (expired keys' tombstones): `write` produces them."""


class _Strategy:
    def __init__(self, outputs: Outputs, owner: PartitionOwner, retries: Counter) -> None:
        self.outputs = outputs
        self.owner = owner
        self.retries = retries
        self.p = outputs.p

    def _take_over_again(self, batch: Batch, consumer: Consumer | None, why: str) -> None:
        """Some outputs may have been written, others not: as after a crash, rewind to the batch
        start and restore the batch's partitions (the restore finds what did land); the redo skips
        what is already written. The restore raises if Kafka is still away: restart, restore then."""
        partitions = batch.partitions
        for partition in partitions:
            self.owner.release(partition)
        self._rewind(batch, consumer, why)
        self.outputs.renew_if_gone()
        self.owner.restore(partitions)

    def _rewind(self, batch: Batch, consumer: Consumer | None, why: str) -> None:
        self.retries.inc()
        log.warning("batch_rewound", why=why)
        if consumer is not None:
            for tp in batch.start_offsets():
                consumer.seek(tp)
        time.sleep(self.p.retry_backoff_s)


class AtLeastOnce(_Strategy):
    repairs: ClassVar[bool] = True

    def begin(self) -> None:
        pass

    def finish(self, batch: Batch, consumer: Consumer | None, stop: threading.Event) -> list[TopicPartition] | None:
        if not batch.last:
            return []
        self.outputs.states(batch)
        if self.outputs.drain(stop):
            return None  # stopping with outputs in doubt: uncommitted, the next owner repairs
        if batch.errors:
            for err in batch.errors:
                self.outputs.note(err)
            self._take_over_again(batch, consumer, f"outputs failed: {batch.failures[:3]}")
            return None
        self.owner.learn(batch)
        acked: dict[int, int] = {}
        if not self.outputs.write_dedup(self.owner.dedup_records(batch), stop, acked):
            return None
        self.owner.learn_keys(batch, acked)
        return batch.next_offsets()

    def aside(self, write: Callable[[Batch], int]) -> int:
        count = write(Batch())
        if count:
            self.outputs.producer.flush(self.p.flush_timeout_s)
        return count


class ExactlyOnce(_Strategy):
    repairs: ClassVar[bool] = False  # a transaction never leaves events without their dedup records

    def begin(self) -> None:
        self.outputs.producer.begin_transaction()

    def finish(self, batch: Batch, consumer: Consumer | None, stop: threading.Event) -> list[TopicPartition] | None:
        producer = self.outputs.producer
        try:
            self.outputs.states(batch)
            acked: dict[int, int] = {}
            self.outputs.dedup_in_transaction(self.owner.dedup_records(batch), acked)
            if consumer is not None:
                producer.send_offsets_to_transaction(batch.next_offsets(), consumer.consumer_group_metadata(), 30)
            producer.commit_transaction(self.p.flush_timeout_s)
        except KafkaException as exc:
            with contextlib.suppress(KafkaException):
                producer.abort_transaction(30)
            self._take_over_again(batch, consumer, f"transaction aborted: {exc.args[0].str()}")
            return None
        self.owner.learn(batch)
        self.owner.learn_keys(batch, acked)
        return []

    def aside(self, write: Callable[[Batch], int]) -> int:
        self.begin()
        count = write(Batch())
        self.outputs.producer.commit_transaction(self.p.flush_timeout_s)
        return count
