"""Persona through the real gateway (its declared Persona-Signature scheme), broker, processor and
reconciler: a signed inquiry event becomes its event, a forged one never reaches Kafka, a reversal
by `created-at` is a new event while retries are not, and a polled inquiry and its late callback
make one event."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.settings import GatewaySettings
from processors.kafka.serde import Codec
from processors.settings import KafkaSettings
from tests.conftest import (
    EXPECTATIONS_API_KEY,
    committed_to_end,
    latest_states,
    post,
    processing,
    read,
    reconciling,
    serving_app,
    unique,
    wait_until,
)
from tests.credentials import auth_headers

pytestmark = pytest.mark.broker

TIMES = ("2026-05-08T10:30:00.000Z", "2026-05-08T11:45:00.000Z", "2026-05-08T12:10:00.000Z")
WORDS = {"inquiry.approved": "approved", "inquiry.declined": "declined", "inquiry.completed": "completed"}


def _event(inquiry: str, name: str, created_at: str) -> dict[str, Any]:
    attributes = {"status": WORDS[name], "reference-id": "user-8842", "name-first": "Jane", "birthdate": "1994-04-12"}
    payload = {"data": {"type": "inquiry", "id": inquiry, "attributes": attributes}}
    return {
        "data": {
            "type": "event",
            "id": unique("evt"),
            "attributes": {"name": name, "payload": payload, "created-at": created_at},
        }
    }


def _signature(body: bytes, secret: bytes, t: int) -> str:
    """As Persona documents it, computed here independently of processors.signing."""
    return hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()


def _send(url: str, settings: GatewaySettings, doc: dict[str, Any]) -> None:
    body = json.dumps(doc).encode()
    response = post(f"{url}/webhooks/persona", body, auth_headers(settings.sources["persona"], body))
    assert response.status_code == 200, response.text


def test_a_signed_inquiry_event_becomes_its_event_and_a_forged_one_never_reaches_kafka(
    gateway: tuple[str, GatewaySettings], kafka: KafkaSettings, codec: Codec
) -> None:
    url, settings = gateway
    inquiry = unique("inq")
    body = json.dumps(_event(inquiry, "inquiry.approved", TIMES[0])).encode()
    now = int(time.time())
    good = _signature(body, b"dev-secret", now)
    refused = {
        "tampered": (body.replace(b"approved", b"declined"), f"t={now},v1={good}"),
        "wrong secret": (body, f"t={now},v1={_signature(body, b'not-the-secret', now)}"),
        "stale": (body, f"t={now - 3600},v1={_signature(body, b'dev-secret', now - 3600)}"),
        "no signature": (body, ""),
    }
    for what, (sent, header) in refused.items():
        response = post(f"{url}/webhooks/persona", sent, {"persona-signature": header} if header else {})
        assert response.status_code == 401, (what, response.text)
    assert read(kafka, settings.topics.raw, codec, "RawDelivery") == [], "a refused delivery never reaches Kafka"

    # During a secret rotation Persona sends two space-separated sets; the configured secret's is second.
    rotated = f"t={now},v1={_signature(body, b'old-secret', now)} t={now},v1={good}"
    assert post(f"{url}/webhooks/persona", body, {"persona-signature": rotated}).status_code == 200
    raw = read(kafka, settings.topics.raw, codec, "RawDelivery", at_least=1)
    assert [r["_key"] for r in raw] == [f"persona:{inquiry}".encode()]

    group = unique("proc")
    with processing(kafka, settings.topics, group_id=group):
        wait_until(lambda: committed_to_end(kafka, group, settings.topics.raw), 60, "the delivery processed")
    [event] = read(kafka, settings.topics.events, codec, "VerificationEvent")
    assert (event["provider"], event["verification_id"], event["status"]) == ("persona", inquiry, "APPROVED")
    assert event["provider_status"] == "inquiry.approved" and event["subject_id"] == "user-8842"
    assert "Jane" not in json.dumps(event, default=str), "the person's data stays in the raw topic"


def test_a_reversal_by_created_at_is_a_new_event_and_retries_are_not(
    gateway: tuple[str, GatewaySettings], kafka: KafkaSettings, codec: Codec
) -> None:
    url, settings = gateway
    inquiry = unique("inq")
    names = ("inquiry.approved", "inquiry.declined", "inquiry.approved")
    bodies = [_event(inquiry, name, moment) for name, moment in zip(names, TIMES, strict=True)]
    late_progress = _event(inquiry, "inquiry.completed", TIMES[0])  # completed, delivered after the decisions
    group = unique("proc")
    with processing(kafka, settings.topics, group_id=group):
        for doc in [*bodies, *bodies, late_progress]:  # each decision retried once by Persona
            _send(url, settings, doc)
        wait_until(lambda: committed_to_end(kafka, group, settings.topics.raw), 60, "every delivery processed")
    events = read(kafka, settings.topics.events, codec, "VerificationEvent")
    assert [e["status"] for e in events if e["status"] != "PENDING"] == ["APPROVED", "REJECTED", "APPROVED"]
    assert len({e["event_id"] for e in events}) == len(events)
    assert latest_states(kafka, settings.topics.state, codec)[f"persona:{inquiry}"]["status"] == "APPROVED"


class InquiryApi:
    """A local stand-in of Persona's Retrieve an Inquiry (GET /api/v1/inquiries/{id}, Bearer key)."""

    def __init__(self, answer: dict[str, Any]) -> None:
        self.answer = answer
        self.calls: list[tuple[str, str]] = []

    async def inquiry(self, request: Request) -> Response:
        self.calls.append((request.path_params["inquiry"], request.headers.get("authorization", "")))
        return JSONResponse(self.answer)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/api/v1/inquiries/{inquiry}", self.inquiry, methods=["GET"])])


