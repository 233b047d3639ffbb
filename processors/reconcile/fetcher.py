"""Results a callback does not carry: fetched at once when the notice's event is written.

The fetcher follows the events topic (its own consumer group). An event its provider declares a
notice (`FETCHES`: Incode's ONBOARDING_FINISHED -> the score) becomes a job: call the provider's
result API, and write the answer to the raw topic as a delivery of origin `fetch`, keyed like the
notice, so it goes through the same normalizer, dedup and state rules as a callback. An answer
that is not ready yet is fetched again with backoff, up to the source's `fetch_give_up_after_s`.

Offsets of the events topic are committed only below the oldest unfinished job: a restart,
a rebalance or a second reconciler fetches again what was not written yet, and the same answer
has the same idempotency key, so it never makes a second decision.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
import orjson
from prometheus_client import Counter

from processors import logs
from processors.avro.records import delivery_to_record, event_from_record
from processors.errors import ConfigError, SerdeError
from processors.kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from processors.kafka.producer import RenewableProducer, produce, produce_dead_letter
from processors.kafka.serde import Codec
from processors.model import (
    FETCH_ID_HEADER,
    FETCH_KIND_HEADER,
    FETCH_NOTICE_AT_HEADER,
    DeadLetter,
    NotReady,
    RawDelivery,
    VerificationEvent,
)
from processors.providers import REGISTRY, Fetching, fetching
from processors.reconcile.polling import Poller, PollOutcome
from processors.remedies import explain
from processors.settings import ReconcileSettings

log = logs.get("kycstream.fetch")

OUTCOMES = ("result", "not_ready", "failed", "credential_failed", "fetch_unauthorized", "fetch_failed", "fetch_expired")
_MAX_BACKOFF_S = 300.0


@dataclass
class FetchJob:
    event: VerificationEvent
    kind: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    first_at: datetime
    next_at: datetime
    tries: int = 0
    writing: bool = False  # produced, waiting for its delivery report
    fetching: bool = False  # its call was started and its answer not acted on yet


def fetcher_sources(settings: ReconcileSettings) -> dict[str, Fetching]:
    """Sources whose provider fetches results and which have API credentials; ConfigError when a
    credential the fetch needs is missing."""
    found = {}
    for name, source in settings.sources.items():
        module = REGISTRY.get(source.provider)
        fetcher = fetching(module) if module is not None else None
        if fetcher is None or source.poll is None:
            continue
        missing = fetcher.fetch_missing(source.poll.credentials())
        login = source.poll.executive_login
        if login is not None and login.credentials()[1]:  # a login obtains the token; its password read now
            missing = None
        if missing:
            field = missing.split(" ", 1)[0]
            raise ConfigError(
                f"sources.{name}.poll.{field}: required to fetch {source.provider} results: {missing} "
                f"(set it in the file or with KYCSTREAM_SOURCES__{name.upper()}__POLL__{field.upper()})"
            )
        found[name] = fetcher
    return found


class Fetcher:
    def __init__(
        self,
        settings: ReconcileSettings,
        codec: Codec,
        consumer: Consumer,
        producer: RenewableProducer,
        fetches: Counter,
        clock: Callable[[], datetime],
        revoked: Counter | None = None,
    ) -> None:
        """`consumer`: of group `<reconcile.group_id>-fetch`; `fetches`: by provider and outcome;
        `revoked`: partitions taken from this member, by group (`fetch` here)."""
        self.settings = settings
        self.topics = settings.topics
        self.codec = codec
        self.consumer = consumer
        self._out = producer  # the reconciler's: replaced when it is gone
        self.fetches = fetches
        self.clock = clock
        self.revoked = revoked
        self.sources = fetcher_sources(settings)
        for name in self.sources:
            for outcome in OUTCOMES:  # every series exists from the start, for alerts
                fetches.labels(settings.sources[name].provider, outcome)
        self.jobs: dict[tuple[int, int], FetchJob] = {}  # (partition, offset) of the notice -> its job
        self._seen: dict[int, int] = {}  # partition -> next offset after the last event read
        self._committed: dict[int, int] = {}

    @property
    def producer(self) -> Producer:
        return self._out.current

    @property
    def active(self) -> bool:
        return bool(self.sources)

    def start(self) -> None:
        if self.active:
            self.consumer.subscribe(
                [self.topics.events], on_revoke=self._on_revoke, on_lost=self._on_revoke, on_assign=self._on_assign
            )

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("fetch_partitions_assigned", partitions=[tp.partition for tp in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Unfinished jobs are uncommitted: the partition's next owner fetches them again.
        gone = {tp.partition for tp in partitions}
        if self.revoked is not None:
            self.revoked.labels("fetch").inc(len(gone))
        self.jobs = {at: job for at, job in self.jobs.items() if at[0] not in gone}
        for partition in gone:
            self._seen.pop(partition, None)
            self._committed.pop(partition, None)

    # --- reading notices -----------------------------------------------------------------------

    def read(self, timeout: float = 0.1) -> None:
        if not self.active:
            return
        try:
            messages = self.consumer.consume(500, timeout)
        except KafkaException as exc:
            log.warning("fetch_consume_failed", error=exc.args[0].str())
            return
        for msg in messages:
            error = msg.error()
            if error is not None:
                log.warning("fetch_consume_error", error=error.str())
                continue
            partition, offset = msg.partition() or 0, msg.offset() or 0
            self._seen[partition] = offset + 1
            job = self._job(msg, partition, offset)
            if job is not None:
                self.jobs[(partition, offset)] = job

    def _job(self, msg: Message, partition: int, offset: int) -> FetchJob | None:
        try:
            event = event_from_record(self.codec.decode("VerificationEvent", msg.value() or b"", self.topics.events))
        except SerdeError as exc:
            log.warning("fetch_event_undecodable", partition=partition, offset=offset, error=str(exc))
            return None
        fetcher = self.sources.get(event.source)
        kind = fetcher.FETCHES.get(event.provider_status) if fetcher is not None else None
        if kind is None:
            return None
        now = self.clock()
        return FetchJob(event, kind, partition, offset, msg.key(), msg.value() or b"", now, now)

    # --- fetching ------------------------------------------------------------------------------

    def due(self, now: datetime) -> list[FetchJob]:
        return [job for job in self.jobs.values() if not (job.writing or job.fetching) and job.next_at <= now]

    async def fetch(self, job: FetchJob, poller: Poller) -> httpx.Response | PollOutcome:
        fetcher, e = self.sources[job.event.source], job.event
        return await poller.call_with(lambda c: fetcher.fetch_request(job.kind, e.verification_id, c))

    def act(self, job: FetchJob, answer: httpx.Response | PollOutcome) -> None:
        """Write a ready answer, schedule a retry, or dead-letter the notice with the reason."""
        provider = job.event.provider
        poll = self.settings.sources[job.event.source].poll
        assert poll is not None
        job.tries += 1
        if isinstance(answer, PollOutcome):  # no answer after the call's own retries, or no credential
            self._retry(job, answer.verdict, answer.detail, poll.fetch_backoff_s, poll.fetch_give_up_after_s)
            return
        code = answer.status_code
        if code in (401, 403):
            self._dead_letter(
                job,
                "fetch_unauthorized",
                f"the {provider} API refused the credential (HTTP {code})",
            )
            return
        if code == 404 or (code < 300 and not answer.content.strip()):
            self._retry(
                job, "not_ready", f"HTTP {code}, no result yet", poll.fetch_backoff_s, poll.fetch_give_up_after_s
            )
            return
        if code >= 300:
            self._dead_letter(job, "fetch_failed", f"the {provider} API answered HTTP {code}")
            return
        ready = self._classify(job, answer.content)
        if isinstance(ready, NotReady):
            self._retry(job, "not_ready", ready.detail, poll.fetch_backoff_s, poll.fetch_give_up_after_s)
            return
        self._write(job, answer)

    def _classify(self, job: FetchJob, body: bytes) -> NotReady | None:
        """NotReady when the answer parses and says so; anything else is written and normalized
        like a callback (a wrong answer lands in the DLQ with its reason)."""
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(doc, Mapping):
            return None
        try:
            result = self.sources[job.event.source].normalize_fetched(job.kind, job.event.verification_id, doc)
        except Exception:  # a provider bug: write it, the processor dead-letters it with the reason
            return None
        return result if isinstance(result, NotReady) else None

    def _retry(self, job: FetchJob, outcome: str, detail: str, backoff_s: float, give_up_after_s: int) -> None:
        now = self.clock()
        self.fetches.labels(job.event.provider, outcome).inc()
        if now - job.first_at >= timedelta(seconds=give_up_after_s):
            self._dead_letter(
                job,
                "fetch_expired",
                f"{job.kind} still unavailable after {job.tries} fetches since {job.first_at.isoformat()} ({detail})",
            )
            return
        wait = min(backoff_s * 2 ** (job.tries - 1), _MAX_BACKOFF_S)
        job.next_at = now + timedelta(seconds=wait)
        log.info("fetch_retry", provider=job.event.provider, outcome=outcome, tries=job.tries, in_s=wait)

    def _write(self, job: FetchJob, answer: httpx.Response) -> None:
        e = job.event
        delivery = RawDelivery(
            request_id=str(uuid.uuid4()),
            source=e.source,
            provider=e.provider,
            method="GET",
            received_at=self.clock(),
            body=answer.content,
            headers={
                "content-type": answer.headers.get("content-type", "application/json"),
                FETCH_KIND_HEADER: job.kind,
                FETCH_ID_HEADER: e.verification_id,
                FETCH_NOTICE_AT_HEADER: (e.occurred_at or e.received_at).isoformat(timespec="milliseconds"),
            },
            content_type=answer.headers.get("content-type"),
            origin="fetch",
        )
        job.writing = True
        produce(
            self.producer,
            self.topics.raw,
            self.codec.encode("RawDelivery", delivery_to_record(delivery), self.topics.raw),
            e.key.encode(),
            headers=[("kycstream-origin", b"fetch")],
            on_delivery=lambda err, msg: self._written(job, err, "result"),
        )

    def _dead_letter(self, job: FetchJob, reason: str, detail: str) -> None:
        e = job.event
        letter = DeadLetter(
            reason=reason,
            detail=explain(reason, detail),
            failed_at=self.clock(),
            source_topic=self.topics.events,
            partition=job.partition,
            offset=job.offset,
            original_value=job.value,
            original_key=job.key,
            source=e.source,
            provider=e.provider,
        )
        job.writing = True
        on_delivery = lambda err, msg: self._written(job, err, reason)  # noqa: E731
        produce_dead_letter(self.producer, self.codec, self.topics.dlq, letter, job.key, on_delivery)
        log.warning("fetch_dead_letter", provider=e.provider, source=e.source, reason=reason)

    def _written(self, job: FetchJob, err: KafkaError | None, outcome: str) -> None:
        job.writing = False
        if err is not None:  # not written: the job stays and is tried again
            log.warning("fetch_write_failed", error=err.str())
            return
        self.jobs.pop((job.partition, job.offset), None)
        self.fetches.labels(job.event.provider, outcome).inc()
        log.info("fetched", provider=job.event.provider, kind=job.kind, outcome=outcome, tries=job.tries)

    # --- progress ------------------------------------------------------------------------------

    def commit(self) -> None:
        """Commit each partition below its oldest unfinished job (or past everything read)."""
        if not self.active:
            return
        oldest: dict[int, int] = {}
        for partition, offset in self.jobs:
            oldest[partition] = min(offset, oldest.get(partition, offset))
        offsets = []
        for partition, seen in self._seen.items():
            upto = oldest.get(partition, seen)
            if self._committed.get(partition) != upto:
                offsets.append(TopicPartition(self.topics.events, partition, upto))
        if not offsets:
            return
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            log.warning("fetch_commit_failed", error=exc.args[0].str())
            return
        for tp in offsets:
            self._committed[tp.partition] = tp.offset

    def close(self) -> None:
        self.consumer.close()
