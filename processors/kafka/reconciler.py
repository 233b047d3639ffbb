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
so no restart or new owner of the partition polls or dead-letters them again; a crash between a
dead letter and its tombstone is covered by reading the DLQ back (tables.py).
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
import typing
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import orjson
from confluent_kafka import Consumer, KafkaError, Message, Producer
from prometheus_client import CollectorRegistry, Counter, Gauge

from processors import logs
from processors.avro.records import (
    delivery_to_record,
)
from processors.kafka import config
from processors.kafka.fetcher import Fetcher, FetchJob
from processors.kafka.producer import RenewableProducer, produce, produce_dead_letter
from processors.kafka.serde import Codec
from processors.kafka.tables import Tables, Tracked
from processors.model import DeadLetter, RawDelivery
from processors.pipeline import raised_at, routing_id
from processors.polling import Poller, PollOutcome, Verdict
from processors.probes import Health
from processors.providers import REGISTRY
from processors.remedies import explain
from processors.settings import ReconcileSettings

log = logs.get("kycstream.reconcile")


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
        self.tables = Tables(settings, self.codec, self.metrics.undecodable, self.metrics.open)
        self._out = RenewableProducer(config.producer(settings.kafka, role="reconciler"))  # shared with the fetcher
        self.ticks = 0  # ticks that acted on whole tables
        self.health = Health(r.liveness_timeout_s)  # beaten by the run loop; ready once its tables are whole
        for source in settings.sources.values():  # every series exists from the start, for alerts
            if source.poll is not None:
                for outcome in (*typing.get_args(Verdict), "poll_unauthorized", "poll_expired"):
                    self.metrics.polls.labels(source.provider, outcome)
        # One event loop and one HTTP client for the reconciler's life: connections (and TLS
        # sessions) to each provider are reused from tick to tick.
        self._runner: asyncio.Runner | None = None
        self._client: httpx.AsyncClient | None = None
        self._pollers: dict[str, Poller] = {}  # by source; their rate limits hold across ticks
        fetch_consumer = Consumer(
            config.consumer(
                settings.kafka,
                f"{r.group_id}-fetch",
                role="reconciler-fetch",
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

    # --- decisions ----------------------------------------------------------------------------------

    def due(self, now: datetime) -> tuple[list[Tracked], list[Tracked]]:
        """(to poll now, to give up on now)."""
        poll, expire = [], []
        still_open = 0
        for key, tracked in self.tables.tracked.items():
            source = self.settings.sources.get(tracked.expectation.source)
            state = self.tables.states.get(key)
            if not tracked.closed and (tracked.partition, tracked.offset) in self.tables.lettered:
                tracked.closed = True  # dead-lettered before a crash: tombstoned now, never lettered again
            if tracked.closed or self.tables.settled(key):
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

    def tick(self) -> None:
        if not self.tables.whole():
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

    async def _poll_all(self, due: list[Tracked]) -> list[PollOutcome]:
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

    def _act(self, tracked: Tracked, outcome: PollOutcome, now: datetime) -> None:
        e = tracked.expectation
        log.info("polled", provider=e.provider, source=e.source, outcome=outcome.verdict, http=outcome.http_status)
        done = functools.partial(self._polled, tracked, outcome.verdict, now)
        if outcome.verdict == "unauthorized":
            self._dead_letter(
                tracked,
                "poll_unauthorized",
                outcome.detail,
                done,
            )
        elif outcome.verdict == "result" and outcome.body is not None:
            self._write_answer(tracked, outcome.body, now, done)
        else:  # no answer to write: the poll is done
            done()

    def _polled(self, tracked: Tracked, verdict: Verdict, now: datetime) -> None:
        tracked.polls += 1
        tracked.last_poll = now
        self.metrics.polls.labels(tracked.expectation.provider, verdict).inc()

    def _write_answer(
        self, tracked: Tracked, answer: dict[str, typing.Any], now: datetime, done: Callable[[], None]
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
        produce(
            self.producer,
            self.topics.raw,
            self.codec.encode("RawDelivery", delivery_to_record(delivery), self.topics.raw),
            key.encode(),
            headers=[("kycstream-origin", b"poll")],
            on_delivery=self._delivery_report(tracked, "poll_answer", done),
        )

    def _dead_letter(
        self, tracked: Tracked, reason: str, detail: str, poll_done: Callable[[], None] | None = None
    ) -> None:
        """Dead-letter the expectation; once Kafka has the letter, the poll that led to it (if any)
        is done and the expectation is closed."""
        e = tracked.expectation
        letter = DeadLetter(
            reason=reason,
            detail=explain(reason, detail),
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

    def _close(self, tracked: Tracked, reason: str) -> None:
        e = tracked.expectation
        tracked.closed = True
        self.metrics.polls.labels(e.provider, reason).inc()
        log.warning("reconcile_dead_letter", provider=e.provider, source=e.source, reason=reason)

    def _tombstone_finished(self) -> None:
        """Delete the settled and the closed from the expected topic: whoever reads it next (this
        reconciler, a restarted one, a new owner of the partition) no longer tracks them."""
        for key, tracked in list(self.tables.tracked.items()):
            if not tracked.writing and (tracked.closed or self.tables.settled(key)):
                forget = functools.partial(self._forget, key, tracked)
                produce(
                    self.producer,
                    self.topics.expected,
                    None,
                    key.encode(),
                    on_delivery=self._delivery_report(tracked, "tombstone", forget),
                )

    def _forget(self, key: str, tracked: Tracked) -> None:
        # Reading the tombstone back drops it too; until then it must not be tombstoned again. A
        # newer expectation read meanwhile under the same key is not this one.
        if self.tables.tracked.get(key) is tracked:
            del self.tables.tracked[key]

    def _delivery_report(
        self, tracked: Tracked, record: str, done: Callable[[], None]
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
        self.tables.start()
        self.fetcher.start()
        log.info(
            "reconciler_started",
            group=self.settings.reconcile.group_id,
            sources=sorted(n for n, s in self.settings.sources.items() if s.poll),
        )
        last_tick = 0.0
        try:
            while not stop.is_set():
                self.health.beat()
                if self.tables.whole():
                    self.health.ready()
                else:
                    self.health.not_ready("reading its tables")
                self._renew_producer_if_gone()
                self.fetcher.read()
                self.tables.read()
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
            self.tables.close()
            log.info("reconciler_stopped")
