"""Esign (Indonesian e-sign KYC, OneKYC partner API) submission-result callbacks (seed 000).

Auth: whatever the partner configured with Esign: Bearer token (default), Basic or an API-key
header. Methods: POST, PUT or PATCH, as configured on Esign's side.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from processors.model import (
    ApiCredentials,
    AuthSpec,
    Check,
    CheckOutcome,
    Normalized,
    PollRequest,
    Reason,
    Rejection,
    VerificationStatus,
)
from processors.providers._read import obj, scalar_attributes, text, timestamp, word_check

NAME = "esign"
DEFAULT_AUTH = AuthSpec(scheme="bearer")
METHODS = ("POST", "PUT", "PATCH")
HEADERS: tuple[str, ...] = ()
# Kafka away and no spool: "If the platform does not receive a 2xx response within the timeout
# window, it may retry" (seed 000): 503 with Retry-After.
UNAVAILABLE_STATUS = 503
FETCHES: dict[str, str] = {}  # every callback carries its result

REASON_MESSAGES = {
    "DUKCAPIL_REJECTED": "identity data does not match the Dukcapil records",
    "DUKCAPIL_IRRETRIEVABLE_ERROR": "Dukcapil could not process the given data; ask the user to retry",
    "EMAIL_HAS_BEEN_USED": "email already belongs to another user; prompt for a different email",
    "PHONE_HAS_BEEN_USED": "phone already belongs to another user; prompt for a different phone",
    "SYSTEM_ERROR": "internal error at Esign; retry the submission",
}
MESSAGES = frozenset(REASON_MESSAGES.values())  # our own words
_RESUBMIT = {"DUKCAPIL_IRRETRIEVABLE_ERROR", "EMAIL_HAS_BEEN_USED", "PHONE_HAS_BEEN_USED"}
_CHECK_OUTCOMES = {"PASS": CheckOutcome.PASS, "FAIL": CheckOutcome.FAIL}


def verification_id(doc: Mapping[str, Any]) -> str | None:
    return text(doc.get("submissionId"))


def normalize(doc: Mapping[str, Any], headers: Mapping[str, str]) -> Normalized | Rejection:
    vid = verification_id(doc)
    if vid is None:
        return Rejection("missing_verification_id", "esign payload has no submissionId")
    raw_status = text(doc.get("status"))
    if raw_status is None:
        return Rejection("unrecognized_event", "esign payload has no status")
    details = obj(doc.get("submissionDetails"))
    status_word = raw_status.upper()
    result = (text(doc.get("result")) or "").upper()
    reason_code = text(doc.get("reasonCode")) or text(details.get("reasonCode"))
    reason_upper = reason_code.upper() if reason_code else None

    status = _status(status_word, result, reason_upper)
    if status is None:
        return Rejection("unknown_status", f"esign status {raw_status!r} with result {result or None!r} has no mapping")

    processed_at = text(doc.get("processedAt"))
    attributes = scalar_attributes(doc, "userIdType", "result")
    attributes.update(
        scalar_attributes(details, "registrationId", "onboardingCode", "eligibleToActivate", "shouldSkipActivation")
    )
    return Normalized(
        verification_id=vid,
        status=status,
        provider_status=f"{status_word}/{result}" if result else status_word,
        idempotency_key=f"{NAME}:{vid}:{status_word}:{result}:{processed_at or ''}",
        occurred_at=timestamp(processed_at),
        event_type="submission_result",
        subject_id=text(doc.get("userId")),
        session_id=text(doc.get("partnerSessionId")),
        checks=_checks(details.get("verificationResult")),
        reasons=(Reason(reason_code, REASON_MESSAGES.get(reason_upper or "")),) if reason_code else (),
        attributes=attributes,
    )


def _status(status: str, result: str, reason: str | None) -> VerificationStatus | None:
    if reason == "SYSTEM_ERROR" or status == "ERROR":
        return VerificationStatus.ERROR
    if result == "VALID":
        return {
            "COMPLETED": VerificationStatus.APPROVED,
            "PARTIALLY_COMPLETED": VerificationStatus.PENDING,
        }.get(status)
    if status == "COMPLETED" and result == "INVALID":
        if reason in _RESUBMIT:
            return VerificationStatus.RESUBMISSION_REQUIRED
        return VerificationStatus.REJECTED
    return None


def _checks(value: object) -> tuple[Check, ...]:
    return tuple(word_check(name, outcome, _CHECK_OUTCOMES) for name, outcome in obj(value).items())


# --- reconciliation: Get Submission Details (seed 000, "Fallback Polling") ---------------------


def poll_request(verification_id: str, lookup: Mapping[str, str], credentials: ApiCredentials) -> PollRequest:
    return PollRequest(
        path="/esign-partner/v1/submissions",
        headers={
            "x-onekyc-token": credentials.token,
            "x-partner-user-id": lookup.get("userId", ""),
            "x-partner-user-id-type": lookup.get("userIdType", ""),
            "x-partner-session-id": lookup.get("partnerSessionId", ""),
        },
        params={"submissionId": verification_id},
    )


def poll_result(verification_id: str, lookup: Mapping[str, str], answer: Mapping[str, Any]) -> dict[str, Any] | None:
    """The submission as a callback would carry it (the API may wrap it in `data`)."""
    data = obj(answer.get("data"))
    submission = data if text(data.get("submissionId")) else answer
    if text(submission.get("submissionId")) not in (None, verification_id):
        return None
    return {**submission, "submissionId": verification_id}
