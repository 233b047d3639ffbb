"""Stripe Identity through the real gateway (its declared `Stripe-Signature` scheme) and the real
processor; and its status API polled by the real reconciler from a local stand-in of Stripe."""

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
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.settings import GatewaySettings
from processors import signing
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
SOURCE = "stripe_identity"


def _event(vid: str, kind: str, created: int, code: str | None = None) -> dict[str, Any]:
    error = {"code": code, "reason": "The document is expired."} if code else None
    session = {"id": vid, "object": "identity.verification_session", "status": kind, "last_error": error}
    return {
        "id": unique("evt"),
        "object": "event",
        "created": created,
        "type": f"identity.verification_session.{kind}",
        "data": {"object": {**session, "client_reference_id": "user_8f2c41", "type": "document", "livemode": False}},
    }


def _signed(body: bytes, secret: str = "dev-secret", at: float | None = None) -> dict[str, str]:
    return signing.sign(signing.STRIPE, body, secret.encode(), time.time() if at is None else at)


def _rolled(body: bytes, *secrets: str) -> str:
    """`t=…,v1=…,v1=…`: one signature per secret, as Stripe sends during a secret roll."""
    t = str(int(time.time()))
    signed = [hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest() for secret in secrets]
    return f"t={t}," + ",".join(f"v1={v1}" for v1 in signed)


def test_a_signed_event_becomes_its_event_and_a_refused_one_never_reaches_kafka(
    gateway: tuple[str, GatewaySettings], kafka: KafkaSettings, codec: Codec
) -> None:
    url, settings = gateway
    hook = f"{url}/webhooks/{SOURCE}"
    vid = unique("vs")
    failed = json.dumps(_event(vid, "requires_input", 1695680640, "document_expired")).encode()
    verified = json.dumps(_event(vid, "verified", 1695681300)).encode()

    tampered = post(hook, verified.replace(b'"verified"', b'"canceled"', 1), _signed(verified))
    stale = post(hook, verified, _signed(verified, at=time.time() - 400))
    wrong = post(hook, verified, _signed(verified, secret="whsec_someone_else"))
    for refused in (tampered, stale, wrong):
        assert refused.status_code == 401, refused.text
        assert refused.json()["error"] == "unauthorized"

    accepted = [post(hook, body, auth_headers(settings.sources[SOURCE], body)) for body in (failed, verified)]
    # A secret roll: Stripe signs with both secrets; one v1 matching is enough.
    accepted.append(post(hook, verified, {"stripe-signature": _rolled(verified, "whsec_old", "dev-secret")}))
    assert [r.status_code for r in accepted] == [200, 200, 200], [r.text for r in accepted]

    raw = read(kafka, settings.topics.raw, codec, "RawDelivery", at_least=3)
    assert sorted(r["request_id"] for r in raw) == sorted(r.json()["request_id"] for r in accepted)

    group = unique("proc")
    with processing(kafka, settings.topics, group_id=group):
        wait_until(lambda: committed_to_end(kafka, group, settings.topics.raw), 60, "every delivery processed")
    events = read(kafka, settings.topics.events, codec, "VerificationEvent")
    assert [(e["verification_id"], e["status"], [r["code"] for r in e["reasons"]]) for e in events] == [
        (vid, "RESUBMISSION_REQUIRED", ["document_expired"]),
        (vid, "APPROVED", []),
    ], "the redelivered verified Event is one result"
    assert all(r["message"] is None for e in events for r in e["reasons"])
    assert latest_states(kafka, settings.topics.state, codec)[f"{SOURCE}:{vid}"]["status"] == "APPROVED"


class _StripeStandIn:
    """GET /v1/identity/verification_sessions/{id}: the session, verified; records what was asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str, str]] = []  # (path, authorization, query)

    async def session(self, request: Request) -> JSONResponse:
        vid = request.path_params["vid"]
        self.asked.append((request.url.path, request.headers.get("authorization", ""), request.url.query))
        return JSONResponse(
            {
                "id": vid,
                "object": "identity.verification_session",
                "created": 1695680526,
                "last_error": None,
                "last_verification_report": "vr_1NuNF3LkdIwHu7ixS1Ns2cc3",
                "livemode": False,
                "status": "verified",
                "type": "document",
                "client_secret": None,
                "url": None,
            }
        )


@pytest.fixture
def stripe_api() -> Iterator[tuple[_StripeStandIn, str]]:
    stand_in = _StripeStandIn()
    app = Starlette(routes=[Route("/v1/identity/verification_sessions/{vid}", stand_in.session, methods=["GET"])])
    with serving_app(app) as url:
        yield stand_in, url


def test_a_missing_event_is_polled_and_the_late_verified_event_adds_nothing(
    gateway_with_expectations: tuple[str, GatewaySettings],
    stripe_api: tuple[_StripeStandIn, str],
    kafka: KafkaSettings,
    codec: Codec,
) -> None:
    url, settings = gateway_with_expectations
    stand_in, api_url = stripe_api
    vid = unique("vs")
    expected = json.dumps({"verification_id": vid, "lookup": {}}).encode()
    expecting = post(f"{url}/expectations/{SOURCE}", expected, {"authorization": f"Bearer {EXPECTATIONS_API_KEY}"})
    assert expecting.status_code == 200, expecting.text
    sources = {SOURCE: {"provider": SOURCE, "poll": {"base_url": api_url, "token": "sk_test_123", "window_s": 1}}}
    group = unique("proc")
    with processing(kafka, settings.topics, group_id=group), reconciling(kafka, settings.topics, sources):
        events = read(kafka, settings.topics.events, codec, "VerificationEvent", at_least=1, timeout=30)
        assert [(e["verification_id"], e["status"]) for e in events] == [(vid, "APPROVED")]
        assert stand_in.asked[0] == (f"/v1/identity/verification_sessions/{vid}", "Bearer sk_test_123", "")

        late = json.dumps(_event(vid, "verified", 1695681300)).encode()
        assert post(f"{url}/webhooks/{SOURCE}", late, _signed(late)).status_code == 200
        wait_until(lambda: committed_to_end(kafka, group, settings.topics.raw), 30, "the late Event processed")
    assert len(read(kafka, settings.topics.events, codec, "VerificationEvent")) == 1
    assert latest_states(kafka, settings.topics.state, codec)[f"{SOURCE}:{vid}"]["status"] == "APPROVED"
