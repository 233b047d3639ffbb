"""`kycstream reconcile`: find expected verifications without a final result and poll their provider;
fetch the results that callbacks only announce (processors.kafka.fetcher).

Expectations (kyc.verification.expected.v1) are a table split across reconcilers by the consumer
group; the state table (kyc.verification.state.v1) is read whole. A poll answer enters the raw
topic as a delivery with origin `poll`, so it goes through the same normalizer, dedup and state
rules as a callback: a polled result and a late callback for the same result give one event.
"""

from __future__ import annotations

import asyncio
import threading
import time
import typing
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, Producer, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge

from processors import logs
from processors.errors import SerdeError
from processors.kafka import config, reader
from processors.kafka.fetcher import Fetcher, FetchJob
from processors.kafka.producer import produce_dead_letter
from processors.kafka.serde import (
    Codec,
    delivery_to_record,
    expectation_from_record,
    state_from_record,
)
from processors.model import DeadLetter, Expectation, RawDelivery, VerificationStatus
from processors.pipeline import routing_id
from processors.polling import Poller, PollOutcome, Verdict
from processors.providers import REGISTRY
from processors.settings import ReconcileSettings
from processors.state import SETTLED

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
    polls: int = 0
    last_poll: datetime | None = None
    closed: bool = False  # gave up, or the provider refused our credential: never polled again


class Reconciler:
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
        self.expected = Consumer(
            config.consumer(
                settings.kafka,
                r.group_id,
                **{"session.timeout.ms": r.session_timeout_ms, "enable.partition.eof": False},
            )
        )
        self.states_reader = Consumer(
            config.consumer(settings.kafka, f"{r.group_id}-state", **{"enable.partition.eof": False})
        )
        self.producer = Producer(config.producer(settings.kafka))
        self.tracked: dict[str, _Tracked] = {}
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
        self.fetcher = Fetcher(settings, self.codec, fetch_consumer, self.producer, self.metrics.fetches, clock)

    # --- tables ------------------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The expected topic is a table: read each assigned partition whole, never commit.
        consumer.assign([TopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING) for tp in partitions])
        log.info("expectations_assigned", partitions=[tp.partition for tp in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gone = {tp.partition for tp in partitions}
        self.tracked = {k: t for k, t in self.tracked.items() if t.partition not in gone}

    def _start(self) -> None:
        self.expected.subscribe(
            [self.topics.expected], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
        )
        self.fetcher.start()
        state = self.topics.state
        partitions = reader.topic_partitions(self.states_reader, state)
        self.states_reader.assign([TopicPartition(state, p, OFFSET_BEGINNING) for p in partitions])

    def _drain(self) -> None:
        self.fetcher.read()
        for msg in self.expected.consume(1000, 0.2):
            if self._usable(msg):
                self._track(msg)
        for msg in self.states_reader.consume(10_000, 0.2):
            if self._usable(msg):
                key = (msg.key() or b"").decode()
                if msg.value() is None:
                    self.states.pop(key, None)
                    continue
                try:
                    state = state_from_record(
                        self.codec.decode("VerificationState", msg.value() or b"", self.topics.state)
                    )
                except SerdeError:
                    continue
                self.states[key] = (state.status, state.updated_at)

    @staticmethod
    def _usable(msg: Message) -> bool:
        error = msg.error()
        if error is not None:  # both consumers run without partition-EOF events
            log.warning("consume_error", error=error.str())
        return error is None

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
            if tracked.closed or (state is not None and state[0] in SETTLED):
                continue
            still_open += 1
            if source is None or source.poll is None:
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
        now = self.clock()
        to_poll, to_expire = self.due(now)
        for tracked in to_expire:
            self._dead_letter(
                tracked,
                "poll_expired",
                f"no final result from {tracked.expectation.provider} after {tracked.polls} polls since "
                f"{tracked.expectation.expected_at.isoformat()}; giving up",
            )
        if to_poll:
            if self._runner is None:
                self._runner = asyncio.Runner()
            outcomes = self._runner.run(self._poll_all(to_poll))
            for tracked, outcome in zip(to_poll, outcomes, strict=True):
                self._act(tracked, outcome, now)
        if to_poll or to_expire:
            self.producer.flush(30)

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
            self._pollers[name] = Poller(REGISTRY[source.provider], source.poll, self._client)
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
        self.producer.poll(0)  # delivery reports finish jobs
        self.fetcher.commit()

    async def _fetch_all(self, jobs: list[FetchJob]) -> list[httpx.Response | PollOutcome]:
        return list(await asyncio.gather(*(self.fetcher.fetch(j, self._poller(j.event.source)) for j in jobs)))

    def _close_http(self) -> None:
        if self._runner is None:
            return
        if self._client is not None:
            self._runner.run(self._client.aclose())
        self._runner.close()
        self._runner, self._client, self._pollers = None, None, {}

    def _act(self, tracked: _Tracked, outcome: PollOutcome, now: datetime) -> None:
        e = tracked.expectation
        tracked.polls += 1
        tracked.last_poll = now
        self.metrics.polls.labels(e.provider, outcome.verdict).inc()
        log.info("polled", provider=e.provider, source=e.source, outcome=outcome.verdict, http=outcome.http_status)
        if outcome.verdict == "unauthorized":
            self._dead_letter(
                tracked,
                "poll_unauthorized",
                f"{outcome.detail}: fix the source's poll.token; this verification is not polled again",
            )
            return
        if outcome.verdict != "result" or outcome.body is None:
            return
        body = orjson.dumps(outcome.body)
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
        key = routing_id(e.provider, body) or e.key
        self.producer.produce(
            self.topics.raw,
            key=key.encode(),
            value=self.codec.encode("RawDelivery", delivery_to_record(delivery), self.topics.raw),
            headers=[("kycstream-origin", b"poll")],
        )

    def _dead_letter(self, tracked: _Tracked, reason: str, detail: str) -> None:
        tracked.closed = True
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
        produce_dead_letter(self.producer, self.codec, self.topics.dlq, letter, e.key.encode())
        self.metrics.polls.labels(e.provider, reason).inc()
        log.warning("reconcile_dead_letter", provider=e.provider, source=e.source, reason=reason)

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
                self._drain()
                self.fetch_due()
                if time.monotonic() - last_tick >= self.settings.reconcile.tick_s:
                    last_tick = time.monotonic()
                    self.tick()
        finally:
            self._close_http()
            self.producer.flush(30)
            self.fetcher.commit()
            self.fetcher.close()
            self.expected.close()
            self.states_reader.close()
            log.info("reconciler_stopped")
