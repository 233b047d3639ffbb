"""`kycstream reconcile`: find expected verifications without a final result and poll their provider;
fetch the results that callbacks only announce (processors.kafka.fetcher).

Expectations (kyc.verification.expected.v1) are a table split across reconcilers by the consumer
group; the state table (kyc.verification.state.v1) is read whole. A poll answer enters the raw
topic as a delivery with origin `poll`, so it goes through the same normalizer, dedup and state
rules as a callback: a polled result and a late callback for the same result give one event.

Every write has a delivery report, and nothing counts as done before Kafka acknowledged it: a
poll whose answer was refused stays due, so the next tick polls it again. What is finished leaves
the table as a tombstone of its expectation: the settled ones (a decision or a review in the state
table), and the closed ones once their dead letter (gave up, credential refused) is acknowledged,
so no restart or new owner of the partition polls or dead-letters them again. A crash between a
dead letter and its tombstone repeats that dead letter once, never loses it.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
import typing
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, Producer, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge

from processors import logs
from processors.avro.records import (
    dead_letter_from_record,
    delivery_to_record,
    expectation_from_record,
    state_from_record,
)
from processors.errors import SerdeError
from processors.kafka import config, reader
from processors.kafka.fetcher import Fetcher, FetchJob
from processors.kafka.producer import RenewableProducer, produce_dead_letter
from processors.kafka.serde import Codec
from processors.model import DeadLetter, Expectation, RawDelivery, VerificationStatus
from processors.pipeline import raised_at, routing_id
from processors.polling import Poller, PollOutcome, Verdict
from processors.providers import REGISTRY
from processors.settings import ReconcileSettings
from processors.state import SETTLED

log = logs.get("kycstream.reconcile")


# The reasons of the letters the reconciler writes for an expectation (read back after a restart).
_LETTER_REASONS = frozenset({b"poll_expired", b"poll_unauthorized"})


class ReconcileMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.polls = Counter(
            "kycstream_polls",
            "Status-API polls by provider and outcome.",
            ["provider", "outcome"],
            registry=self.registry,
        )
        self.open = Gauge(
            "kycstream_expectations_open", "Expected verifications without a final result.", registry=self.registry
        )
        self.token_requests = Counter(
            "kycstream_token_requests",
            "Token requests for provider APIs (OAuth2 client credentials, Incode's executive login), "
            "by provider and outcome (ok, failed).",
            ["provider", "outcome"],
            registry=self.registry,
        )
        self.undecodable = Counter(
            "kycstream_reconcile_undecodable_records",
            "Expectation, state or its own dead-letter records the reconciler could not decode and skipped, "
            "by table (expected, state, dlq; a skipped state leaves its verification looking unsettled).",
            ["table"],
            registry=self.registry,
        )
        self.fetches = Counter(
            "kycstream_fetches",
            "Result fetches after a notice, by provider and outcome (not_ready and failed are fetched again).",
            ["provider", "outcome"],
            registry=self.registry,
        )


@dataclass
class _Tracked:
    expectation: Expectation
    partition: int
    offset: int
    raw: bytes
    polls: int = 0  # polls done: their answer, if any, acknowledged by Kafka
    last_poll: datetime | None = None
    writing: bool = False  # a record for it was produced and its delivery report is not in yet
    closed: bool = False  # its dead letter is acknowledged: never polled again; a tombstone follows


class Reconciler:
    _FLUSH_TIMEOUT_S = 30.0

    def __init__(
        self,
        settings: ReconcileSettings,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self.topics = settings.topics
        self.clock = clock
        self.transport = transport
        self.codec = Codec(config.schema_registry(settings.kafka))
        self.metrics = ReconcileMetrics()
        r = settings.reconcile
        # Both tables are read with partition-EOF events: they say when a partition is read whole.
        self.expected = Consumer(
            config.consumer(settings.kafka, r.group_id, **{"session.timeout.ms": r.session_timeout_ms})
        )
        # The state topic and the DLQ, both read whole (assigned, never committed): the DLQ for the
        # letters this reconciler wrote before a crash whose expectation it had not tombstoned yet.
        self.states_reader = Consumer(config.consumer(settings.kafka, f"{r.group_id}-state"))
        self._out = RenewableProducer(config.producer(settings.kafka))  # shared with the fetcher
        self.tracked: dict[str, _Tracked] = {}
        self._assigned: set[int] = set()  # this member's partitions of the expected topic
        self._unread: set[int] = set()  # ... not read to their end since they were assigned
        self._tables_unread: set[tuple[str, int]] = set()  # state and DLQ partitions not read to their end yet
        self.lettered: set[tuple[int, int]] = set()  # (partition, offset) of expectations with a letter
        self.ticks = 0  # ticks that acted on whole tables
        for source in settings.sources.values():  # every series exists from the start, for alerts
            if source.poll is not None:
                for outcome in (*typing.get_args(Verdict), "poll_unauthorized", "poll_expired"):
                    self.metrics.polls.labels(source.provider, outcome)
        self.states: dict[str, tuple[VerificationStatus, datetime]] = {}
        # One event loop and one HTTP client for the reconciler's life: connections (and TLS
        # sessions) to each provider are reused from tick to tick.
        self._runner: asyncio.Runner | None = None
        self._client: httpx.AsyncClient | None = None
        self._pollers: dict[str, Poller] = {}  # by source; their rate limits hold across ticks
        fetch_consumer = Consumer(
            config.consumer(
                settings.kafka,
                f"{r.group_id}-fetch",
                **{"session.timeout.ms": r.session_timeout_ms, "enable.partition.eof": False},
            )
        )
        self.fetcher = Fetcher(settings, self.codec, fetch_consumer, self._out, self.metrics.fetches, clock)

    # --- the producer ------------------------------------------------------------------------------

    @property
    def producer(self) -> Producer:
        return self._out.current

    def _renew_producer_if_gone(self) -> None:
        """Replaced, the old producer's purged records report failures, so their work is done again."""
        if (old := self._out.renew_if_gone()) is not None:
            old.flush(self._FLUSH_TIMEOUT_S)

    # --- tables ------------------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The expected topic is a table: read each assigned partition whole, never commit.
        consumer.assign([TopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING) for tp in partitions])
        assigned = {tp.partition for tp in partitions}
        self._assigned |= assigned
        self._unread |= assigned
        log.info("expectations_assigned", partitions=sorted(assigned))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gone = {tp.partition for tp in partitions}
        self._assigned -= gone
        self._unread -= gone
        self.tracked = {k: t for k, t in self.tracked.items() if t.partition not in gone}
        if not self._assigned:  # no tick sets it until partitions come back
            self.metrics.open.set(0)

    def _start(self) -> None:
        self.expected.subscribe(
            [self.topics.expected], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
        )
        self.fetcher.start()
        tables = [
            (topic, p)
            for topic in (self.topics.state, self.topics.dlq)
            for p in reader.topic_partitions(self.states_reader, topic)
        ]
        self._tables_unread = set(tables)
        self.states_reader.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for topic, p in tables])

    def _drain(self) -> None:
        self.fetcher.read()
        for msg in self.expected.consume(1000, 0.2):
            if self._is_record(msg, self._unread):
                self._track(msg)
        for msg in self.states_reader.consume(10_000, 0.2):
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    self._tables_unread.discard((msg.topic() or "", msg.partition() or 0))
                else:
                    log.warning("consume_error", error=error.str())
            elif msg.topic() == self.topics.state:
                self._remember_state(msg)
            else:
                self._remember_letter(msg)

    @staticmethod
    def _is_record(msg: Message, unread: set[int]) -> bool:
        """Whether `msg` is a record; a partition-EOF event takes its partition out of `unread`."""
        error = msg.error()
        if error is None:
            return True
        if error.code() == KafkaError._PARTITION_EOF:
            unread.discard(msg.partition() or 0)
        else:
            log.warning("consume_error", error=error.str())
        return False

    def _tables_whole(self) -> bool:
        """Act only on whole tables: a partition read halfway may still hold the tombstone of an
        expectation already dead-lettered, and a state table read halfway may miss a decision."""
        return bool(self._assigned) and not self._unread and not self._tables_unread

    def _remember_state(self, msg: Message) -> None:
        key = (msg.key() or b"").decode()
        if msg.value() is None:
            self.states.pop(key, None)
            return
        try:
            state = state_from_record(self.codec.decode("VerificationState", msg.value() or b"", self.topics.state))
        except SerdeError as exc:  # our own message: schema and field, never a value
            self.metrics.undecodable.labels("state").inc()
            log.warning("state_undecodable", partition=msg.partition(), offset=msg.offset(), error=str(exc))
            return
        self.states[key] = (state.status, state.updated_at)

    def _remember_letter(self, msg: Message) -> None:
        """A letter this reconciler role wrote for an expectation (by its reason header, then its
        source): that expectation is closed, whoever wrote it, even if its tombstone never landed."""
        reason = dict(msg.headers() or []).get("kycstream-reason")
        if reason not in _LETTER_REASONS:
            return
        try:
            letter = dead_letter_from_record(self.codec.decode("DeadLetter", msg.value() or b"", self.topics.dlq))
        except SerdeError as exc:  # our own message: schema and field, never a value
            self.metrics.undecodable.labels("dlq").inc()
            log.warning("letter_undecodable", partition=msg.partition(), offset=msg.offset(), error=str(exc))
            return
        if letter.source_topic == self.topics.expected:
            self.lettered.add((letter.partition, letter.offset))

    def _track(self, msg: Message) -> None:
        key = (msg.key() or b"").decode()
        if msg.value() is None:
            self.tracked.pop(key, None)
            return
        try:
            expectation = expectation_from_record(
                self.codec.decode("Expectation", msg.value() or b"", self.topics.expected)
            )
        except SerdeError as exc:
            self.metrics.undecodable.labels("expected").inc()
            log.warning("expectation_undecodable", partition=msg.partition(), offset=msg.offset(), error=str(exc))
            return
        if key not in self.tracked or self.tracked[key].expectation != expectation:
            self.tracked[key] = _Tracked(expectation, msg.partition() or 0, msg.offset() or 0, msg.value() or b"")

    # --- decisions ----------------------------------------------------------------------------------

    def due(self, now: datetime) -> tuple[list[_Tracked], list[_Tracked]]:
        """(to poll now, to give up on now)."""
        poll, expire = [], []
        still_open = 0
        for key, tracked in self.tracked.items():
            source = self.settings.sources.get(tracked.expectation.source)
            state = self.states.get(key)
            if not tracked.closed and (tracked.partition, tracked.offset) in self.lettered:
                tracked.closed = True  # dead-lettered before a crash: tombstoned now, never lettered again
            if tracked.closed or self._settled(key):
                continue
            still_open += 1
            if tracked.writing or source is None or source.poll is None:
                continue
            e = tracked.expectation
            if now - e.expected_at >= timedelta(seconds=source.poll.give_up_after_s):
                expire.append(tracked)
                continue
            window = timedelta(seconds=e.window_s or source.poll.window_s)
            since = max(t for t in (e.expected_at, state[1] if state else None, tracked.last_poll) if t is not None)
            if now - since >= window:
                poll.append(tracked)
        self.metrics.open.set(still_open)
        return poll, expire

    def _settled(self, key: str) -> bool:
        state = self.states.get(key)
        return state is not None and state[0] in SETTLED

    def tick(self) -> None:
        if not self._tables_whole():
            return
        now = self.clock()
        to_poll, to_expire = self.due(now)
        for tracked in to_expire:
            self._dead_letter(
                tracked,
                "poll_expired",
                f"no final result from {tracked.expectation.provider} after {tracked.polls} polls since "
                f"{tracked.expectation.expected_at.isoformat()}; giving up",
            )
        if to_expire:  # closed before this tick's polls, which may take minutes (timeouts, retries)
            self._write_closings()
        if to_poll:
            if self._runner is None:
                self._runner = asyncio.Runner()
            outcomes = self._runner.run(self._poll_all(to_poll))
            for tracked, outcome in zip(to_poll, outcomes, strict=True):
                self._act(tracked, outcome, now)
        self._write_closings()
        self.ticks += 1

    def _write_closings(self) -> None:
        """Wait for what was produced, then tombstone what that finished and wait for those. One
        flush budget, shared with the tombstones of the dead letters acknowledged in the first
        flush: written at once, they leave a crash the narrowest window to repeat a letter."""
        deadline = time.monotonic() + self._FLUSH_TIMEOUT_S
        self._flush(deadline)
        self._tombstone_finished()
        self._flush(deadline)

    def _flush(self, deadline: float) -> None:
        left = self.producer.flush(max(0.0, deadline - time.monotonic()))
        if left:  # their reports come later (producer.poll); until then those expectations wait
            log.warning("reconcile_writes_not_acknowledged_yet", records=left)

    async def _poll_all(self, due: list[_Tracked]) -> list[PollOutcome]:
        """Runs on self._runner's loop, where the pollers' shared client lives."""
        return list(await asyncio.gather(*(self._poller(t.expectation.source).poll(t.expectation) for t in due)))

    def _poller(self, name: str) -> Poller:
        """The source's poller (its rate limit and concurrency), shared by polls and fetches."""
        if self._client is None:
            self._client = httpx.AsyncClient(transport=self.transport)
        if name not in self._pollers:
            source = self.settings.sources[name]
            assert source.poll is not None
            self._pollers[name] = Poller(
                REGISTRY[source.provider],
                source.poll,
                self._client,
                token_requests=self.metrics.token_requests,
                transport=self.transport,
            )
        return self._pollers[name]

    def fetch_due(self) -> None:
        """Fetch every result due now, write or reschedule each, and commit what is finished."""
        jobs = self.fetcher.due(self.clock())
        if jobs:
            if self._runner is None:
                self._runner = asyncio.Runner()
            answers = self._runner.run(self._fetch_all(jobs))
            for job, answer in zip(jobs, answers, strict=True):
                self.fetcher.act(job, answer)
        self.producer.poll(0)  # delivery reports finish fetch jobs and polls
        self.fetcher.commit()

    async def _fetch_all(self, jobs: list[FetchJob]) -> list[httpx.Response | PollOutcome]:
        return list(await asyncio.gather(*(self.fetcher.fetch(j, self._poller(j.event.source)) for j in jobs)))

    def _close_http(self) -> None:
        if self._runner is None:
            return
        for poller in self._pollers.values():
            self._runner.run(poller.aclose())
        if self._client is not None:
            self._runner.run(self._client.aclose())
        self._runner.close()
        self._runner, self._client, self._pollers = None, None, {}

    def _act(self, tracked: _Tracked, outcome: PollOutcome, now: datetime) -> None:
        e = tracked.expectation
        log.info("polled", provider=e.provider, source=e.source, outcome=outcome.verdict, http=outcome.http_status)
        done = functools.partial(self._polled, tracked, outcome.verdict, now)
        if outcome.verdict == "unauthorized":
            self._dead_letter(
                tracked,
                "poll_unauthorized",
                f"{outcome.detail}: fix the source's poll.token; this verification is not polled again",
                done,
            )
        elif outcome.verdict == "result" and outcome.body is not None:
            self._write_answer(tracked, outcome.body, now, done)
        else:  # no answer to write: the poll is done
            done()

    def _polled(self, tracked: _Tracked, verdict: Verdict, now: datetime) -> None:
        tracked.polls += 1
        tracked.last_poll = now
        self.metrics.polls.labels(tracked.expectation.provider, verdict).inc()

    def _write_answer(
        self, tracked: _Tracked, answer: dict[str, typing.Any], now: datetime, done: Callable[[], None]
    ) -> None:
        e = tracked.expectation
        body = orjson.dumps(answer)
        delivery = RawDelivery(
            request_id=str(uuid.uuid4()),
            source=e.source,
            provider=e.provider,
            method="GET",
            received_at=now,
            body=body,
            headers={"content-type": "application/json"},
            origin="poll",
        )
        key = (
            routing_id(
                e.provider,
                body,
                lambda exc: log.warning(
                    "poll_answer_unroutable", key=e.key, error=type(exc).__name__, at=raised_at(exc)
                ),
            )
            or e.key
        )
        self.producer.produce(
            self.topics.raw,
            key=key.encode(),
            value=self.codec.encode("RawDelivery", delivery_to_record(delivery), self.topics.raw),
            headers=[("kycstream-origin", b"poll")],
            on_delivery=self._delivery_report(tracked, "poll_answer", done),
        )

    def _dead_letter(
        self, tracked: _Tracked, reason: str, detail: str, poll_done: Callable[[], None] | None = None
    ) -> None:
        """Dead-letter the expectation; once Kafka has the letter, the poll that led to it (if any)
        is done and the expectation is closed."""
        e = tracked.expectation
        letter = DeadLetter(
            reason=reason,
            detail=detail,
            failed_at=self.clock(),
            source_topic=self.topics.expected,
            partition=tracked.partition,
            offset=tracked.offset,
            original_value=tracked.raw,
            original_key=e.key.encode(),
            source=e.source,
            provider=e.provider,
        )

        def written() -> None:
            if poll_done is not None:
                poll_done()
            self._close(tracked, reason)

        report = self._delivery_report(tracked, reason, written)
        produce_dead_letter(self.producer, self.codec, self.topics.dlq, letter, e.key.encode(), report)

    def _close(self, tracked: _Tracked, reason: str) -> None:
        e = tracked.expectation
        tracked.closed = True
        self.metrics.polls.labels(e.provider, reason).inc()
        log.warning("reconcile_dead_letter", provider=e.provider, source=e.source, reason=reason)

    def _tombstone_finished(self) -> None:
        """Delete the settled and the closed from the expected topic: whoever reads it next (this
        reconciler, a restarted one, a new owner of the partition) no longer tracks them."""
        for key, tracked in list(self.tracked.items()):
            if not tracked.writing and (tracked.closed or self._settled(key)):
                forget = functools.partial(self._forget, key, tracked)
                self.producer.produce(
                    self.topics.expected,
                    key=key.encode(),
                    value=None,
                    on_delivery=self._delivery_report(tracked, "tombstone", forget),
                )

    def _forget(self, key: str, tracked: _Tracked) -> None:
        # Reading the tombstone back drops it too; until then it must not be tombstoned again. A
        # newer expectation read meanwhile under the same key is not this one.
        if self.tracked.get(key) is tracked:
            del self.tracked[key]

    def _delivery_report(
        self, tracked: _Tracked, record: str, done: Callable[[], None]
    ) -> Callable[[KafkaError | None, Message], None]:
        """The delivery report of a record written for `tracked`, which counts as writing until it
        comes: `done` once Kafka has the record. A refused record changes nothing, so the next tick
        does the same work again."""
        tracked.writing = True

        def report(err: KafkaError | None, _msg: Message) -> None:
            tracked.writing = False
            if err is None:
                done()
            else:
                log.warning("reconcile_write_failed", key=tracked.expectation.key, record=record, error=err.str())
                self._out.note(err)

        return report

    def run(self, stop: threading.Event) -> None:
        self._start()
        log.info(
            "reconciler_started",
            group=self.settings.reconcile.group_id,
            sources=sorted(n for n, s in self.settings.sources.items() if s.poll),
        )
        last_tick = 0.0
        try:
            while not stop.is_set():
                self._renew_producer_if_gone()
                self._drain()
                self.fetch_due()
                if time.monotonic() - last_tick >= self.settings.reconcile.tick_s:
                    last_tick = time.monotonic()
                    self.tick()
        finally:
            self._close_http()
            if left := self.producer.flush(self._FLUSH_TIMEOUT_S):  # not counted: polled again by the next owner
                log.warning("reconciler_stopped_with_writes_unacknowledged", records=left)
            self.fetcher.commit()
            self.fetcher.close()
            self.expected.close()
            self.states_reader.close()
            log.info("reconciler_stopped")
