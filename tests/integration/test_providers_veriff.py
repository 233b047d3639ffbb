"""Veriff through the real gateway (its declared scheme, signing.VERIFF), broker and processor: a
signed decision becomes its event and a progress event webhook a PENDING one; a tampered decision
is 401 and never reaches Kafka; approved, declined, approved again (decisionTime orders them) is
three events and Veriff's retries are none."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.settings import GatewaySettings
from processors.kafka.serde import Codec
from processors.settings import KafkaSettings
from tests.conftest import committed_to_end, latest_states, post, processing, read, unique, wait_until
from tests.credentials import auth_headers

pytestmark = pytest.mark.broker


def _decision(vid: str, word: str, moment: str, reason_code: int | None = None) -> dict[str, Any]:
    verification = {
        "id": vid,
        "attemptId": f"{vid}-a",
        "status": word,
        "decisionTime": moment,
        "reasonCode": reason_code,
        "reason": "Known fraud" if reason_code else None,
        "person": {"firstName": "SARAH", "lastName": "MORGAN"},
    }
    return {"status": "success", "verification": verification, "technicalData": {"ip": "186.153.67.122"}}


def test_signed_veriff_webhooks_become_events_and_a_tampered_one_never_reaches_kafka(
    gateway: tuple[str, GatewaySettings], kafka: KafkaSettings, codec: Codec
) -> None:
    url, settings = gateway
    source = settings.sources["veriff"]
    vid = unique("session")

    approved = json.dumps(_decision(vid, "approved", "2026-05-08T10:30:00.000Z")).encode()
    forged = approved.replace(b"approved", b"declined")
    tampered = post(f"{url}/webhooks/veriff", forged, auth_headers(source, approved))
    assert tampered.status_code == 401, tampered.text
    assert read(kafka, settings.topics.raw, codec, "RawDelivery") == [], "a tampered body never reaches Kafka"

    started = json.dumps({"id": vid, "attemptId": f"{vid}-a", "code": 7001, "action": "started"}).encode()
    decisions = [
        approved,
        json.dumps(_decision(vid, "declined", "2026-05-08T11:45:00.000Z", 106)).encode(),
        json.dumps(_decision(vid, "approved", "2026-05-08T12:10:00.000Z")).encode(),
    ]
    group = unique("proc")
    with processing(kafka, settings.topics, group_id=group):
        for body in [started, *decisions, *decisions]:  # Veriff retries each decision
            response = post(f"{url}/webhooks/veriff", body, auth_headers(source, body))
            assert response.status_code == 200, response.text
        wait_until(lambda: committed_to_end(kafka, group, settings.topics.raw), 60, "every delivery processed")

    events = [e for e in read(kafka, settings.topics.events, codec, "VerificationEvent") if e["verification_id"] == vid]
    assert [(e["status"], e["provider_status"]) for e in events] == [
        ("PENDING", "started"),
        ("APPROVED", "approved"),
        ("REJECTED", "declined"),
        ("APPROVED", "approved"),
    ]
    assert [r["code"] for r in events[2]["reasons"]] == ["106"]
    text = json.dumps(events, default=str)
    assert "Known fraud" not in text and "MORGAN" not in text, "no prose, no personal data in events"
    assert latest_states(kafka, settings.topics.state, codec)[f"veriff:{vid}"]["status"] == "APPROVED"
