"""Xendit `account.verification` webhooks (seed 004).

Auth: the `x-callback-token` header equals the account's webhook verification token.
Idempotency: the account id, its KYC status and that status's time (kyc.verified_at, else
data.updated, else created), so a polled account and the callback for the same result share it
(Xendit's `webhook-id` names a delivery, not a result: it is kept in the raw envelope only).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from processors.model import ApiCredentials, AuthSpec, Normalized, PollRequest, Reason, Rejection, VerificationStatus
from processors.providers._read import obj, scalar_attributes, text, timestamp

NAME = "xendit"
DEFAULT_AUTH = AuthSpec(scheme="header_token", header="x-callback-token")
METHODS = ("POST",)
HEADERS = ("webhook-id",)
# Kafka away and no spool: 503 with Retry-After. Xendit does not retry a delivery that timed out
# (issue 13): the gateway answers well before its timeout, and `spool` avoids the refusal.
UNAVAILABLE_STATUS = 503
FETCHES: dict[str, str] = {}  # every callback carries its result
# failure_reasons[].message is free text; these are the fixed ones Xendit documents (seed 004).
MESSAGES = frozenset({"The website is inaccessible", "Invalid registration document", "The passport has expired"})

_EVENT = "account.verification"
_STATUS = {
    "PASSED": VerificationStatus.APPROVED,
    "RESUBMISSION_REQUIRED": VerificationStatus.RESUBMISSION_REQUIRED,
    "FAILED": VerificationStatus.REJECTED,
}


def verification_id(doc: Mapping[str, Any]) -> str | None:
    return text(obj(doc.get("data")).get("id"))


def normalize(doc: Mapping[str, Any], headers: Mapping[str, str]) -> Normalized | Rejection:
    event = text(doc.get("event"))
    if event is not None and event.lower() != _EVENT:
        return Rejection("unrecognized_event", f"xendit event {event!r} is not {_EVENT}")
    data = obj(doc.get("data"))
    kyc = obj(data.get("kyc"))
    vid = verification_id(doc)
    if vid is None:
        return Rejection("missing_verification_id", "xendit payload has no data.id")
    word = text(kyc.get("status"))
    if word is None:
        return Rejection("unrecognized_event", "xendit payload has no data.kyc.status")
    status = _STATUS.get(word.upper())
    if status is None:
        return Rejection("unknown_status", f"xendit kyc status {word!r} has no mapping")

    occurred_at = timestamp(kyc.get("verified_at")) or timestamp(data.get("updated")) or timestamp(doc.get("created"))
    moment = occurred_at.isoformat(timespec="milliseconds").replace("+00:00", "Z") if occurred_at else ""
    return Normalized(
        verification_id=vid,
        status=status,
        provider_status=word.upper(),
        # The result, not the delivery: a retried webhook, a polled account and a late callback agree.
        idempotency_key=f"{NAME}:{vid}:{word.upper()}:{moment}",
        occurred_at=occurred_at,
        event_type=event or _EVENT,
        reasons=_failure_reasons(kyc.get("failure_reasons")),
        attributes=scalar_attributes(doc, "business_id"),
    )


def _failure_reasons(value: object) -> tuple[Reason, ...]:
    if not isinstance(value, list):
        return ()
    reasons = []
    for item in value:
        entry = obj(item)
        if entry:
            reasons.append(
                Reason(
                    code="failure_reason",
                    message=text(entry.get("message")),
                    field=text(entry.get("field")),
                )
            )
    return tuple(reasons)


# --- reconciliation: the account lookup (GET /v2/accounts/{id}, Basic auth with the secret key) -


def poll_request(verification_id: str, lookup: Mapping[str, str], credentials: ApiCredentials) -> PollRequest:
    basic = base64.b64encode(f"{credentials.token}:".encode()).decode()
    return PollRequest(path=f"/v2/accounts/{verification_id}", headers={"authorization": f"Basic {basic}"})


def poll_result(verification_id: str, lookup: Mapping[str, str], answer: Mapping[str, Any]) -> dict[str, Any] | None:
    kyc = obj(answer.get("kyc"))
    if text(kyc.get("status")) is None:
        return None
    return {"event": _EVENT, "data": {"id": verification_id, "updated": answer.get("updated"), "kyc": dict(kyc)}}
