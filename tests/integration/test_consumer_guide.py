"""docs/consumers.md's Python example, run as written against what the real gateway and processor
wrote; and the AsyncAPI contract's keys and headers checked against those same records."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.settings import GatewaySettings
from processors import contract
from processors.kafka import reader
from processors.kafka.serde import Codec
from processors.settings import KafkaSettings
from schemas import SCHEMA_DIR
from tests.conftest import committed_to_end, post, processing, read, unique, wait_until

pytestmark = pytest.mark.broker

GUIDE = Path(__file__).parents[2] / "docs" / "consumers.md"
XENDIT = {"event": "account.verification", "data": {"id": "acct-guide-1", "kyc": {"status": "PASSED"}}}
ESIGN = {"submissionId": "sub-guide-2", "status": "COMPLETED", "result": "INVALID", "reasonCode": "DUKCAPIL_REJECTED"}


def guide_example() -> str:
    blocks = re.findall(r"^```python\n(.*?)^```", GUIDE.read_text(), re.S | re.M)
    assert len(blocks) == 1, "docs/consumers.md has one Python example"
    return str(blocks[0])


@pytest.fixture
def pipeline(gateway: tuple[str, GatewaySettings], kafka: KafkaSettings) -> GatewaySettings:
    """Two webhooks through the real gateway, normalized by the real processor until committed."""
    url, settings = gateway
    token = {"x-callback-token": "dev-secret"}
    assert post(f"{url}/webhooks/xendit", json.dumps(XENDIT).encode(), token).status_code == 200
    bearer = {"authorization": "Bearer dev-secret"}
    assert post(f"{url}/webhooks/esign", json.dumps(ESIGN).encode(), bearer, method="PUT").status_code == 200
    group = unique("guide")
    with processing(kafka, settings.topics, group_id=group):
        wait_until(lambda: committed_to_end(kafka, group, settings.topics.raw), 60, "both webhooks processed")
    return settings


def run_example(kafka: KafkaSettings, topic: str, type_: str) -> list[dict[str, Any]]:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "TOPIC": topic,
        "TYPE": type_,
        "GROUP_ID": unique("guide-reader"),
        "KYCSTREAM_SCHEMAS": str(SCHEMA_DIR),
    }
    done = subprocess.run(
        [sys.executable, "-c", guide_example()], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_the_guides_python_example_decodes_the_events_and_the_state_table(
    pipeline: GatewaySettings, kafka: KafkaSettings, codec: Codec
) -> None:
    topics = pipeline.topics
    events = run_example(kafka, topics.events, "kycstream.VerificationEvent")
    assert sorted((e["key"], e["status"]) for e in events) == [
        ("esign:sub-guide-2", "REJECTED"),
        ("xendit:acct-guide-1", "APPROVED"),
    ]
    ours = {r["event_id"]: r for r in read(kafka, topics.events, codec, "VerificationEvent")}
    for event in events:  # the same values as kycstream's own codec reads
        assert event["idempotency_key"] == ours[event["event_id"]]["idempotency_key"]
        assert event["received_at"] == str(ours[event["event_id"]]["received_at"])

    states = run_example(kafka, topics.state, "kycstream.VerificationState")
    assert {s["key"]: s["status"] for s in states} == {
        "esign:sub-guide-2": "REJECTED",
        "xendit:acct-guide-1": "APPROVED",
    }


def test_records_carry_the_keys_and_headers_the_asyncapi_document_says(
    pipeline: GatewaySettings, kafka: KafkaSettings
) -> None:
    topics = pipeline.topics
    messages = {m.name: m for m in contract.MESSAGES}
    expected = {
        topics.raw: "rawCallback",
        topics.events: "verificationEvent",
        topics.state: "verificationState",
        topics.dedup: "dedupRecord",
    }
    for topic, name in expected.items():
        records = list(reader.read_all(kafka, topic))
        assert records, f"{topic} has records"
        message = messages[name]
        for record in records:
            assert {h for h, _ in record.headers} == set(message.headers), (topic, record.headers)
            key = (record.key or b"").decode()
            patterns = [s["pattern"] for s in message.key.get("anyOf", [message.key]) if "pattern" in s]
            assert any(re.match(p, key) for p in patterns), (topic, key, patterns)