@pytest.fixture
def inquiry_api() -> Iterator[tuple[InquiryApi, str]]:
    api = InquiryApi({})
    with serving_app(api.app()) as url:
        yield api, url


def test_a_polled_inquiry_and_its_late_callback_give_one_event(
    gateway_with_expectations: tuple[str, GatewaySettings],
    inquiry_api: tuple[InquiryApi, str],
    kafka: KafkaSettings,
    codec: Codec,
) -> None:
    url, settings = gateway_with_expectations
    api, api_url = inquiry_api
    inquiry = unique("inq")
    attributes = {"status": "approved", "decisioned-at": "2026-05-08T10:29:59.000Z", "name-first": "Jane"}
    api.answer = {"data": {"type": "inquiry", "id": inquiry, "attributes": attributes}}
    expected = json.dumps({"verification_id": inquiry, "window_s": 1}).encode()
    response = post(f"{url}/expectations/persona", expected, {"authorization": f"Bearer {EXPECTATIONS_API_KEY}"})
    assert response.status_code == 200, response.text
    sources = {
        "persona": {"provider": "persona", "poll": {"base_url": api_url, "token": "persona-api-key", "window_s": 1}}
    }
    group = unique("proc")
    with processing(kafka, settings.topics, group_id=group), reconciling(kafka, settings.topics, sources):
        events = read(kafka, settings.topics.events, codec, "VerificationEvent", at_least=1, timeout=30)
        assert [(e["verification_id"], e["status"]) for e in events] == [(inquiry, "APPROVED")]
        _send(url, settings, _event(inquiry, "inquiry.approved", TIMES[0]))
        wait_until(lambda: committed_to_end(kafka, group, settings.topics.raw), 30, "the callback processed")
    assert api.calls[0] == (inquiry, "Bearer persona-api-key")
    raw = read(kafka, settings.topics.raw, codec, "RawDelivery")
    assert sorted(r["origin"] for r in raw) == ["callback", "poll"]
    assert b"Jane" not in next(r["body"] for r in raw if r["origin"] == "poll"), "a poll keeps ids and status only"
    assert len(read(kafka, settings.topics.events, codec, "VerificationEvent")) == 1
