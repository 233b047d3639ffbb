"""`kycstream inspect PROVIDER:ID` through the real gateway, processor and broker."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import Producer

from gateway.settings import GatewaySettings
from processors.avro.records import delivery_to_record
from processors.kafka import config
from processors.kafka.partitioner import partition_for
from processors.kafka.serde import Codec
from processors.operate import lookup, timeline
from processors.settings import KafkaSettings, TopicSettings
from tests.conftest import (
    EXPECTATIONS_API_KEY,
    committed_to_end,
    post,
    processing,
    processor_env,
    produce_noise,
    raw_delivery,
    unique,
    wait_until,
)

pytestmark = pytest.mark.broker
KYCSTREAM = [sys.executable, "-m", "processors.cli"]
API_KEY = EXPECTATIONS_API_KEY
BEARER = {"authorization": "Bearer dev-secret"}
WEEK_AGO = datetime.now(UTC) - timedelta(days=7)


def _body(vid: str, status: str = "COMPLETED") -> bytes:
    return json.dumps(
        {"submissionId": vid, "status": status, "result": "VALID", "processedAt": "2026-05-08T10:30:00Z"}
    ).encode()


def test_one_verification_among_100k_others(
    gateway_with_expectations: tuple[str, GatewaySettings],
    kafka: KafkaSettings,
    topic_settings: TopicSettings,
    codec: Codec,
) -> None:
    (url, _), vid = gateway_with_expectations, unique("sub")
    key = f"esign:{vid}"
    expected = post(
        f"{url}/expectations/esign",
        json.dumps({"verification_id": vid, "lookup": {"x-partner-ref": "secret-ref"}}).encode(),
        {"authorization": f"Bearer {API_KEY}"},
    )
    assert expected.status_code == 200, expected.text
    answers = [
        post(f"{url}/webhooks/esign", _body(vid), BEARER),
        post(f"{url}/webhooks/esign", _body(vid), BEARER),  # the provider's repeat: no second event
        post(f"{url}/webhooks/esign", _body(vid, "SOMETHING_NEW"), BEARER),  # a dead letter, same key
    ]
    assert [a.status_code for a in answers] == [200, 200, 200]
    request_ids = [a.json()["request_id"] for a in answers]
    group = unique("inspect")
    with processing(kafka, topic_settings, group_id=group):
        wait_until(
            lambda: committed_to_end(kafka, group, topic_settings.raw), 60, "the processor committed every raw record"
        )
    produce_noise(kafka, topic_settings.raw, 100_000, codec)

    found, scanned = lookup.find(kafka, topic_settings, key, WEEK_AGO, codec)
    story = timeline.assemble(key, WEEK_AGO, found, scanned)

    kinds = [e.kind for e in story.entries]
    assert sorted(kinds) == sorted(["expectation", "delivery", "delivery", "delivery", "event", "state", "dead_letter"])
    assert [e.at for e in story.entries] == sorted(e.at for e in story.entries), "in time order"
    assert kinds[:2] == ["expectation", "delivery"] and kinds.index("event") < kinds.index("state")
    deliveries = [e.fields for e in story.entries if e.kind == "delivery"]
    assert [d["request_id"] for d in deliveries] == request_ids
    assert {d["origin"] for d in deliveries} == {"callback"}
    assert all("body" not in d and "headers" not in d for d in deliveries), "bodies only with --show-bodies"
    (event,) = [e.fields for e in story.entries if e.kind == "event"]
    assert (event["status"], event["provider_status"], event["request_id"]) == (
        "APPROVED",
        "COMPLETED/VALID",
        request_ids[0],
    )
    assert event["checks"] == []  # what esign sends without submissionDetails
    (letter,) = [e.fields for e in story.entries if e.kind == "dead_letter"]
    assert (letter["reason"], letter["request_id"]) == ("unknown_status", request_ids[2])
    (expectation,) = [e.fields for e in story.entries if e.kind == "expectation"]
    assert expectation["source"] == "esign" and "lookup" not in expectation
    assert story.state is not None
    assert (story.state.status.value, story.state.event_count, story.state.last_event_id) == (
        "APPROVED",
        1,
        event["event_id"],
    )

    # What was read: one partition of each topic, the ones the key hashes to; not the whole raw topic.
    p = partition_for(key.encode(), topic_settings.partitions)
    assert {(s.topic, s.partition) for s in scanned} == {
        (getattr(topic_settings, role), p) for role in ("raw", "events", "state", "dlq", "expected")
    }
    (raw_read,) = [s for s in scanned if s.topic == topic_settings.raw]
    assert 3 <= raw_read.records < 100_000 * 2 / topic_settings.partitions, "only the key's raw partition was read"

    # The command: the same as data with --json, and as a table; bodies only when asked for.
    env = processor_env(kafka, topic_settings)
    as_json = subprocess.run(
        [*KYCSTREAM, "inspect", key, "--json"], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    doc = json.loads(as_json.stdout)
    mine = timeline.to_json(story)
    assert doc["timeline"] == mine["timeline"] and doc["state"] == mine["state"] and doc["read"] == mine["read"]
    table = subprocess.run(
        [*KYCSTREAM, "inspect", key, "--show-bodies"], env=env, capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert table.startswith(f"{key}: APPROVED after 1 event(s)")
    assert f"callback from esign (POST), request {request_ids[0]}" in table
    assert f"APPROVED (COMPLETED/VALID), event {event['event_id']}" in table
    assert "unknown_status: esign status 'SOMETHING_NEW'" in table
    assert f'body: {{"submissionId": "{vid}"' in table, table


def test_since_leaves_older_records_out(kafka: KafkaSettings, topic_settings: TopicSettings, codec: Codec) -> None:
    vid = unique("old")
    key = f"esign:{vid}"
    now = datetime.now(UTC)
    producer = Producer(config.producer(kafka))
    for age_days in (30, 2, 0):
        delivery = raw_delivery("esign", _body(vid))
        value = codec.encode("RawDelivery", delivery_to_record(delivery))
        written = int((now - timedelta(days=age_days)).timestamp() * 1000)
        producer.produce(topic_settings.raw, key=key.encode(), value=value, timestamp=written)
        assert producer.flush(10) == 0

    def written_days_ago(since: datetime) -> list[int]:
        found, _ = lookup.find(kafka, topic_settings, key, since, codec)
        return [round((now - f.written_at).total_seconds() / 86400) for f in found]

    assert written_days_ago(now - timedelta(days=7)) == [2, 0]
    assert written_days_ago(now - timedelta(days=60)) == [30, 2, 0]
    assert written_days_ago(now + timedelta(minutes=1)) == []


@pytest.mark.parametrize("partitioner", ["consistent_random", "murmur2_random", "fnv1a_random"])
def test_the_partition_is_the_one_librdkafka_chose(
    kafka: KafkaSettings, make_topics: Callable[..., TopicSettings], partitioner: str
) -> None:
    topic = make_topics(partitions=7).raw
    keys = [f"esign:{uuid.uuid4().hex[: 1 + i % 32]}".encode() for i in range(300)]
    chosen: dict[bytes, int] = {}
    producer = Producer(config.producer(kafka, partitioner=partitioner))
    for k in keys:
        producer.produce(
            topic, key=k, value=b"x", on_delivery=lambda err, msg: chosen.update({msg.key(): msg.partition()})
        )
    assert producer.flush(30) == 0
    assert {k: partition_for(k, 7, partitioner) for k in keys} == chosen
