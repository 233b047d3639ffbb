"""Veriff webhooks (devdocs.veriff.com: Decision webhook, Event webhook, Webhooks Guide, HMAC
Authentication and Endpoint Security).

Auth: `X-HMAC-SIGNATURE`, the hex HMAC-SHA256 of the raw body with the integration's shared secret
key (signing.VERIFF); Veriff also sends the API key as `X-AUTH-CLIENT`, which proves nothing.
Decision webhook: {"status": "success", "verification": {"id", "attemptId", "vendorData",
"endUserId", "status", "code", "reason", "reasonCode", "decisionTime", "acceptanceTime",
"person", "document", ...}, "technicalData"}. Event webhook (progress): {"id", "attemptId",
"feature", "code": 7001 | 7002, "action": "started" | "submitted", "vendorData", "endUserId"}.
Personal data: `person`, `document` and `technicalData` are never read; nor is `reason`, the prose
of `reasonCode`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from processors import signing
from processors.model import ApiCredentials, Normalized, Notice, PollRequest, Reason, Rejection, VerificationStatus
from processors.providers._read import obj, scalar_attributes, text, timestamp

NAME = "veriff"
DEFAULT_AUTH = signing.VERIFF
METHODS = ("POST",)
HEADERS: tuple[str, ...] = ()
# Kafka away and no spool: 503 with Retry-After. On any answer but 200 Veriff keeps trying to
# deliver about once an hour for up to 7 days, or until a delivery succeeds.
UNAVAILABLE_STATUS = 503
FETCHES: dict[str, str] = {}  # every callback carries its result

_DECISION = {
    "approved": VerificationStatus.APPROVED,
    "declined": VerificationStatus.REJECTED,
    "resubmission_requested": VerificationStatus.RESUBMISSION_REQUIRED,
    "review": VerificationStatus.REVIEW,
    # The end user did not finish in time, or left: this session will have no result.
    "expired": VerificationStatus.EXPIRED,
    "abandoned": VerificationStatus.EXPIRED,
}
_PROGRESS = {"started", "submitted"}  # event webhook actions (codes 7001, 7002)


def verification_id(doc: Mapping[str, Any]) -> str | None:
    verification = doc.get("verification")
    if isinstance(verification, Mapping):
        return text(verification.get("id"))
    return text(doc.get("id"))


def normalize(doc: Mapping[str, Any], headers: Mapping[str, str]) -> Normalized | Notice | Rejection:
    if (kind := _notice_kind(doc)) is not None:
        return Notice(kind)
    verification = doc.get("verification")
    if isinstance(verification, Mapping):
        return _decision(verification)
    if text(doc.get("action")) is not None:
        return _event(doc)
    return Rejection("unrecognized_event", "veriff payload is neither a decision (verification) nor an event (action)")


def _decision(verification: Mapping[str, Any]) -> Normalized | Rejection:
    vid = text(verification.get("id"))
    if vid is None:
        return Rejection("missing_verification_id", "veriff decision has no verification.id")
    word = text(verification.get("status"))
    if word is None:
        return Rejection("unrecognized_event", "veriff decision has no verification.status")
    status = _DECISION.get(word.lower())
    if status is None:
        return Rejection("unknown_status", f"veriff verification.status {word!r} has no mapping")
    reason_code = text(verification.get("reasonCode"))
    moment = timestamp(verification.get("decisionTime")) or timestamp(verification.get("acceptanceTime"))
    return Normalized(
        verification_id=vid,
        status=status,
        provider_status=word.lower(),
        # The decision, not the delivery: a retry and the polled decision agree; a later decision
        # with words seen before (a review overridden back) is new by its decisionTime (state.repeat).
        idempotency_key=f"{NAME}:{vid}:{word.lower()}",
        occurred_at=moment,
        event_type="decision",
        subject_id=text(verification.get("endUserId")) or text(verification.get("vendorData")),
        session_id=text(verification.get("attemptId")),
        reasons=(Reason(reason_code),) if reason_code else (),
        attributes=scalar_attributes(verification, "code"),
    )


def _event(doc: Mapping[str, Any]) -> Normalized | Rejection:
    vid = text(doc.get("id"))
    if vid is None:
        return Rejection("missing_verification_id", "veriff event webhook has no id")
    action = (text(doc.get("action")) or "").lower()
    if action not in _PROGRESS:
        return Rejection("unknown_status", f"veriff event action {action!r} has no mapping")
    attempt = text(doc.get("attemptId"))
    return Normalized(
        verification_id=vid,
        status=VerificationStatus.PENDING,
        provider_status=action,
        # An event carries no time: one per attempt and action (a resubmission is a new attempt).
        idempotency_key=f"{NAME}:{vid}:{action}:{attempt or ''}",
        event_type="event",
        subject_id=text(doc.get("endUserId")) or text(doc.get("vendorData")),
        session_id=attempt,
        attributes=scalar_attributes(doc, "code", "feature"),
    )


def _notice_kind(doc: Mapping[str, Any]) -> str | None:
    """Veriff's other webhooks, each sent to its own URL, told by what only they carry: watchlist
    screening (`checkType`, `matchStatus`) and user-defined statuses (`eventType` user-status.*)."""
    if doc.get("checkType") is not None or doc.get("matchStatus") is not None:
        return "watchlist_screening"
    if (text(doc.get("eventType")) or "").lower().startswith("user-status"):
        return "user_defined_status"
    return None


# --- reconciliation: the session decision (GET /v1/sessions/{id}/decision) ----------------------
# X-AUTH-CLIENT is the API key (poll.token); X-HMAC-SIGNATURE the hex HMAC-SHA256 of the session id
# with the shared secret key (poll.admin_token).


def poll_request(verification_id: str, lookup: Mapping[str, str], credentials: ApiCredentials) -> PollRequest:
    secret = (credentials.admin_token or "").encode()
    return PollRequest(
        path=f"/v1/sessions/{verification_id}/decision",
        headers={
            "x-auth-client": credentials.token,
            "x-hmac-signature": hmac.new(secret, verification_id.encode(), hashlib.sha256).hexdigest(),
        },
    )


def poll_result(verification_id: str, lookup: Mapping[str, str], answer: Mapping[str, Any]) -> dict[str, Any] | None:
    """The decision answer has the decision webhook's shape; `verification: null` is no decision yet."""
    verification = obj(answer.get("verification"))
    if text(verification.get("status")) is None:
        return None
    return {"status": text(answer.get("status")) or "success", "verification": {**verification, "id": verification_id}}
