"""Sumsub (processors/providers/sumsub.py) beyond its golden cases: reviewers' prose never reaches
an event, a reversal is ordered by createdAtMs, and the signed status poll."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from processors import state
from processors.avro.records import event_to_record
from processors.model import ApiCredentials, RawDelivery, VerificationEvent, VerificationStatus
from processors.pipeline import normalize
from processors.providers import sumsub
from tests import cases

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _event(doc: dict[str, Any], origin: str = "callback") -> VerificationEvent:
    delivery = RawDelivery("r-1", "sumsub", "sumsub", "POST", NOW, json.dumps(doc).encode(), origin=origin)  # type: ignore[arg-type]
    outcome = normalize(delivery)
    assert isinstance(outcome, VerificationEvent), outcome
    return outcome


def _reviewed(answer: str, moment: str, reject_type: str | None = None) -> dict[str, Any]:
    result = {"reviewAnswer": answer} | ({"reviewRejectType": reject_type} if reject_type else {})
    return {"applicantId": "a-1", "type": "applicantReviewed", "reviewResult": result, "createdAtMs": moment}


@pytest.mark.parametrize("case", [c for c in cases.load("sumsub") if c.event], ids=lambda c: c.id)
def test_reviewer_comments_never_reach_an_event(case: cases.Case) -> None:
    doc = json.loads(case.body)
    result = doc.get("reviewResult", {})
    prose = [result[key].strip() for key in ("moderationComment", "clientComment") if result.get(key)]
    text = json.dumps(event_to_record(_event(doc)), default=str)
    assert not [p for p in prose if p in text]


def test_approved_then_rejected_then_approved_is_three_results_ordered_by_created_at_ms() -> None:
    """Sumsub may approve, then reject the same applicant (and a reviewer may approve again): the
    words repeat, so the key does; `createdAtMs` makes the second approval a reversal, while a
    resend of any of them stays a duplicate."""
    green, red, green_again = (
        _event(_reviewed("GREEN", "2026-05-08 10:30:00.000")),
        _event(_reviewed("RED", "2026-05-08 11:45:00.000", "FINAL")),
        _event(_reviewed("GREEN", "2026-05-08 12:10:00.000")),
    )
    assert green.idempotency_key == green_again.idempotency_key == "sumsub:a-1:GREEN"
    current = state.apply(state.apply(None, green, NOW), red, NOW)
    assert current.status is VerificationStatus.REJECTED
    assert state.repeat(current, green_again) == "reversal"
    assert state.repeat(current, green) == "duplicate", "the first approval, resent: older than the rejection"


def test_poll_request_signs_with_the_app_token_and_secret_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sumsub, "_clock", lambda: 1_607_551_635.7)
    request = sumsub.poll_request("5cb56e8e0a975a35f333cb83", {}, ApiCredentials("sbx:app-token", "secret-key"))
    path = "/resources/applicants/5cb56e8e0a975a35f333cb83/status"
    expected = hmac.new(b"secret-key", f"1607551635GET{path}".encode(), hashlib.sha256).hexdigest()
    assert (request.method, request.path, request.params) == ("GET", path, {})
    assert request.headers == {
        "x-app-token": "sbx:app-token",
        "x-app-access-ts": "1607551635",
        "x-app-access-sig": expected,
    }


@pytest.mark.parametrize(
    ("review_status", "status", "provider_status"),
    [
        ("init", VerificationStatus.PENDING, "applicantCreated"),
        ("pending", VerificationStatus.PENDING, "applicantPending"),
        ("queued", VerificationStatus.PENDING, "applicantPending"),
        ("prechecked", VerificationStatus.PENDING, "applicantPrechecked"),
        ("awaitingService", VerificationStatus.PENDING, "applicantAwaitingService"),
        ("onHold", VerificationStatus.REVIEW, "applicantOnHold"),
    ],
)
def test_a_polled_status_that_is_no_decision_is_its_progress_once(
    review_status: str, status: VerificationStatus, provider_status: str
) -> None:
    answer = {"reviewId": "r", "createDate": "2020-02-21 13:20:01+0000", "reviewStatus": review_status}
    first, again = (_event(sumsub.poll_result("a-1", {}, answer) or {}, "poll") for _ in range(2))
    assert (first.status, first.provider_status) == (status, provider_status)
    assert first.idempotency_key == again.idempotency_key, "the same answer polled again is one event"


def test_a_polled_answer_without_a_known_status_is_no_result() -> None:
    assert sumsub.poll_result("a-1", {}, {"reviewId": "r"}) is None
    assert sumsub.poll_result("a-1", {}, {"reviewStatus": "completed"}) is None, "completed without an answer"
    assert sumsub.poll_result("a-1", {}, {"reviewStatus": "teleported"}) is None
