"""Sumsub through the real gateway (its declared scheme, signing.SUMSUB), broker and processor: a
signed applicantReviewed becomes its event, whichever digest algorithm Sumsub was told to use; a
tampered one is 401 and never reaches Kafka; approved, rejected, approved again (createdAtMs orders
them) is three events and resends are none; a notice is no event."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest

from gateway.settings import GatewaySettings
from processors.kafka.serde import Codec
from processors.settings import KafkaSettings
from tests.conftest import committed_to_end, latest_states, post, processing, read, unique, wait_until
from tests.credentials import auth_headers

pytestmark = pytest.mark.broker


def _reviewed(vid: str, answer: str, moment: str, reject_type: str | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {"reviewAnswer": answer}
    if reject_type:
        result |= {"reviewRejectType": reject_type, "rejectLabels": ["FORGERY"], "clientComment": "Suspected fraud."}
    return {
        "applicantId": vid,
        "inspectionId": f"{vid}-i",
        "externalUserId": "user-1",
        "levelName": "id-and-liveness",
        "type": "applicantReviewed",
        "reviewResult": result,
        "reviewStatus": "completed",
        "createdAtMs": moment,
    }


def _sha512_headers(body: bytes) -> dict[str, str]:
    """As Sumsub signs when its webhook's algorithm is SHA512 (the dev secret of the dev sources)."""
    digest = hmac.new(b"dev-secret", body, hashlib.sha512).hexdigest()
    return {"X-Payload-Digest": digest, "X-Payload-Digest-Alg": "HMAC_SHA512_HEX"}


def test_signed_sumsub_webhooks_become_events_and_a_tampered_one_never_reaches_kafka(
    gateway: tuple[str, GatewaySettings], kafka: KafkaSettings, codec: Codec
) -> None:
    url, settings = gateway
    source = settings.sources["sumsub"]
    vid = unique("applicant")

    green = json.dumps(_reviewed(vid, "GREEN", "2026-05-08 10:30:00.000")).encode()
    tampered = post(f"{url}/webhooks/sumsub", green.replace(b"GREEN", b"RED"), auth_headers(source, green))
    assert tampered.status_code == 401, tampered.text
    assert read(kafka, settings.topics.raw, codec, "RawDelivery") == [], "a tampered body never reaches Kafka"

    bodies = [
        green,
        json.dumps(_reviewed(vid, "RED", "2026-05-08 11:45:00.000", "FINAL")).encode(),
        json.dumps(_reviewed(vid, "GREEN", "2026-05-08 12:10:00.000")).encode(),
    ]
    notice = json.dumps({"applicantId": vid, "type": "applicantPersonalInfoChanged"}).encode()
    group = unique("proc")
    with processing(kafka, settings.topics, group_id=group):
        for body in bodies:
            response = post(f"{url}/webhooks/sumsub", body, auth_headers(source, body))
            assert response.status_code == 200, response.text
        for body in [*bodies, notice]:  # Sumsub resends each; this time with SHA512 digests
            response = post(f"{url}/webhooks/sumsub", body, _sha512_headers(body))
            assert response.status_code == 200, response.text
        wait_until(lambda: committed_to_end(kafka, group, settings.topics.raw), 60, "every delivery processed")

    assert len(read(kafka, settings.topics.raw, codec, "RawDelivery")) == 7
    events = [e for e in read(kafka, settings.topics.events, codec, "VerificationEvent") if e["verification_id"] == vid]
    assert [(e["status"], e["provider_status"]) for e in events] == [
        ("APPROVED", "GREEN"),
        ("REJECTED", "RED/FINAL"),
        ("APPROVED", "GREEN"),
    ]
    assert [r["code"] for r in events[1]["reasons"]] == ["FORGERY"]
    assert "Suspected fraud" not in json.dumps(events, default=str), "a reviewer's comment is prose: never in events"
    assert latest_states(kafka, settings.topics.state, codec)[f"sumsub:{vid}"]["status"] == "APPROVED"
