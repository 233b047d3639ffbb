"""The normalizer through real HTTP and the real broker: every golden case becomes its event or dead letter."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from gateway.settings import GatewaySettings
from processors.kafka.serde import Codec
from processors.settings import KafkaSettings
from tests import cases
from tests.conftest import post, processing, read
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

    expected_events = sum(1 for c in sent.values() if not c.dead_letter)
    with processing(kafka, settings.topics):
        events = read(kafka, settings.topics.events, codec, "VerificationEvent", at_least=expected_events)
        letters = read(kafka, settings.topics.dlq, codec, "DeadLetter", at_least=len(sent) - expected_events)

    assert len(events) == expected_events
    for event in events:
        case = sent[event["raw_ref"]["request_id"]]
        assert not case.dead_letter, f"{case.id} should have been dead-lettered"
        cases.assert_matches(event, case.expect)
        assert event["_key"] == f"{event['provider']}:{event['verification_id']}".encode()
        assert event["source"] == case.provider

    assert len(letters) == len(sent) - expected_events
    for letter in letters:
        case = sent[letter["request_id"]]
        assert letter["reason"] == case.dead_letter, case.id
        assert letter["detail"]
        original = codec.decode("RawDelivery", letter["original_value"])
        assert original["body"] == case.body, "the DLQ keeps the delivery, to redrive it after a fix"


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


def test_sigterm_stops_the_processor_cleanly(gateway: tuple[str, GatewaySettings], kafka: KafkaSettings) -> None:
    _, settings = gateway
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "KYCSTREAM_TOPICS__RAW": settings.topics.raw,
        "KYCSTREAM_TOPICS__EVENTS": settings.topics.events,
        "KYCSTREAM_TOPICS__DLQ": settings.topics.dlq,
        "KYCSTREAM_PROCESSOR__METRICS_PORT": "0",
    }
    with subprocess.Popen(
        [sys.executable, "-m", "processors.cli", "process", "--group", f"sigterm-{time.time_ns()}"],
        env=env,
        stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stderr is not None
        time.sleep(4)
        assert proc.poll() is None, proc.stderr.read().decode()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert b"processor_stopped" in proc.stderr.read()
