"""The spool's forwarder: sends a spooling source's journal (journal.py) to the raw topic, in order,
as soon as Kafka answers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from gateway.spool.journal import Spool, Spooled
from processors import logs
from processors.kafka import KafkaError, KafkaException, Message, Producer, config
from processors.kafka.producer import produce
from processors.pipeline import raised_at
from processors.settings import KafkaSettings

log = logs.get("kycstream.gateway")


# Kafka refuses these records however often they are sent: they are quarantined, not retried.
_REFUSED_FOR_GOOD = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_MSG_SIZE,
        KafkaError.INVALID_RECORD,
        KafkaError._INVALID_ARG,
    }
)


# While Kafka is away every delivery of a spooling source is spooled, so the forwarder looks again
# often (a probe is one metadata request): once Kafka is back the spool drains within ~1 s.
_RETRY_FIRST_S = 0.25
_RETRY_MAX_MS = 1000


class SpoolForwarder:
    """Sends the gateway's spool to the raw topic, oldest segment first, each record as spooled, and
    removes a segment once Kafka acknowledged every record of it. A failed round sends the whole
    segment again later (the normalizer's dedup absorbs what had landed). A record Kafka refuses for
    good is quarantined (Spool.quarantine) so the records behind it go on; every failure is counted
    (`on_failed`) and logged, and the thread outlives any of them (`running` says so to /readyz)."""

    def __init__(
        self,
        spool: Spool,
        kafka: KafkaSettings,
        topic: str,
        *,
        timeout_s: float = 10.0,
        on_forwarded: Callable[[int], None] = lambda n: None,
        on_failed: Callable[[str, int], None] = lambda error, n: None,
        dedup_window_s: float | None = None,
        on_past_dedup_window: Callable[[int], None] = lambda n: None,
    ) -> None:
        self.spool = spool
        self.topic = topic
        self.timeout_s = timeout_s
        self.on_forwarded = on_forwarded
        self.on_failed = on_failed
        self._conf = config.producer(
            kafka,
            role="spool-forwarder",
            **{
                "message.timeout.ms": int(timeout_s * 1000),
                "linger.ms": 5,
                # librdkafka backs off reconnecting up to 10 s by default: Kafka back after a cut would
                # wait that long before the spool moves, while new deliveries keep being spooled.
                "reconnect.backoff.max.ms": _RETRY_MAX_MS,
            },
        )
        self.dedup_window_s = dedup_window_s
        self.on_past_dedup_window = on_past_dedup_window
        self._producer = Producer(self._conf)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spool-forwarder", daemon=True)

    def start(self) -> SpoolForwarder:
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        backoff = _RETRY_FIRST_S
        while not self._stop.is_set():
            if not self.spool.records:
                self._stop.wait(0.1)
                continue
            try:
                forwarded = self.forward(time.monotonic() + self.timeout_s)
            except Exception as exc:  # a disk error or a bug: said, counted and tried again, never the end
                log.error("spool_forwarder_failed", error=type(exc).__name__, at=raised_at(exc))
                self.on_failed(type(exc).__name__, 1)
                forwarded = False
            if forwarded:
                backoff = _RETRY_FIRST_S
            else:
                self._stop.wait(backoff)
                backoff = min(backoff * 2, _RETRY_MAX_MS / 1000)

    def forward(self, deadline: float) -> bool:
        """Forward every segment there is now; False at the first that Kafka did not take whole."""
        try:
            self._producer.list_topics(self.topic, timeout=2.0)  # Kafka away: spend no records' timeouts
        except KafkaException:
            self.spool.kafka_away = True
            self.on_failed("kafka_unreachable", 1)
            return False
        self.spool.kafka_away = False
        for path in self.spool.take():
            if not self._forward_segment(path, deadline):
                self.spool.kafka_away = True
                return False
        return True

    def _forward_segment(self, path: Path, deadline: float) -> bool:
        records = self.spool.read(path)
        errors: dict[int, KafkaError] = {}
        for i, record in enumerate(records):

            def on_delivery(err: KafkaError | None, msg: Message, i: int = i) -> None:
                if err is not None:
                    errors[i] = err

            try:
                produce(
                    self._producer,
                    self.topic,
                    record.value,
                    record.key,
                    headers=list(record.headers),
                    on_delivery=on_delivery,
                )
            except KafkaException as exc:  # refused before sending (e.g. over message.max.bytes)
                errors[i] = exc.args[0]
        left = self._producer.flush(max(0.1, deadline - time.monotonic()))
        refused = sorted(i for i, err in errors.items() if err.code() in _REFUSED_FOR_GOOD)
        if refused:
            self._quarantine(path, records, refused, errors)
        failed = [err for i, err in errors.items() if i not in refused]
        if left or failed:
            for name in {err.name() for err in failed}:
                self.on_failed(name, sum(err.name() == name for err in failed))
            if left:
                self.on_failed("undelivered", left)
            log.warning(
                "spool_forward_failed", segment=path.name, undelivered=left, errors=[e.str() for e in failed[:3]]
            )
            self._producer.purge()
            self._producer.flush(0)
            self._producer = Producer(self._conf)  # an idempotent producer whose records expired may be fenced
            return False
        self._past_dedup_window(path.name, records)  # counted before the spool says it is empty
        self.spool.remove(path)
        self.on_forwarded(len(records) - len(refused))
        log.info("spool_forwarded", segment=path.name, records=len(records) - len(refused))
        return True

    def _quarantine(
        self, path: Path, records: list[Spooled], refused: list[int], errors: dict[int, KafkaError]
    ) -> None:
        moved = [records[i] for i in refused]
        self.spool.quarantine(path, moved, [r for i, r in enumerate(records) if i not in refused])
        for i in refused:
            self.on_failed(errors[i].name(), 1)
        log.error(
            "spool_quarantined",
            segment=path.name,
            records=len(moved),
            errors=sorted({errors[i].str() for i in refused}),
            directory=str(self.spool.directory / "quarantine"),
        )

    def _past_dedup_window(self, segment: str, records: list[Spooled]) -> None:
        """Warn of records the processors' dedup no longer remembers: had the provider delivered one
        of them again meanwhile, it could become a second event (docs/operations.md)."""
        if self.dedup_window_s is None:
            return
        now = time.time()  # the spool's clock: spooled_at is wall time
        ages = [now - r.spooled_at for r in records if now - r.spooled_at > self.dedup_window_s]
        if ages:
            log.warning(
                "spool_forwarded_past_dedup_window",
                segment=segment,
                records=len(ages),
                oldest_age_s=round(max(ages)),
                dedup_window_s=self.dedup_window_s,
            )
            self.on_past_dedup_window(len(ages))

    def stop(self, drain_s: float) -> int:
        """Stop; forward what is spooled for up to `drain_s` first. Returns the records left."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.timeout_s + 5)
        deadline = time.monotonic() + drain_s
        # Still in a round (Kafka slower than timeout_s): one sender at a time, what remains waits on disk.
        while self.spool.records and time.monotonic() < deadline and not self._thread.is_alive():
            if not self.forward(deadline):
                time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        left = self.spool.records
        self.spool.close()
        return left
