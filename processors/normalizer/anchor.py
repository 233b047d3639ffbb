"""The at-least-once anchor: how a crash between a batch's events and their dedup records loses
nothing and repeats nothing (processing_guarantee at_least_once; transactions need none of it).

The invariant, per raw partition p: every event in partition p of the events topic below offset
A(p) has its dedup record in partition p of the dedup topic, where A(p) is the greatest anchor the
dedup records of p carry.

- commit (`for_batch`): a batch's events and states are acknowledged first; only then are its dedup
  records produced, each carrying the lowest events offset the batch wrote to p. Once they are
  acknowledged the invariant holds past the batch; until then the anchor stays where it was.
- restore (`advance`): the anchor of p is the greatest anchor among the dedup records read back.
- repair (`unmarked`): the events of p from the anchor on whose keys the restored store lacks are
  the ones a crash left without their records; the owner remembers them and writes their records
  with the anchor unchanged (they are below no new anchor until then).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Protocol

from processors.avro.records import event_from_record
from processors.kafka import Consumer
from processors.kafka.reader import read_partitions
from processors.kafka.serde import Codec
from processors.model import VerificationEvent

NONE = -1  # no anchor yet: read the events partition from its beginning


class _Keys(Protocol):
    def __contains__(self, key: str) -> bool: ...


def for_batch(event_offsets: Iterable[int]) -> int:
    """The anchor a batch's dedup records of one partition carry: its lowest events offset there."""
    return min(event_offsets, default=NONE)


def advance(anchor: int, carried: int) -> int:
    """The partition's anchor once a dedup record carrying `carried` is read back."""
    return carried if carried > anchor else anchor


def unmarked(
    consumer: Consumer,
    codec: Codec,
    topic: str,
    anchors: Mapping[int, int],
    stores: Mapping[int, _Keys],
    timeout: float,
) -> Iterator[tuple[int, int, VerificationEvent]]:
    """(partition, offset, event) of the events from each partition's anchor on whose idempotency key
    its store lacks: written, but a crash came before their dedup records."""
    starts = [(topic, p, anchor) for p, anchor in anchors.items()]
    for msg in read_partitions(consumer, starts, timeout):
        if msg.value() is None:
            continue
        event = event_from_record(codec.decode("VerificationEvent", msg.value() or b"", topic))
        if event.idempotency_key not in stores[msg.partition() or 0]:
            yield msg.partition() or 0, msg.offset() or 0, event
