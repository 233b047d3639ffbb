"""Producing: an asyncio-facing producer whose awaits end at each record's own delivery report.

Concurrent requests share librdkafka's batches (linger.ms); nobody flushes per record. Delivery
reports are served on the event loop's own thread (poll(0) on a short timer while records are in
flight), so each report settles its future in place: no thread hop, no GIL hand-off per record.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from processors import logs
from processors.avro.records import dead_letter_to_record
from processors.errors import BrokerError
from processors.kafka.serde import Codec
from processors.model import DeadLetter

log = logs.get("kycstream.producer")


@dataclass(frozen=True, slots=True)
class Delivered:
    topic: str
    partition: int
    offset: int


class ProduceTimeout(BrokerError):
    """Kafka did not acknowledge in time; the caller should answer 503 so the sender retries."""


class AsyncProducer:
    """Wraps a confluent-kafka Producer for asyncio.

    While records are in flight, a timer on the running loop calls poll(0) every
    `poll_interval_s`; the delivery callbacks it runs settle the awaiting futures directly. (A
    thread serving poll() and handing each report to the loop with call_soon_threadsafe cost a GIL
    hand-off per record: most of the gateway's throughput and tens of ms of latency under load.)
    """

    def __init__(self, conf: dict[str, Any], timeout_s: float = 5.0, poll_interval_s: float = 0.001) -> None:
        self._slot = RenewableProducer(conf)
        self._retired: list[Producer] = []  # replaced producers whose purged records still report
        self._interval = poll_interval_s
        self._timeout = timeout_s
        # (deadline, future) in send order; one timeout for all, so deadlines are in order too and
        # the tick expires from the left (a timer per record cost more than the produce call).
        self._deadlines: collections.deque[tuple[float, asyncio.Future[Delivered]]] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    async def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | str | None = None,
        headers: list[tuple[str, str | bytes | None]] | None = None,
    ) -> Delivered:
        """Produce one record; returns once Kafka acknowledged it, raises BrokerError (ProduceTimeout
        past `timeout_s`) when it did not."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Delivered] = loop.create_future()
        if (old := self._slot.renew_if_gone()) is not None:  # its records were already answered 503
            self._retired.append(old)
        try:
            self._slot.current.produce(
                topic, value=value, key=key, headers=headers, on_delivery=partial(self._settle, future)
            )
        except BufferError as exc:
            raise BrokerError("the producer queue is full: Kafka is not keeping up") from exc
        except KafkaException as exc:
            raise BrokerError(f"Kafka refused the record: {exc.args[0].str()}") from exc
        self._deadlines.append((loop.time() + self._timeout, future))
        if self._timer is None or self._loop is not loop:
            self._loop = loop
            self._timer = loop.call_later(self._interval, self._tick)
        return await future

    def _tick(self) -> None:
        """Serve the delivery reports that have arrived; go on ticking while records are in flight."""
        self._timer = None
        if self._closed or self._loop is None:
            return
        self._slot.current.poll(0)
        for old in list(self._retired):
            old.poll(0)
            if len(old) == 0:
                self._retired.remove(old)
        deadlines, now = self._deadlines, self._loop.time()
        while deadlines and (deadlines[0][1].done() or deadlines[0][0] <= now):
            _, future = deadlines.popleft()
            if not future.done():
                future.set_exception(ProduceTimeout(f"Kafka did not acknowledge within {self._timeout:g}s"))
        # len(): records whose delivery report has not been served yet (librdkafka counts them)
        if len(self._slot.current) or self._retired or deadlines:
            self._timer = self._loop.call_later(self._interval, self._tick)

    def _settle(self, future: asyncio.Future[Delivered], err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._slot.note(err)
        if future.done():  # timed out, or the request went away
            return
        loop = future.get_loop()
        if asyncio._get_running_loop() is loop:  # served by _tick on the loop's thread: settle in place
            _resolve(future, err, msg)
        else:  # served by close()'s flush from another thread
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody awaits the future
                loop.call_soon_threadsafe(_resolve, future, err, msg)

    def list_topics(self, timeout: float) -> dict[str, int]:
        try:
            metadata = self._slot.current.list_topics(timeout=timeout)
        except KafkaException as exc:
            raise BrokerError(f"Kafka did not answer within {timeout:g}s") from exc
        return {name: len(t.partitions) for name, t in metadata.topics.items() if not t.error}

    def close(self, timeout: float = 10.0) -> int:
        """Deliver what is queued (up to `timeout`) and stop; returns the records left undelivered."""
        left = int(self._slot.current.flush(timeout))
        self._closed = True
        return left


_GONE = frozenset(
    code
    for name in ("PRODUCER_FENCED", "INVALID_PRODUCER_EPOCH", "UNKNOWN_PRODUCER_ID", "_FENCED", "_FATAL")
    if (code := getattr(KafkaError, name, None)) is not None
)


def producer_gone(err: KafkaError) -> bool:
    """After this delivery error the producer instance never delivers again: it must be replaced."""
    return bool(err.fatal()) or err.code() in _GONE


class RenewableProducer:
    """One confluent-kafka Producer, replaced once it is gone for good.

    A fenced or fatally failed idempotent producer fails every record from then on (seen on the
    embedded broker once records timed out in an outage). The error callback, and whoever reads a
    delivery report (`note`), mark it gone; its owner calls `renew_if_gone` between units of work,
    which starts a new producer and hands back the old one purged: the old one's records report
    failures, so the work they carried is done again (or was already answered).
    """

    def __init__(self, conf: dict[str, Any], *, transactional: bool = False) -> None:
        self._conf = {**conf, "error_cb": self._on_error}
        self._transactional = transactional
        self.gone = False
        self.current = self._start()

    def _start(self) -> Producer:
        producer = Producer(self._conf)
        if self._transactional:
            producer.init_transactions(30)
        return producer

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self.gone = True

    def note(self, err: KafkaError) -> None:
        """A delivery report's error: marks the producer gone when it never delivers again."""
        if producer_gone(err):
            self.gone = True

    def renew_if_gone(self) -> Producer | None:
        """The old producer, purged (its reports still to be served by the caller), or None."""
        if not self.gone:
            return None
        self.gone = False
        old, self.current = self.current, self._start()
        old.purge(in_queue=True, in_flight=True, blocking=False)
        log.warning("producer_replaced")
        return old


def _resolve(future: asyncio.Future[Delivered], err: KafkaError | None, msg: Message) -> None:
    if future.done():
        return
    if err is not None:
        future.set_exception(BrokerError(f"Kafka rejected the record: {err.str()}"))
    else:
        future.set_result(Delivered(msg.topic() or "", msg.partition() or 0, msg.offset() or 0))


_QUEUE_FULL_POLL_S = 0.1  # poll() returns as soon as a report is served: this is the longest wait


def produce(
    producer: Producer,
    topic: str,
    value: bytes | None,
    key: bytes | None = None,
    *,
    partition: int | None = None,
    headers: list[tuple[str, str | bytes | None]] | None = None,
    on_delivery: Callable[[KafkaError | None, Message], None] | None = None,
    timestamp: int = 0,
) -> None:
    """producer.produce(), waiting while librdkafka's local queue is full instead of raising.
    `timestamp` (ms): the record's time, 0 for now (a copy keeps its original's).

    The queue holds `queue.buffering.max.messages` records (100,000 by default) until their delivery
    reports are served; a loop producing more than that at once (a backlog's expired keys, a
    restore's repairs, a replay) gets BufferError. Serving reports (poll) is what empties it, so
    that is what the wait does, as quix-streams' RowProducer does. Each queued record reports within
    its message timeout, delivered or failed, so the wait ends even while Kafka is away. Every loop
    that produces goes through here; only the gateway's request path refuses at once (503) instead.
    """
    kwargs: dict[str, Any] = {"on_delivery": on_delivery}
    if partition is not None:  # confluent-kafka takes no None for it
        kwargs["partition"] = partition
    if headers is not None:
        kwargs["headers"] = headers
    if timestamp:
        kwargs["timestamp"] = timestamp
    while True:
        try:
            producer.produce(topic, value, key, **kwargs)
            return
        except BufferError:
            producer.poll(_QUEUE_FULL_POLL_S)


# A dead letter copies its original record so it can be redriven; one whose copy would not fit in a
# record (raw records up to the producer's limit, plus the letter's own fields) keeps this prefix,
# its original's size (DeadLetter.original_size) and where it is (source_topic, partition, offset).
_ORIGINAL_PREFIX = 16 * 1024


def produce_dead_letter(
    producer: Producer,
    codec: Codec,
    topic: str,
    letter: DeadLetter,
    key: bytes | None,
    on_delivery: Callable[[KafkaError | None, Message], None] | None = None,
) -> None:
    """A dead letter, Avro-encoded, its reason also in the `kycstream-reason` header (for filters)."""
    try:
        produce(
            producer,
            topic,
            codec.encode("DeadLetter", dead_letter_to_record(letter), topic),
            key,
            headers=[("kycstream-reason", letter.reason.encode())],
            on_delivery=on_delivery,
        )
    except KafkaException as exc:  # librdkafka measures the record before queueing it
        if exc.args[0].code() != KafkaError.MSG_SIZE_TOO_LARGE or letter.original_size is not None:
            raise
        size = len(letter.original_value)
        log.warning(
            "dead_letter_original_cut",
            topic=letter.source_topic,
            partition=letter.partition,
            offset=letter.offset,
            original_size=size,
            kept=_ORIGINAL_PREFIX,
        )
        cut = dataclasses.replace(letter, original_value=letter.original_value[:_ORIGINAL_PREFIX], original_size=size)
        produce_dead_letter(producer, codec, topic, cut, key, on_delivery)


# librdkafka's reckoning of a record against the producer's `message.max.bytes`
# (rd_kafka_msg_max_wire_size): a v2 record's largest framing (length 5, attributes 1, timestamp
# delta 10, offset delta 5, key length 5, value length 5, header count 5) plus key, value and each
# header's varint-framed name and value. Past it produce() refuses with MSG_SIZE_TOO_LARGE, so a
# delivery measured with it is refused (413) before anything is produced or spooled.
_RECORD_FRAMING = 36
_DEFAULT_MAX_RECORD = 1_000_000  # librdkafka's message.max.bytes


def record_bytes(key: bytes, value: bytes, headers: Sequence[tuple[str, bytes]]) -> int:
    """A record's size as librdkafka checks it against `message.max.bytes`."""
    size = _RECORD_FRAMING + len(key) + len(value)
    for name, data in headers:
        encoded = name.encode()
        size += varint_size(len(encoded)) + len(encoded) + varint_size(len(data)) + len(data)
    return size


def max_record_bytes(conf: dict[str, Any]) -> int:
    """The largest record a producer built from `conf` sends (kafka.extra may set message.max.bytes)."""
    return int(conf.get("message.max.bytes", _DEFAULT_MAX_RECORD))


def varint_size(n: int) -> int:
    """Bytes of n as a zigzag varint (Kafka's record fields and Avro's lengths alike)."""
    z, size = n << 1, 1
    while z >= 0x80:
        z >>= 7
        size += 1
    return size
