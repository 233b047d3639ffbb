"""Stripe Identity's normalizer beyond its golden cases: every documented failure code kept as a
code and its prose never, one key per result along a session's life (state.repeat decides what a
repeat means), and the status API answer turned into the Event of the same result."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from processors.avro.records import event_to_record
from processors.model import ApiCredentials, Origin, RawDelivery, VerificationEvent
from processors.pipeline import normalize
from processors.providers import stripe_identity
from processors.state import apply, repeat

VS = "vs_1NuNAILkdIwHu7ixh7OtGMLw"
PROSE = "Jane Q Public's driving licence D1234567 could not be verified"
# VerificationSession.last_error.code, as stripe-python 15.3.1 lists them (stripe/identity/_verification_session.py).
CODES = (
    "abandoned",
    "consent_declined",
    "country_not_supported",
    "device_not_supported",
    "document_expired",
    "document_type_not_supported",
    "document_unverified_other",
    "email_unverified_other",
    "email_verification_declined",
    "id_number_insufficient_document_data",
    "id_number_mismatch",
    "id_number_unverified_other",
    "phone_unverified_other",
    "phone_verification_declined",
    "selfie_document_missing_photo",
    "selfie_face_mismatch",
    "selfie_manipulated",
    "selfie_unverified_other",
    "under_supported_age",
)


def _session(status: str, code: str | None = None, **more: Any) -> dict[str, Any]:
    error = {"code": code, "reason": PROSE} if code else None
    return {"id": VS, "object": "identity.verification_session", "status": status, "last_error": error, **more}


def _event(kind: str, created: int | None, code: str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": f"evt_{kind}_{created}",
        "object": "event",
        "type": f"identity.verification_session.{kind}",
        "data": {"object": _session(kind, code)},
    }
    if created is not None:
        doc["created"] = created
    return doc


def _deliver(doc: dict[str, Any], origin: Origin = "callback") -> VerificationEvent:
    body = json.dumps(doc).encode()
    received = datetime(2026, 1, 1, tzinfo=UTC)
    outcome = normalize(RawDelivery("r-1", "stripe_identity", "stripe_identity", "POST", received, body, origin=origin))
    assert isinstance(outcome, VerificationEvent), outcome
    return outcome


@pytest.mark.parametrize("code", CODES)
def test_every_documented_failure_is_its_code_and_never_its_prose(code: str) -> None:
    event = _deliver(_event("requires_input", 1695680640, code))
    assert event.status == "RESUBMISSION_REQUIRED"
    assert [(r.code, r.message, r.field) for r in event.reasons] == [(code, None, None)]
    assert "Jane" not in json.dumps(event_to_record(event), default=str)


def test_a_code_stripe_adds_later_is_still_kept_as_a_code() -> None:
    assert [r.code for r in _deliver(_event("requires_input", 1695680640, "liveness_failed")).reasons] == [
        "liveness_failed"
    ]


def test_the_event_time_orders_results_not_the_session_creation() -> None:
    doc = _event("verified", 1695681300)
    doc["data"]["object"]["created"] = 1695680526
    assert _deliver(doc).occurred_at == datetime(2023, 9, 25, 22, 35, tzinfo=UTC)
    assert _deliver(_event("verified", None)).occurred_at is None


def test_each_failure_and_resubmission_of_a_session_is_its_own_result() -> None:
    """requires_input -> processing -> requires_input (same code) -> processing -> verified: five
    results, each with its own key; a redelivery of any of them is the same key."""
    life = [
        _event("requires_input", 1000, "document_expired"),
        _event("processing", 2000),
        _event("requires_input", 3000, "document_expired"),
        _event("processing", 4000),
        _event("verified", 5000),
    ]
    events = [_deliver(doc) for doc in life]
    assert len({e.idempotency_key for e in events}) == 5
    assert [_deliver(doc).idempotency_key for doc in life] == [e.idempotency_key for e in events]

    state = None
    now = datetime(2026, 1, 1, tzinfo=UTC)
    for event in events:
        state = apply(state, event, now)
    assert state is not None and state.status == "APPROVED" and state.event_count == 5


def test_a_verified_session_said_verified_again_later_is_a_reversal_only_after_another_decision() -> None:
    """verified is keyed by session and status (so a polled session shares it); a repeat of the same
    words is new only when, by Stripe's time, a different decision came in between."""
    now = datetime(2026, 1, 1, tzinfo=UTC)
    verified, failed, verified_again = (
        _deliver(_event("verified", 1000)),
        _deliver(_event("requires_input", 2000, "selfie_manipulated")),
        _deliver(_event("verified", 3000)),
    )
    assert verified.idempotency_key == verified_again.idempotency_key
    state = apply(None, verified, now)
    assert repeat(state, verified) == "duplicate"
    state = apply(state, failed, now)
    assert repeat(state, verified_again) == "reversal"


def test_the_poll_asks_for_the_session_without_its_verified_data() -> None:
    request = stripe_identity.poll_request(VS, {}, ApiCredentials("sk_test_123"))
    assert request.method == "GET"
    assert request.path == f"/v1/identity/verification_sessions/{VS}"
    assert request.headers == {"authorization": "Bearer sk_test_123"}
    assert request.params == {}, "no expand[]: verified_outputs is never fetched"


def test_a_polled_session_carries_only_codes_and_ids() -> None:
    answer = _session(
        "verified",
        None,
        client_reference_id="user_8f2c41",
        client_secret="vs_..._secret_abc",
        url="https://verify.stripe.com/start/abc",
        metadata={"note": PROSE},
        provided_details={"email": "jane.public@example.com"},
        verified_outputs={"first_name": "Jane", "last_name": "Public", "dob": {"day": 1, "month": 2, "year": 1990}},
        last_verification_report="vr_1",
        livemode=True,
        type="document",
    )
    body = stripe_identity.poll_result(VS, {}, answer)
    assert body is not None
    text = json.dumps(body)
    for secret_or_personal in ("secret_abc", "verify.stripe.com", "Jane", "example.com", "1990"):
        assert secret_or_personal not in text
    polled = _deliver(body, "poll")
    assert (polled.status, polled.idempotency_key, polled.subject_id) == (
        "APPROVED",
        _deliver(_event("verified", 5000)).idempotency_key,
        "user_8f2c41",
    )


def test_a_polled_failure_keeps_its_code_and_a_session_not_submitted_is_no_result() -> None:
    body = stripe_identity.poll_result(VS, {}, _session("requires_input", "document_expired"))
    assert body is not None and PROSE not in json.dumps(body)
    assert [r.code for r in _deliver(body, "poll").reasons] == ["document_expired"]
    assert stripe_identity.poll_result(VS, {}, _session("requires_input")) is None
    assert stripe_identity.poll_result(VS, {}, _session("verified") | {"id": "vs_other"}) is None
    assert stripe_identity.poll_result(VS, {}, {"object": "identity.verification_report", "status": "verified"}) is None
