"""Incode onboarding-status webhooks and session webhooks (seed 002).

Onboarding status (documented body): {"interviewId", "onboardingStatus", "externalId"?}; the
sample servers Incode publishes read exactly `interviewId` and `onboardingStatus`. The session
webhooks (Session Started / Failed / Succeeded / Pending Review) have no public payload schema,
so the event name is read from whichever of `event`, `eventType`, `type` or `status` carries a
known word, and the session id from `interviewId`, `sessionId` or `session_id`.

Auth: Incode sends the static custom headers configured in Dashboard > Configuration > Webhooks
with every webhook; a shared secret in one of them is the check that works for every Incode
webhook. (Incode's other option, OAuth 2.0 client credentials against a token endpoint of yours,
needs an endpoint the gateway does not serve.) Incode signs nothing, so there is no HMAC to check.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from processors.model import AuthSpec, Check, CheckOutcome, Normalized, PollRequest, Rejection, VerificationStatus
from processors.providers._read import obj, scalar_attributes, text, timestamp, word_check

NAME = "incode"
DEFAULT_AUTH = AuthSpec(scheme="api_key", header="x-incode-webhook-secret")
METHODS = ("POST",)
HEADERS: tuple[str, ...] = ()

_PENDING_PREFIXES = ("ID_VALIDATION_", "POST_PROCESSING_", "FACE_VALIDATION_", "GOVERNMENT_VALIDATION_")
_STATUS = {
    "ONBOARDING_FINISHED": VerificationStatus.PENDING,
    "UNKNOWN": VerificationStatus.PENDING,
    "SESSION_STARTED": VerificationStatus.PENDING,
    "MANUAL_REVIEW_APPROVED": VerificationStatus.APPROVED,
    "SESSION_SUCCEEDED": VerificationStatus.APPROVED,
    "MANUAL_REVIEW_REJECTED": VerificationStatus.REJECTED,
    "SESSION_FAILED": VerificationStatus.REJECTED,
    "SESSION_PENDING_REVIEW": VerificationStatus.REVIEW,
}
_SESSION_EVENT_FIELDS = ("event", "eventType", "type", "status")
_SEPARATORS = re.compile(r"[\s._-]+")
_MODULE_OUTCOMES = {
    "OK": CheckOutcome.PASS,
    "PASS": CheckOutcome.PASS,
    "PASSED": CheckOutcome.PASS,
    "FAIL": CheckOutcome.FAIL,
    "FAILED": CheckOutcome.FAIL,
    "ERROR": CheckOutcome.ERROR,
}


def verification_id(doc: Mapping[str, Any]) -> str | None:
    return text(doc.get("interviewId")) or text(doc.get("sessionId")) or text(doc.get("session_id"))


def normalize(doc: Mapping[str, Any], headers: Mapping[str, str]) -> Normalized | Rejection:
    vid = verification_id(doc)
    if vid is None:
        return Rejection("missing_verification_id", "incode payload has no interviewId (or sessionId)")
    found = _status_word(doc)
    if found is None:
        return Rejection("unrecognized_event", "incode payload has no onboardingStatus nor a session event name")
    word, field = found
    canonical = _canonical(word)
    status = _status(canonical)
    if status is None:
        return Rejection("unknown_status", f"incode {field} {word!r} has no mapping")
    return Normalized(
        verification_id=vid,
        status=status,
        provider_status=canonical,
        idempotency_key=f"{NAME}:{vid}:{canonical}",
        occurred_at=timestamp(doc.get("timestamp")),
        event_type="onboarding_status" if field == "onboardingStatus" else "session",
        subject_id=text(doc.get("externalId")) or text(doc.get("externalCustomerId")),
        session_id=vid,
        checks=_checks(doc.get("modules")),
        attributes=scalar_attributes(doc, "clientId", "flowId"),
    )


def _status_word(doc: Mapping[str, Any]) -> tuple[str, str] | None:
    """The status word and the field it came from: onboardingStatus is authoritative when present;
    otherwise the first session-event field holding a known word, else the first one present."""
    onboarding = text(doc.get("onboardingStatus"))
    if onboarding is not None:
        return onboarding, "onboardingStatus"
    present = [(word, name) for name in _SESSION_EVENT_FIELDS if (word := text(doc.get(name))) is not None]
    known = [(word, name) for word, name in present if _status(_canonical(word)) is not None]
    candidates = known or present
    return candidates[0] if candidates else None


def _canonical(word: str) -> str:
    # "Session Started", "session.started" and "SESSION_STARTED" are one word.
    return _SEPARATORS.sub("_", word.strip()).upper()


def _status(canonical: str) -> VerificationStatus | None:
    if canonical.startswith(_PENDING_PREFIXES):
        return VerificationStatus.PENDING
    return _STATUS.get(canonical)


def _checks(value: object) -> tuple[Check, ...]:
    """Per-module outcomes, when a payload carries them: {"<module>": "OK" | {"status": "OK"}} or
    [{"module" | "name": "<module>", "status": "OK"}]. Other words are kept as SKIPPED with the word."""
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, list):
        items = [(text(obj(item).get("module")) or text(obj(item).get("name")), item) for item in value]
    else:
        return ()
    checks = []
    for name, outcome in items:
        word = text(obj(outcome).get("status")) if isinstance(outcome, Mapping) else text(outcome)
        if name:
            checks.append(word_check(name, word, _MODULE_OUTCOMES))
    return tuple(checks)


# --- reconciliation: the onboarding-status endpoint (GET /omni/get/onboarding/status?id=...) -----


def poll_request(verification_id: str, lookup: Mapping[str, str], token: str) -> PollRequest:
    return PollRequest(
        path="/omni/get/onboarding/status",
        headers={"x-api-key": token, "api-version": "1.0"},
        params={"id": verification_id},
    )


def poll_result(verification_id: str, lookup: Mapping[str, str], answer: Mapping[str, Any]) -> dict[str, Any] | None:
    status = text(answer.get("onboardingStatus"))
    if status is None:
        return None
    return {"interviewId": verification_id, "onboardingStatus": status}
