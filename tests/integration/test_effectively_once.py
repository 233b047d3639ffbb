"""Effectively once (at-least-once with dedup, the default, and transactions): one event per provider
result, and a state that never regresses, whatever happens."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.settings import GatewaySettings
from processors.kafka import reader
from processors.kafka.serde import Codec
from processors.normalizer.runner import Normalizer
from processors.settings import KafkaSettings, TopicSettings
from tests import cases
from tests.conftest import (
    committed_to_end,
    ends,
    latest_states,
    post,
    processing,
    processor_env,
    produce_raw,
    raw_delivery,
    read,
    store_env,
    unique,
    wait_until,
)
from tests.credentials import auth_headers

pytestmark = pytest.mark.broker


def _esign(submission: str, status: str, result: str, processed_at: str) -> bytes:
    return json.dumps(
        {"submissionId": submission, "status": status, "result": result, "processedAt": processed_at}
    ).encode()


def _metamap(vid: str, event: str, identity: str | None, timestamp: str) -> bytes:
    doc = {"eventName": event, "resource": f"https://api.getmati.com/v2/verifications/{vid}", "timestamp": timestamp}
    if identity:
        doc["identityStatus"] = identity
    return json.dumps(doc).encode()


def _dedup_hits(normalizer: Normalizer) -> float:
    return sum(
        sample.value
        for metric in normalizer.metrics.registry.collect()
        if metric.name == "kycstream_dedup_hits"
        for sample in metric.samples
        if sample.name == "kycstream_dedup_hits_total"
    )


def test_every_delivery_sent_three_times_yields_one_event(
    gateway: tuple[str, GatewaySettings], kafka: KafkaSettings, codec: Codec, store: dict[str, Any]
) -> None:
    url, settings = gateway
    good = [c for c in cases.load() if c.event]

    def send(case: cases.Case) -> None:
        source = settings.sources[case.provider]
        response = post(
            f"{url}/webhooks/{case.provider}", case.body, {**case.headers, **auth_headers(source, case.body)}
        )
        assert response.status_code == 200

    for case in good:
        send(case)
    threads = [threading.Thread(target=send, args=(case,)) for case in good for _ in range(2)]  # concurrent repeats
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    with processing(kafka, settings.topics, **store) as normalizer:
        raw = read(kafka, settings.topics.raw, codec, "RawDelivery", at_least=3 * len(good))
        assert len({r["request_id"] for r in raw}) == 3 * len(good)
        wait_until(lambda: _dedup_hits(normalizer) >= 2 * len(good), 60, "every repeat recognised")
        events = read(kafka, settings.topics.events, codec, "VerificationEvent")
    ids = Counter(e["event_id"] for e in events)
    assert ids and max(ids.values()) == 1, [i for i, n in ids.items() if n > 1]
    assert len(ids) == len({e["idempotency_key"] for e in events})


def test_late_pending_never_overwrites_a_decision(
    gateway: tuple[str, GatewaySettings], kafka: KafkaSettings, codec: Codec
) -> None:
    url, settings = gateway
    bearer = {"authorization": "Bearer dev-secret"}
    sub = unique("sub")
    assert post(f"{url}/webhooks/esign", _esign(sub, "COMPLETED", "VALID", "2026-05-08T10:30:00Z"), bearer).is_success
    assert post(
        f"{url}/webhooks/esign", _esign(sub, "PARTIALLY_COMPLETED", "VALID", "2026-05-08T10:31:00Z"), bearer
    ).is_success
    with processing(kafka, settings.topics):
        read(kafka, settings.topics.events, codec, "VerificationEvent", at_least=2)
        read(kafka, settings.topics.state, codec, "VerificationState", at_least=1)
    state = latest_states(kafka, settings.topics.state, codec)[f"esign:{sub}"]
    assert state["status"] == "APPROVED"
    assert state["event_count"] == 2
    assert state["decided_at"].isoformat().startswith("2026-05-08T10:30:00")


def test_a_later_review_overturns_a_decision_and_an_older_one_does_not(
    gateway: tuple[str, GatewaySettings], kafka: KafkaSettings, codec: Codec
) -> None:
    url, settings = gateway
    source = settings.sources["metamap"]
    vid = "5f2b" + unique("v").replace("-", "")

    def send(body: bytes) -> None:
        assert post(f"{url}/webhooks/metamap", body, auth_headers(source, body)).is_success

    send(_metamap(vid, "verification_completed", "verified", "2026-05-08T10:00:00Z"))
    send(_metamap(vid, "verification_updated", "rejected", "2026-05-08T12:00:00Z"))
    send(_metamap(vid, "verification_updated", "reviewNeeded", "2026-05-08T11:00:00Z"))  # late, older
    send(_metamap(vid, "step_completed", None, "2026-05-08T13:00:00Z"))  # later, but in progress
    with processing(kafka, settings.topics):
        read(kafka, settings.topics.events, codec, "VerificationEvent", at_least=4)
        read(kafka, settings.topics.state, codec, "VerificationState", at_least=1)
    state = latest_states(kafka, settings.topics.state, codec)[f"metamap:{vid}"]
    assert state["status"] == "REJECTED"
    assert state["event_count"] == 4


def test_restart_restores_dedup_and_state_from_the_changelogs(
    topic_settings: TopicSettings, kafka: KafkaSettings, codec: Codec, store: dict[str, Any]
) -> None:
    first = [raw_delivery("esign", _esign(f"r-{i}", "COMPLETED", "VALID", "2026-05-08T10:30:00Z")) for i in range(50)]
    produce_raw(kafka, topic_settings.raw, first, codec)
    with processing(kafka, topic_settings, **store):
        read(kafka, topic_settings.events, codec, "VerificationEvent", at_least=50)
        read(kafka, topic_settings.dedup, codec, "DedupRecord", at_least=50)

    again = [raw_delivery("esign", d.body) for d in first]  # the provider retries every one
    late = [
        raw_delivery("esign", _esign(f"r-{i}", "PARTIALLY_COMPLETED", "VALID", "2026-05-08T11:00:00Z"))
        for i in range(5)
    ]
    produce_raw(kafka, topic_settings.raw, again + late, codec)
    with processing(kafka, topic_settings, **store) as normalizer:  # a new instance: it knows only what it restores
        events = read(kafka, topic_settings.events, codec, "VerificationEvent", at_least=55)
        wait_until(lambda: _dedup_hits(normalizer) >= 50, 30, "50 repeats recognised by the restored instance")
    assert len(read(kafka, topic_settings.events, codec, "VerificationEvent")) == 55 == len(events)
    states = latest_states(kafka, topic_settings.state, codec)
    assert {s["status"] for s in states.values()} == {"APPROVED"}
    assert states["esign:r-0"]["event_count"] == 2


def test_dedup_and_raw_partition_counts_must_match(
    make_topics: Callable[..., TopicSettings], kafka: KafkaSettings
) -> None:
    from processors.errors import ConfigError
    from processors.normalizer.runner import Engine
    from processors.settings import ProcessorSettings

    three, two = make_topics(3), make_topics(2)
    mixed = three.model_copy(update={"dedup": two.dedup})
    engine = Engine(ProcessorSettings(kafka=kafka, topics=mixed, processor={"group_id": unique("g")}))
    with pytest.raises(ConfigError, match=r"has 3 partitions but .*dedup has 2"):
        engine.check_partitions()
    engine.close()


def _stream(n: int, duplicate_share: float, seed: int) -> tuple[list, set[str]]:
    rng = random.Random(seed)
    deliveries = []
    for i in range(n):
        if i % 2:
            body = _esign(f"s-{seed}-{i}", "COMPLETED", rng.choice(["VALID", "INVALID"]), "2026-05-08T10:30:00Z")
            deliveries.append(raw_delivery("esign", body))
        else:
            body = json.dumps(
                {"event": "account.verification", "data": {"id": f"a-{seed}-{i}", "kyc": {"status": "PASSED"}}}
            )
            deliveries.append(raw_delivery("xendit", body.encode(), {"webhook-id": f"wh-{seed}-{i}"}))
    repeats = [raw_delivery(d.provider, d.body, d.headers) for d in rng.sample(deliveries, int(n * duplicate_share))]
    for repeat in repeats:
        deliveries.insert(rng.randrange(len(deliveries) + 1), repeat)
    return deliveries, set()


def _kill_and_recover(
    kafka: KafkaSettings,
    topic_settings: TopicSettings,
    codec: Codec,
    n: int,
    second_joins: bool,
    store: dict[str, Any] | None = None,
) -> None:
    """The victim and the first survivor share a disk (a restarted container: the survivor reads only
    the changelogs' tail into the victim's stores); a second one joining has its own."""
    deliveries, _ = _stream(n, 0.10, seed=n + second_joins)
    produce_raw(kafka, topic_settings.raw, deliveries, codec)
    expected = n
    env = processor_env(kafka, topic_settings, **store_env(store or {}))
    own_disk = {**env, "KYCSTREAM_PROCESSOR__STATE_DIR": tempfile.mkdtemp(prefix="second-")}
    group = unique("kill")
    command = [sys.executable, "-m", "processors.cli", "process", "--group", group]
    victim = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    try:
        wait_until(
            lambda: victim.poll() is not None or sum(ends(kafka, topic_settings.events).values()) >= expected // 4,
            120,
            "a quarter of the events written",
            every=0.3,
        )
        assert victim.poll() is None, "the processor died before it was killed"
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        first_log = Path(tempfile.mkdtemp()) / "survivor.log"
        with first_log.open("wb") as log_file:  # the survivor's own descriptor: read here by path
            survivors = [subprocess.Popen(command, env={**env, "KYCSTREAM_LOG_LEVEL": "INFO"}, stderr=log_file)]
        try:
            if second_joins:  # while the first is taking over: once it was given the partitions
                wait_until(
                    lambda: b"partitions_assigned" in first_log.read_bytes(),
                    120,
                    "the first survivor was assigned the victim's partitions",
                )
                second_log = first_log.with_name("second.log")
                with second_log.open("wb") as log_file:
                    survivors.append(
                        subprocess.Popen(command, env={**own_disk, "KYCSTREAM_LOG_LEVEL": "INFO"}, stderr=log_file)
                    )
                # Stopped only once it runs (its SIGTERM handler set): not while it is still starting.
                wait_until(lambda: b"processor_started" in second_log.read_bytes(), 120, "the second survivor runs")
            wait_until(
                lambda: committed_to_end(kafka, group, topic_settings.raw), 240, "the survivors committed the raw topic"
            )
            events = read(kafka, topic_settings.events, codec, "VerificationEvent")
        finally:
            for proc in survivors:
                proc.terminate()
            for proc in survivors:
                assert proc.wait(30) == 0
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
    ids = Counter(e["event_id"] for e in events)
    doubled = [i for i, count in ids.items() if count > 1]
    assert not doubled, f"{len(doubled)} events written twice"
    assert len(ids) == expected, f"{expected - len(ids)} events missing"


@pytest.mark.parametrize("second_joins", [False, True], ids=["restart", "restart-and-second-joins"])
def test_sigkill_mid_stream_loses_and_doubles_nothing(
    topic_settings: TopicSettings, kafka: KafkaSettings, codec: Codec, second_joins: bool, store: dict[str, Any]
) -> None:
    _kill_and_recover(kafka, topic_settings, codec, 3_000, second_joins, store)


@pytest.mark.slow
@pytest.mark.parametrize("second_joins", [False, True], ids=["restart", "restart-and-second-joins"])
def test_sigkill_mid_stream_of_20000(
    topic_settings: TopicSettings, kafka: KafkaSettings, codec: Codec, second_joins: bool
) -> None:
    _kill_and_recover(kafka, topic_settings, codec, 20_000, second_joins)


def test_effectively_once_mode_commits_outputs_and_offsets_in_transactions(
    topic_settings: TopicSettings, kafka: KafkaSettings, codec: Codec, store: dict[str, Any]
) -> None:
    """The transactional path end to end (the embedded broker does not hide aborted transactions,
    so only the happy path is meaningful here; real Kafka covers the rest)."""
    first = [raw_delivery("esign", _esign(f"x-{i}", "COMPLETED", "VALID", "2026-05-08T10:30:00Z")) for i in range(20)]
    produce_raw(kafka, topic_settings.raw, first + [raw_delivery("esign", d.body) for d in first[:5]], codec)
    group = unique("eos")
    options = {"processing_guarantee": "exactly_once", "transactional_id": unique("tx"), "group_id": group, **store}
    with processing(kafka, topic_settings, **options) as normalizer:
        read(kafka, topic_settings.events, codec, "VerificationEvent", at_least=20)
        wait_until(lambda: _dedup_hits(normalizer) >= 5, 30, "5 repeats recognised")
    produce_raw(kafka, topic_settings.raw, [raw_delivery("esign", d.body) for d in first[5:10]], codec)
    with processing(kafka, topic_settings, **options) as normalizer:  # restored, and offsets were committed
        wait_until(lambda: _dedup_hits(normalizer) >= 5, 30, "5 repeats recognised after the restore")
        wait_until(lambda: committed_to_end(kafka, group, topic_settings.raw), 30, "the raw topic committed")
        assert normalizer.engine.tally == Counter(duplicates=5), "only the new records were read again"
    assert len(read(kafka, topic_settings.events, codec, "VerificationEvent")) == 20
    assert len(read(kafka, topic_settings.dedup, codec, "DedupRecord")) == 20


def test_a_batch_whose_transaction_failed_is_redone_in_full(
    topic_settings: TopicSettings, kafka: KafkaSettings, codec: Codec
) -> None:
    """exactly_once: a transaction that fails after the batch's keys were learned (while building
    its dedup records) is aborted, and the redo writes every event of the batch: the partitions are
    taken over again from what was committed, so the learned keys are not taken for repeats."""
    from confluent_kafka import KafkaError, KafkaException

    group = unique("eos-abort")
    options = {"processing_guarantee": "exactly_once", "transactional_id": unique("tx"), "group_id": group}
    with processing(kafka, topic_settings, **options) as normalizer:
        outputs = normalizer.engine.outputs
        write_dedup = outputs.dedup_in_transaction
        failed = threading.Event()

        def fail_once(records: list[tuple[int, bytes, bytes]], acked: dict[int, int]) -> None:
            if not failed.is_set():
                failed.set()
                raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "injected: the transaction did not finish"))
            write_dedup(records, acked)

        outputs.dedup_in_transaction = fail_once  # type: ignore[method-assign]
        deliveries = [
            raw_delivery("esign", _esign(f"abort-{i}", "COMPLETED", "VALID", "2026-05-08T10:30:00Z")) for i in range(10)
        ]
        produce_raw(kafka, topic_settings.raw, deliveries, codec)
        wait_until(lambda: committed_to_end(kafka, group, topic_settings.raw), 60, "the raw topic committed")
        assert failed.is_set(), "the injected failure happened"
        assert normalizer.engine.tally == Counter(events=10), "every event written by the redo, none a repeat"
    events = read(kafka, topic_settings.events, codec, "VerificationEvent")
    dedup = read(kafka, topic_settings.dedup, codec, "DedupRecord")
    assert {e["idempotency_key"] for e in events} == {r["idempotency_key"] for r in dedup}
    assert len({e["idempotency_key"] for e in events}) == 10


def test_a_state_that_landed_without_its_event_is_not_counted_again(
    topic_settings: TopicSettings, kafka: KafkaSettings, codec: Codec
) -> None:
    """A crash after a batch's state records were acknowledged but before its events were (they go
    to different partitions): the redo writes the missing event and the state still counts it once."""
    from confluent_kafka import Producer

    from processors.avro.records import state_to_record
    from processors.kafka import config
    from processors.model import VerificationState, VerificationStatus

    delivery = raw_delivery("esign", _esign("landed-state", "COMPLETED", "VALID", "2026-05-08T10:30:00Z"))
    produce_raw(kafka, topic_settings.raw, [delivery], codec)
    raw = read(kafka, topic_settings.raw, codec, "RawDelivery")
    partition = next(r.partition for r in reader.read_all(kafka, topic_settings.raw))
    crashed = VerificationState(
        key="esign:landed-state",
        provider="esign",
        verification_id="landed-state",
        status=VerificationStatus.APPROVED,
        last_event_id="written-by-the-crashed-owner",
        updated_at=datetime.now(UTC),
        event_count=1,
        raw_offset=0,
    )
    producer = Producer(config.producer(kafka))
    producer.produce(
        topic_settings.state,
        key=crashed.key.encode(),
        value=codec.encode("VerificationState", state_to_record(crashed)),
        partition=partition,
    )
    assert producer.flush(10) == 0 and len(raw) == 1
    group = unique("landed")
    with processing(kafka, topic_settings, group_id=group):
        wait_until(lambda: committed_to_end(kafka, group, topic_settings.raw), 30, "the delivery processed")
    assert [e["verification_id"] for e in read(kafka, topic_settings.events, codec, "VerificationEvent")] == [
        "landed-state"
    ]
    assert latest_states(kafka, topic_settings.state, codec)["esign:landed-state"]["event_count"] == 1
