"""What librdkafka's clients hold and wait for, checked against the processor's settings at start.

Each limit is read from the client's own configuration (so `kafka.extra` counts), with librdkafka's
default where it is not set.
"""

from __future__ import annotations

from collections.abc import Mapping

from processors.errors import ConfigError
from processors.settings import ProcessorSection

QUEUE_MESSAGES = 100_000  # librdkafka's queue.buffering.max.messages
MAX_POLL_INTERVAL_MS = 300_000  # librdkafka's max.poll.interval.ms


def check_batch_size(p: ProcessorSection, producer_conf: Mapping[str, object]) -> None:
    """A batch's outputs fit the producer's queue at once: per raw record an event or a dead letter
    and a state, and in exactly_once its dedup record too (in the same transaction). Beyond that
    the batch would not fail (every produce waits for room), but it would wait on itself."""
    per_record = 3 if p.processing_guarantee == "exactly_once" else 2
    queue = int(str(producer_conf.get("queue.buffering.max.messages", QUEUE_MESSAGES)))
    if p.batch_size * per_record > queue:
        raise ConfigError(
            f"processor.batch_size {p.batch_size} can make up to {p.batch_size * per_record} output records "
            f"per batch ({per_record} per raw record in {p.processing_guarantee}), more than the producer's queue "
            f"holds (queue.buffering.max.messages {queue}): set processor.batch_size to {queue // per_record} "
            "or less, or raise queue.buffering.max.messages in kafka.extra"
        )


def check_restore_timeout(p: ProcessorSection, consumer_conf: Mapping[str, object]) -> None:
    """A restore runs inside the group consumer's poll (on assignment): past max.poll.interval.ms
    the consumer leaves the group and its partitions go to another member while it restores them."""
    interval_ms = int(str(consumer_conf.get("max.poll.interval.ms", MAX_POLL_INTERVAL_MS)))
    if p.restore_timeout_s * 1000 >= interval_ms:
        raise ConfigError(
            f"processor.restore_timeout_s {p.restore_timeout_s:g} is not below the consumer's "
            f"max.poll.interval.ms ({interval_ms} ms): a restore that long would make the processor leave its "
            f"group mid-restore. Lower processor.restore_timeout_s under {interval_ms / 1000:g}, or raise "
            "max.poll.interval.ms in kafka.extra"
        )


def liveness_deadline(p: ProcessorSection) -> float:
    """How long the run loop may go without a beat before /livez fails. The longest legitimate gap
    is a restore (restore_timeout_s, beaten when it ends) or a batch waiting for its outputs' reports
    (each reports within delivery_timeout_s; drained in flush_timeout_s steps). A retry that
    outlasts both is stuck."""
    longest = max(p.restore_timeout_s, p.delivery_timeout_s + p.flush_timeout_s)
    if p.liveness_timeout_s is None:
        return longest + 60
    if p.liveness_timeout_s <= longest:
        raise ConfigError(
            f"processor.liveness_timeout_s {p.liveness_timeout_s:g} is not above the longest legitimate wait of "
            f"the run loop ({longest:g} s: processor.restore_timeout_s, or delivery_timeout_s + flush_timeout_s): "
            "a healthy processor would be restarted. Raise it, or leave it unset for the default"
        )
    return p.liveness_timeout_s
