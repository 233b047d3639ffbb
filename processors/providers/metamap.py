"""MetaMap (formerly Mati) verification webhooks: per-step `step_completed` and verification-level
events (seed 003).

Auth: MetaMap hashes the payload with the webhook secret set in its Dashboard (HMAC-SHA256, hex)
and sends it in the `x-signature` header.
Personal data: `step.data` carries names, document numbers, dates of birth and the like; only the
step id, its outcome, a numeric `data.score` and the error code/message are read from a step.
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
    Notice,
    PollRequest,
    Reason,
    Rejection,
    VerificationStatus,
)
from processors.providers._read import number, obj, scalar_attributes, text, timestamp

NAME = "metamap"
DEFAULT_AUTH = AuthSpec(scheme="hmac_sha256", header="x-signature")
METHODS = ("POST",)
HEADERS: tuple[str, ...] = ()
# Kafka away and no spool: 503 with Retry-After; MetaMap retries webhooks it could not deliver.
UNAVAILABLE_STATUS = 503
FETCHES: dict[str, str] = {}  # every callback carries its result

_IN_PROGRESS = {"verification_started", "verification_inputs_completed", "step_completed"}
_DECIDED = {"verification_completed", "verification_updated"}
_EXPIRED = "verification_expired"
# Documented events that are not verification results: a verification put off for later, a signed
# document (MetaMap's e-signature). Counted as notices, not events, not dead letters.
_NOTICES = {"verification_postponed", "verification_signed"}
_IDENTITY_STATUS = {
    "verified": VerificationStatus.APPROVED,
    "rejected": VerificationStatus.REJECTED,
    "reviewneeded": VerificationStatus.REVIEW,
}
_FAILED_STEP = {"steperror", "legacyerror"}  # the user's input failed the step; anything else is MetaMap's side
# Step error messages MetaMap sends as fixed text for their codes (seed 003). Others (system errors
# naming internal services, anything new) may quote what they read: left out of events.
MESSAGES = frozenset(
    {
        "Birth Date is not defined",
        "Cannot meet dependent input",
        "Cannot meet dependent node",
        "Document did not match any valid template",
        "Document invalid or photo on the document didn't match the seflie",
        "Document is considered as fraud attempt",
        "Document is considered as negligence",
        "Document is considered tampered",
        "Document number is not defined",
        "Email step hasn't been passed",
        "Full Name is not defined",
        "IP step hasn't been passed",
        "Internal error",
        "Parameters validation error!",
        "Phone step hasn't been passed",
        "Provider timed out",
        "Service unavailable",
        "Step timeout",
        "The date of birth could not be obtained",
        "The face did not match the document",
        "The name in the document didn't match the name in the signature",
        "This person cannot be confirmed as owner of document provided, a selfie with the document will be requested",
        "This user has been verified more than once",
        "This user is currently underage",
        "User has not provided any document",
        "User skipped this step",
    }
)
_SYSTEM_CHECK = "system"  # a top-level error object, not tied to a step


def verification_id(doc: Mapping[str, Any]) -> str | None:
    """The segment after /verifications/ in `resource`, else an explicit id field, else the last
    segment of `resource` (e.g. https://api.getmati.com/v2/verifications/6156311aba4c52001b1290a2)."""
    segments = _path_segments(doc.get("resource"))
    if "verifications" in segments[:-1]:
        return segments[segments.index("verifications") + 1]
    explicit = text(doc.get("verificationId")) or text(doc.get("verification"))
    return explicit or (segments[-1] if segments else None)


def normalize(doc: Mapping[str, Any], headers: Mapping[str, str]) -> Normalized | Notice | Rejection:
    raw_event = text(doc.get("eventName"))
    if raw_event is None:
        return Rejection("unrecognized_event", "metamap payload has no eventName")
    vid = verification_id(doc)
    if vid is None:
        return Rejection("missing_verification_id", "metamap payload has no resource nor verification id")
    event = raw_event.lower()
    identity_word = text(doc.get("identityStatus")) or text(doc.get("status"))
    if event in _DECIDED:
        if identity_word is None:
            return Rejection("unrecognized_event", f"metamap {event} has no identityStatus")
        status = _IDENTITY_STATUS.get(identity_word.lower())
        if status is None:
            return Rejection("unknown_status", f"metamap {event} identityStatus {identity_word!r} has no mapping")
        provider_status = f"{event}/{identity_word}"
    elif event in _IN_PROGRESS:
        status, provider_status = VerificationStatus.PENDING, event
    elif event == _EXPIRED:  # the user did not finish in time: no result will come for this verification
        status, provider_status = VerificationStatus.EXPIRED, event
    elif event in _NOTICES:
        return Notice(event)
    else:
        return Rejection("unknown_status", f"metamap eventName {raw_event!r} has no mapping")

    step = doc.get("step")
    step_id = text(obj(step).get("id"))
    checks, reasons = _step_detail(step, step_id)
    top_error = doc.get("error")
    if top_error is not None:
        checks.append(_check(_SYSTEM_CHECK, CheckOutcome.ERROR, None, top_error))
        reasons.extend(_reasons(top_error, None))

    moment = text(doc.get("timestamp"))
    attributes = scalar_attributes(doc, "flowId")
    attributes.update(scalar_attributes(obj(step), "documentType"))
    if (reason_code := text(obj(obj(step).get("error")).get("reasonCode"))) is not None:
        attributes["errorReasonCode"] = reason_code
    return Normalized(
        verification_id=vid,
        status=status,
        provider_status=provider_status,
        idempotency_key=_key(vid, event, identity_word, step_id, moment),
        occurred_at=timestamp(moment),
        event_type=event,
        subject_id=text(doc.get("identity")),
        checks=tuple(checks),
        reasons=tuple(reasons),
        attributes=attributes,
    )


def _key(vid: str, event: str, identity_word: str | None, step_id: str | None, moment: str | None) -> str | None:
    """A verification-level result is its verification and status, whichever event (completed,
    updated, a polled answer) carries it; a step or progress event is also its step and time."""
    if event in _DECIDED and identity_word is not None:
        return f"{NAME}:{vid}:identity:{identity_word.lower()}"
    if event == _EXPIRED:
        return f"{NAME}:{vid}:{event}"
    # Without a timestamp two different progress events could share a key; the body hash keeps them apart.
    return f"{NAME}:{vid}:{event}:{step_id or ''}:{moment}" if moment else None


def _path_segments(resource: object) -> list[str]:
    raw = text(resource)
    if raw is None:
        return []
    path = raw.split("?", 1)[0].split("#", 1)[0]
    return [segment.strip() for segment in path.split("/") if segment.strip()]


def _step_detail(step: object, step_id: str | None) -> tuple[list[Check], list[Reason]]:
    if not isinstance(step, Mapping):
        return [], []
    error = step.get("error")
    if error is None:
        outcome = CheckOutcome.PASS
    elif (text(obj(error).get("type")) or "").lower() in _FAILED_STEP:
        outcome = CheckOutcome.FAIL
    else:
        outcome = CheckOutcome.ERROR  # SystemError, REQUEST_REJECTED and any type not known to be the user's
    score = number(obj(step.get("data")).get("score"))
    return [_check(step_id or "step", outcome, score, error)], _reasons(error, step_id)


def _check(name: str, outcome: CheckOutcome, score: float | None, error: object) -> Check:
    details = obj(error)
    return Check(
        name=name[:128],
        outcome=outcome,
        score=score,
        code=text(details.get("code")),
        message=text(details.get("message")),
    )


def _reasons(error: object, step_id: str | None) -> list[Reason]:
    details = obj(error)
    code = text(details.get("code")) or text(details.get("type"))
    return [Reason(code, text(details.get("message")), step_id)] if code else []


# --- reconciliation: the verification resource (GET /v2/verifications/{id}) --------------------


def poll_request(verification_id: str, lookup: Mapping[str, str], credentials: ApiCredentials) -> PollRequest:
    return PollRequest(
        path=f"/v2/verifications/{verification_id}", headers={"authorization": f"Bearer {credentials.token}"}
    )


def poll_result(verification_id: str, lookup: Mapping[str, str], answer: Mapping[str, Any]) -> dict[str, Any] | None:
    identity = obj(answer.get("identity"))
    status = text(identity.get("status")) or text(answer.get("identityStatus")) or text(answer.get("status"))
    if status is None:
        return None
    doc: dict[str, Any] = {
        "eventName": "verification_updated",
        "resource": f"https://api.getmati.com/v2/verifications/{verification_id}",
        "identityStatus": status,
    }
    if moment := text(answer.get("updatedAt")) or text(answer.get("timestamp")):
        doc["timestamp"] = moment
    return doc
