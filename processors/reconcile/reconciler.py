"""`kycstream reconcile`: find expected verifications without a final result and poll their provider;
fetch the results that callbacks only announce (processors.reconcile.fetcher).

The main loop owns the Kafka clients and never waits for a provider: polls and fetches run on the
call thread (processors.reconcile.calls) and are acted on when they are answered. A tick starts at most
`reconcile.max_polls_per_tick` polls, oldest due first, and a poll it could not start within
`reconcile.max_tick_s` (the source's rate and concurrency) is left for the next tick; the next
tick starts once this one's polls are answered. Meanwhile the loop keeps reading its tables and
the events topic (so it stays in its groups) and fetches notices' results as soon as they come.
When a poll is done, its time is written back to the expectation (`last_polled_at`), so a
restart or a new owner of the partition polls it only when it is due again.

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

import concurrent.futures
import dataclasses
import functools
import threading
import time
import typing
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge

from processors import logs
from processors.avro.records import delivery_to_record, expectation_to_record
from processors.kafka import Consumer, KafkaError, Message, Producer, config, lag, registry
from processors.kafka.lag import LagMonitor
from processors.kafka.producer import RenewableProducer, produce, produce_dead_letter
from processors.kafka.serde import Codec
from processors.model import DeadLetter, RawDelivery
from processors.pipeline import raised_at, routing_id
from processors.probes import Health
from processors.reconcile.calls import ProviderCalls
from processors.reconcile.fetcher import Fetcher, FetchJob
from processors.reconcile.polling import PollOutcome, Verdict
from processors.reconcile.tables import Tables, Tracked
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
        self.revoked = Counter(
            "kycstream_reconcile_partitions_revoked",
            "Partitions taken from this reconciler by a rebalance or a lost membership, by group (expected, fetch).",
            ["group"],
            registry=self.registry,
        )
        self.due = Gauge(
            "kycstream_reconcile_polls_due",
            "Polls due at the last tick that it did not start (over reconcile.max_polls_per_tick): the next ones.",
            registry=self.registry,
        )
        self.consumer_lag = lag.gauge(self.registry)  # the fetch group's, on the events topic


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
        registry.require(self.codec, registry.writes(self.topics, "RawDelivery", "Expectation", "DeadLetter"))
        self.metrics = ReconcileMetrics()
        r = settings.reconcile
        self.tables = Tables(settings, self.codec, self.metrics.undecodable, self.metrics.open, self.metrics.revoked)
        self._out = RenewableProducer(config.producer(settings.kafka, role="reconciler"))  # shared with the fetcher
        self.ticks = 0  # ticks that acted on whole tables
        self._more_due = False  # the last tick left due polls for the next one
        # A tick's flushes hold up the loop: well under the groups' poll interval.
        self._flush_budget_s = min(self._FLUSH_TIMEOUT_S, r.max_poll_interval_ms / 1000 / 3)
        self.health = Health(r.liveness_timeout_s)  # beaten by the run loop; ready once its tables are whole
        for source in settings.sources.values():  # every series exists from the start, for alerts
            if source.poll is not None:
                for outcome in (*typing.get_args(Verdict), "poll_unauthorized", "poll_expired"):
                    self.metrics.polls.labels(source.provider, outcome)
        self.calls = ProviderCalls(settings, self.metrics.token_requests, transport)
        self._polls: dict[concurrent.futures.Future[PollOutcome | None], Tracked] = {}  # this tick's
        self._fetches: dict[concurrent.futures.Future[httpx.Response | PollOutcome], FetchJob] = {}
        fetch_consumer = Consumer(
            config.consumer(
                settings.kafka,
                f"{r.group_id}-fetch",
                role="reconciler-fetch",
                **{
                    "session.timeout.ms": r.session_timeout_ms,
                    "max.poll.interval.ms": r.max_poll_interval_ms,
                    "enable.partition.eof": False,
                },
            )
        )
        self.fetcher = Fetcher(
            settings, self.codec, fetch_consumer, self._out, self.metrics.fetches, clock, self.metrics.revoked
        )
        # Only the fetch group commits: the expected group reads its table whole and never commits.
        groups = {f"{r.group_id}-fetch": [settings.topics.events]} if self.fetcher.active else {}
        self.lag = LagMonitor(settings.kafka, groups, self.metrics.consumer_lag, role="reconciler")

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
        """(to poll now, to give up on now), each the longest due first."""
        poll: list[tuple[datetime, Tracked]] = []
        expire: list[tuple[datetime, Tracked]] = []
        still_open = 0
        for key, tracked in self.tables.tracked.items():
            source = self.settings.sources.get(tracked.expectation.source)
            state = self.tables.states.get(key)
            if not tracked.closed and (tracked.partition, tracked.offset) in self.tables.lettered:
                tracked.closed = True  # dead-lettered before a crash: tombstoned now, never lettered again
            if tracked.closed or self.tables.settled(key):
                continue
            still_open += 1
            if tracked.writing or tracked.polling or source is None or source.poll is None:
                continue
            e = tracked.expectation
            give_up_at = e.expected_at + timedelta(seconds=source.poll.give_up_after_s)
            if now >= give_up_at:
                expire.append((give_up_at, tracked))
                continue
            window = timedelta(seconds=e.window_s or source.poll.window_s)
            since = max(t for t in (e.expected_at, state[1] if state else None, tracked.last_poll) if t is not None)
            if now - since >= window:
                poll.append((since + window, tracked))
        self.metrics.open.set(still_open)
        return _oldest_first(poll), _oldest_first(expire)

    def tick(self) -> None:
        """Give up on what is past its time and start the polls due now: at most
        `max_polls_per_tick` of the two together, the longest due first; the rest next tick."""
        if not self.tables.whole():
            return
        to_poll, to_expire = self.due(self.clock())
        bound = self.settings.reconcile.max_polls_per_tick
        self._more_due = len(to_poll) + len(to_expire) > bound
        self.metrics.due.set(max(0, len(to_poll) + len(to_expire) - bound))
        to_expire = to_expire[:bound]
        to_poll = to_poll[: bound - len(to_expire)]
        for tracked in to_expire:
            self._dead_letter(
                tracked,
                "poll_expired",
                f"no final result from {tracked.expectation.provider} after {tracked.polls} polls since "
                f"{tracked.expectation.expected_at.isoformat()}; giving up",
            )
        self._write_closings()
        deadline = time.monotonic() + self.settings.reconcile.max_tick_s
        for tracked in to_poll:
            tracked.polling = True
            self._polls[self.calls.poll(tracked.expectation, deadline)] = tracked
        self.ticks += 1

    def _tick_due(self, last_tick: float) -> bool:
        """Once this tick's polls are all answered: at once when it left due polls, else every tick_s."""
        if self._polls:
            return False
        return self._more_due or time.monotonic() - last_tick >= self.settings.reconcile.tick_s

    def _act_on_polls(self) -> None:
        """Act on the polls answered since the last turn (or not started within the tick's time)."""
        for future in [f for f in self._polls if f.done()]:
            tracked = self._polls.pop(future)
            tracked.polling = False
            outcome = future.result()
            if outcome is not None and self.tables.tracked.get(tracked.expectation.key) is tracked:
                self._act(tracked, outcome, self.clock())

    def _write_closings(self) -> None:
        """Wait for what was produced, then tombstone what that finished (and write back poll times)
        and wait for those. One flush budget, shared with the tombstones of the dead letters
        acknowledged in the first flush: written at once, they leave a crash the narrowest window to
        repeat a letter. The budget is well under the groups' poll interval: what is not acknowledged
        by then is finished by its delivery report, and tombstoned at the next tick."""
        deadline = time.monotonic() + self._flush_budget_s
        self._flush(deadline)
        self._tombstone_finished()
        self._flush(deadline)

    def _flush(self, deadline: float) -> None:
        left = self.producer.flush(max(0.0, deadline - time.monotonic()))
        if left:  # their reports come later (producer.poll); until then those expectations wait
            log.warning("reconcile_writes_not_acknowledged_yet", records=left)

    def fetch_due(self) -> None:
        """Start every fetch due now, write or reschedule each answered one, and commit what is
        finished. Fetches do not wait for a tick: they are started on the loop's every turn."""
        for job in self.fetcher.due(self.clock()):
            job.fetching = True
            self._fetches[self.calls.call(job.event.source, functools.partial(self.fetcher.fetch, job))] = job
        for future in [f for f in self._fetches if f.done()]:
            job = self._fetches.pop(future)
            job.fetching = False
            answer = future.result()
            if self.fetcher.jobs.get((job.partition, job.offset)) is job:  # not revoked meanwhile
                self.fetcher.act(job, answer)
        self.producer.poll(0)  # delivery reports finish fetch jobs and polls
        self.fetcher.commit()

    def _stop_calls(self) -> None:
        self.calls.close()
        self._polls, self._fetches = {}, {}

    def _act(self, tracked: Tracked, outcome: PollOutcome, now: datetime) -> None:
        e = tracked.expectation
        log.info("polled", provider=e.provider, source=e.source, outcome=outcome.verdict, http=outcome.http_status)

        def done() -> None:
            self._polled(tracked, outcome.verdict, now)

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
        tracked.saved = False
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
            on_delivery=self._delivery_report(tracked, "poll_answer", lambda _msg: done()),
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

        def written(_msg: Message) -> None:
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
        reconciler, a restarted one, a new owner of the partition) no longer tracks them. Write the
        others' poll times back, so that whoever reads it next knows when each was last polled."""
        for key, tracked in list(self.tables.tracked.items()):
            if tracked.writing:
                continue
            if tracked.closed or self.tables.settled(key):
                forget = functools.partial(self._forget, key, tracked)
                produce(
                    self.producer,
                    self.topics.expected,
                    None,
                    key.encode(),
                    on_delivery=self._delivery_report(tracked, "tombstone", forget),
                )
            elif not tracked.saved:
                self._save_poll_time(key, tracked)

    def _save_poll_time(self, key: str, tracked: Tracked) -> None:
        record = dataclasses.replace(tracked.expectation, last_polled_at=tracked.last_poll, polls=tracked.polls)
        value = self.codec.encode("Expectation", expectation_to_record(record), self.topics.expected)

        def saved(msg: Message) -> None:
            # A dead letter names the table's latest record: this one now.
            tracked.expectation, tracked.raw = record, value
            tracked.partition, tracked.offset = msg.partition() or 0, msg.offset() or 0
            tracked.saved = tracked.last_poll == record.last_polled_at  # else polled again meanwhile

        produce(
            self.producer,
            self.topics.expected,
            value,
            key.encode(),
            on_delivery=self._delivery_report(tracked, "poll_time", saved),
        )

    def _forget(self, key: str, tracked: Tracked, _msg: Message) -> None:
        # Reading the tombstone back drops it too; until then it must not be tombstoned again. A
        # newer expectation read meanwhile under the same key is not this one.
        if self.tables.tracked.get(key) is tracked:
            del self.tables.tracked[key]

    def _delivery_report(
        self, tracked: Tracked, record: str, done: Callable[[Message], None]
    ) -> Callable[[KafkaError | None, Message], None]:
        """The delivery report of a record written for `tracked`, which counts as writing until it
        comes: `done` once Kafka has the record. A refused record changes nothing, so the next tick
        does the same work again."""
        tracked.writing = True

        def report(err: KafkaError | None, msg: Message) -> None:
            tracked.writing = False
            if err is None:
                done(msg)
            else:
                log.warning("reconcile_write_failed", key=tracked.expectation.key, record=record, error=err.str())
                self._out.note(err)

        return report

    def run(self, stop: threading.Event) -> None:
        self.tables.start()
        self.fetcher.start()
        self.lag.start()
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
                self._act_on_polls()
                if self._tick_due(last_tick):
                    last_tick = time.monotonic()
                    self.tick()
        finally:
            self._stop_calls()
            if left := self.producer.flush(self._FLUSH_TIMEOUT_S):  # not counted: polled again by the next owner
                log.warning("reconciler_stopped_with_writes_unacknowledged", records=left)
            self.fetcher.commit()
            self.fetcher.close()
            self.tables.close()
            self.lag.close()
            log.info("reconciler_stopped")


def _oldest_first(due: list[tuple[datetime, Tracked]]) -> list[Tracked]:
    return [tracked for _, tracked in sorted(due, key=lambda d: d[0])]
