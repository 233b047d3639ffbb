"""Veriff (processors/providers/veriff.py) beyond its golden cases: the reason's prose never reaches
an event, a decision overridden back is ordered by decisionTime, and the signed decision poll."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from processors import state
from processors.avro.records import event_to_record
from processors.model import ApiCredentials, RawDelivery, VerificationEvent, VerificationStatus
from processors.pipeline import normalize
from processors.providers import veriff

NOW = datetime(2026, 1, 1, tzinfo=UTC)
SESSION = "aea9ba6d-1b47-47fc-a4fc-f72b6d3584a7"


def _event(doc: dict[str, Any]) -> VerificationEvent:
    outcome = normalize(RawDelivery("r-1", "veriff", "veriff", "POST", NOW, json.dumps(doc).encode()))
    assert isinstance(outcome, VerificationEvent), outcome
    return outcome


def _decision(word: str, moment: str, reason_code: int | None = None, reason: str | None = None) -> dict[str, Any]:
    verification = {"id": SESSION, "status": word, "decisionTime": moment, "reasonCode": reason_code, "reason": reason}
    return {"status": "success", "verification": verification}


def test_a_decline_carries_its_reason_code_never_its_reason_text() -> None:
    event = _event(_decision("declined", "2026-05-08T10:30:00.000Z", 102, "Suspected document tampering"))
    assert [r.code for r in event.reasons] == ["102"]
    assert "tampering" not in json.dumps(event_to_record(event), default=str)


def test_a_review_overridden_back_is_a_new_event_ordered_by_decision_time() -> None:
    approved, declined, approved_again = (
        _event(_decision("approved", "2026-05-08T10:30:00.000Z")),
        _event(_decision("declined", "2026-05-08T11:45:00.000Z", 106)),
        _event(_decision("approved", "2026-05-08T12:10:00.000Z")),
    )
    assert approved.idempotency_key == approved_again.idempotency_key
    current = state.apply(state.apply(None, approved, NOW), declined, NOW)
    assert current.status is VerificationStatus.REJECTED
    assert state.repeat(current, approved_again) == "reversal"
    assert state.repeat(current, approved) == "duplicate", "the first approval, retried: older than the decline"


def test_poll_request_signs_the_session_id_as_veriff_documents() -> None:
    request = veriff.poll_request(SESSION, {}, ApiCredentials("api-key", "abcdef12-abcd-abcd-abcd-abcdef012345"))
    assert (request.method, request.path) == ("GET", f"/v1/sessions/{SESSION}/decision")
    assert request.headers == {
        "x-auth-client": "api-key",
        # Veriff's published value for this session id and shared secret.
        "x-hmac-signature": "895cb3fd31139d89aeb7b263682e15479ab57651e70591256ad2c14fde4950dd",
    }


def test_a_decision_not_made_yet_is_no_poll_result() -> None:
    assert veriff.poll_result(SESSION, {}, {"status": "success", "verification": None}) is None
    assert veriff.poll_result(SESSION, {}, {"status": "success", "verification": {"id": SESSION}}) is None
