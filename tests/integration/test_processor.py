"""The normalizer through real HTTP and the real broker: every golden case becomes its event or dead letter."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime

import pytest

from gateway.settings import GatewaySettings
from processors.kafka import topics
from processors.kafka.serde import Codec
from processors.model import RawDelivery, VerificationEvent
from processors.pipeline import normalize
from processors.settings import KafkaSettings
from tests import cases
from tests.conftest import committed_to_end, post, processing, read, unique, wait_until
from tests.credentials import auth_headers

pytestmark = pytest.mark.broker


def test_every_golden_case_through_gateway_and_normalizer(
    gateway: tuple[str, GatewaySettings], kafka: KafkaSettings, codec: Codec
) -> None:
    url, settings = gateway
    sent: dict[str, cases.Case] = {}
    for case in cases.load():
        source = settings.sources[case.provider]
        headers = {**case.headers, **auth_headers(source, case.body), "content-type": "application/json"}
        response = post(f"{url}/webhooks/{case.provider}", case.body, headers)
        assert response.status_code == 200, (case.id, response.text)
        sent[response.json()["request_id"]] = case

    # Cases that are the same provider result (same idempotency key) must yield one event between them.
    keys = {rid: _idempotency_key(case) for rid, case in sent.items() if case.event}
    expected_events = len(set(keys.values()))
    dead = sum(1 for case in sent.values() if case.dead_letter)
    notices = Counter((case.provider, case.notice) for case in sent.values() if case.notice)
    assert notices, "the corpus has notices"
    group = unique("golden")
    with processing(kafka, settings.topics, group_id=group) as normalizer:
        wait_until(lambda: committed_to_end(kafka, group, settings.topics.raw), 60, "every case processed")
        events = read(kafka, settings.topics.events, codec, "VerificationEvent")
        letters = read(kafka, settings.topics.dlq, codec, "DeadLetter")
        counted = Counter(
            {
                (s.labels["provider"], s.labels["kind"]): s.value
                for metric in normalizer.metrics.registry.collect()
                if metric.name == "kycstream_notices"
                for s in metric.samples
                if s.name == "kycstream_notices_total"
            }
        )
    assert counted == notices, "each notice counted by kind: no event, no dead letter"

    assert len(events) == expected_events
    assert sorted(e["idempotency_key"] for e in events) == sorted(set(keys.values()))
    for event in events:
        case = sent[event["raw_ref"]["request_id"]]
        assert case.event, f"{case.id} should have been a dead letter or a notice"
        cases.assert_matches(event, case.expect)
        assert event["_key"] == f"{event['provider']}:{event['verification_id']}".encode()
        assert event["source"] == case.provider

    assert len(letters) == dead
    for letter in letters:
        case = sent[letter["request_id"]]
        assert letter["reason"] == case.dead_letter, case.id
        assert letter["detail"]
        original = codec.decode("RawDelivery", letter["original_value"])
        assert original["body"] == case.body, "the DLQ keeps the delivery, to redrive it after a fix"


def _idempotency_key(case: cases.Case) -> str:
    outcome = normalize(
        RawDelivery("r", case.provider, case.provider, "POST", datetime.now(UTC), case.body, dict(case.headers))
    )
    assert isinstance(outcome, VerificationEvent)
    return outcome.idempotency_key


def test_a_record_that_is_not_an_envelope_goes_to_the_dlq(
    gateway: tuple[str, GatewaySettings], kafka: KafkaSettings, codec: Codec
) -> None:
    from confluent_kafka import Producer

    _, settings = gateway
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers})
    producer.produce(settings.topics.raw, key=b"k", value=b"not avro at all")
    producer.flush(10)
    with processing(kafka, settings.topics):
        letters = read(kafka, settings.topics.dlq, codec, "DeadLetter", at_least=1)
    assert [letter["reason"] for letter in letters] == ["undecodable_envelope"]
    assert letters[0]["original_value"] == b"not avro at all"


def test_processor_refuses_to_start_without_its_topics(kafka: KafkaSettings) -> None:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "KYCSTREAM_TOPICS__RAW": "no.such.topic",
        "KYCSTREAM_PROCESSOR__METRICS_PORT": "0",
    }
    result = subprocess.run(
        [sys.executable, "-m", "processors.cli", "process"], env=env, capture_output=True, timeout=60
    )
    assert result.returncode == 2
    assert b"topic no.such.topic does not exist: run `kycstream topics create` first" in result.stderr


def test_sigterm_stops_the_processor_cleanly(gateway: tuple[str, GatewaySettings], kafka: KafkaSettings) -> None:
    _, settings = gateway
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        **{f"KYCSTREAM_TOPICS__{role.upper()}": getattr(settings.topics, role) for role in topics.ROLES},
        "KYCSTREAM_PROCESSOR__METRICS_PORT": "0",
    }
    with subprocess.Popen(
        [sys.executable, "-m", "processors.cli", "process", "--group", f"sigterm-{time.time_ns()}"],
        env=env,
        stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stderr is not None
        watchdog = threading.Timer(60, proc.kill)  # a processor that never starts fails the test, not hangs it
        watchdog.start()
        seen = b""
        for line in proc.stderr:  # started: subscribed, its partitions about to be assigned
            seen += line
            if b"processor_started" in line:
                break
        watchdog.cancel()
        assert proc.poll() is None, seen.decode()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert b"processor_stopped" in proc.stderr.read()
