"""Sumsub user-verification webhooks (docs.sumsub.com: Webhooks, User verification webhooks,
Receive results via API).

Auth: `X-Payload-Digest`, the hex HMAC of the raw body with the webhook's secret key, the algorithm
named by `X-Payload-Digest-Alg` (HMAC_SHA1_HEX, HMAC_SHA256_HEX, HMAC_SHA512_HEX): signing.SUMSUB.
Body: {"applicantId", "inspectionId", "correlationId", "externalUserId", "levelName", "type",
"reviewStatus", "createdAtMs": "yyyy-MM-dd HH:mm:ss.fff" (UTC), "reviewResult": {"reviewAnswer",
"reviewRejectType", "rejectLabels", "moderationComment", "clientComment", "buttonIds"}}.
Personal data: Sumsub sends none in webhooks, but the comments are prose a reviewer wrote (the
client comment may name the person): only the answer, the reject type and the reject labels (codes)
are read from `reviewResult`.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from processors import signing
from processors.model import ApiCredentials, Normalized, Notice, PollRequest, Reason, Rejection, VerificationStatus
from processors.providers._read import obj, scalar_attributes, text, timestamp

NAME = "sumsub"
DEFAULT_AUTH = signing.SUMSUB
METHODS = ("POST",)
HEADERS: tuple[str, ...] = ()
# Kafka away and no spool: 503 with Retry-After. Sumsub resends a failed webhook (an answer that is
# not 2xx, or none within 5 s) four times: after 5 minutes, 1 hour, 5 and 18 hours, unless the
# webhook's "Resend failed webhooks" is off (`notResendFailedWebhooks`): then give the source
# `on_kafka_unavailable: spool`.
UNAVAILABLE_STATUS = 503
FETCHES: dict[str, str] = {}  # every callback carries its result

_REVIEWED = "applicantreviewed"
_ON_HOLD = "applicantonhold"
# The applicant's verification is in progress: created (documents requested), reset to init, its
# documents uploaded (pending), prechecked, or paused for an external service.
_IN_PROGRESS = {
    "applicantcreated": "applicantCreated",
    "applicantpending": "applicantPending",
    "applicantprechecked": "applicantPrechecked",
    "applicantreset": "applicantReset",
    "applicantawaitingservice": "applicantAwaitingService",
}
# Permanently deleted: no result will come for this applicant id.
_DELETED = "applicantdeleted"
# Documented webhooks that are no verification result of the applicant: data or level changes,
# tags, (de)activation, applicant actions (their own id and review), workflow and video-ident
# progress, transaction monitoring and case management. Counted as notices.
_NOTICES = {
    kind.lower(): kind
    for kind in (
        "applicantPersonalInfoChanged",
        "applicantPersonalDataDeleted",
        "applicantTagsChanged",
        "applicantActivated",
        "applicantDeactivated",
        "applicantLevelChanged",
        "applicantWorkflowCompleted",
        "applicantActionPending",
        "applicantActionReviewed",
        "applicantActionOnHold",
        "applicantActionLevelChanged",
        "videoIdentStatusChanged",
        "videoIdentCompositionCompleted",
        "applicantKytTxnApproved",
        "applicantKytTxnRejected",
        "applicantKytTxnReviewed",
        "applicantKytTxnDeleted",
        "applicantKytTxnDataChanged",
        "applicantKytTxnAwaitingUser",
        "applicantKytOnHold",
        "kytCaseCreated",
        "kytCaseStatusChanged",
        "kytCaseReviewed",
        "amlCaseApproved",
        "amlCaseRejected",
        "amlCaseOnHold",
        "travelRuleAction",
        "kybCompanyActivity",
    )
}
_RED = {
    "FINAL": VerificationStatus.REJECTED,
    "RETRY": VerificationStatus.RESUBMISSION_REQUIRED,
}


def verification_id(doc: Mapping[str, Any]) -> str | None:
    return text(doc.get("applicantId"))


def normalize(doc: Mapping[str, Any], headers: Mapping[str, str]) -> Normalized | Notice | Rejection:
    raw_type = text(doc.get("type"))
    if raw_type is None:
        return Rejection("unrecognized_event", "sumsub payload has no type")
    kind = raw_type.lower()
    if kind in _NOTICES:
        return Notice(_NOTICES[kind])
    vid = verification_id(doc)
    if vid is None:
        return Rejection("missing_verification_id", f"sumsub {raw_type} has no applicantId")
    result = obj(doc.get("reviewResult"))
    reasons: tuple[Reason, ...] = ()
    if kind == _REVIEWED:
        answer = text(result.get("reviewAnswer"))
        if answer is None:
            return Rejection("unrecognized_event", "sumsub applicantReviewed has no reviewResult.reviewAnswer")
        decided = _decision(answer.upper(), (text(result.get("reviewRejectType")) or "").upper())
        if isinstance(decided, Rejection):
            return decided
        status, provider_status = decided
        event_type = "applicantReviewed"
        reasons = _labels(result.get("rejectLabels"))
    elif kind == _ON_HOLD:  # a compliance officer's decision is awaited
        status, provider_status, event_type = VerificationStatus.REVIEW, "applicantOnHold", "applicantOnHold"
    elif kind in _IN_PROGRESS:
        status, provider_status = VerificationStatus.PENDING, _IN_PROGRESS[kind]
        event_type = provider_status
    elif kind == _DELETED:
        status, provider_status, event_type = VerificationStatus.EXPIRED, "applicantDeleted", "applicantDeleted"
    else:
        return Rejection("unknown_status", f"sumsub webhook type {raw_type!r} has no mapping")

    moment = timestamp(doc.get("createdAtMs")) or timestamp(doc.get("createdAt"))
    attributes = scalar_attributes(doc, "levelName", "applicantType", "reviewStatus", "sandboxMode", "correlationId")
    return Normalized(
        verification_id=vid,
        status=status,
        provider_status=provider_status,
        idempotency_key=_key(vid, status, provider_status, moment),
        occurred_at=moment,
        event_type=event_type,
        subject_id=text(doc.get("externalUserId")),
        session_id=text(doc.get("inspectionId")),
        reasons=reasons,
        attributes=attributes,
    )


def _decision(answer: str, reject_type: str) -> tuple[VerificationStatus, str] | Rejection:
    if answer == "GREEN":
        return VerificationStatus.APPROVED, "GREEN"
    if answer != "RED":
        return Rejection("unknown_status", f"sumsub reviewAnswer {answer!r} has no mapping")
    if not reject_type:  # RED always says FINAL or RETRY; without it, no retry was offered
        return VerificationStatus.REJECTED, "RED"
    status = _RED.get(reject_type)
    if status is None:
        return Rejection("unknown_status", f"sumsub RED reviewRejectType {reject_type!r} has no mapping")
    return status, f"RED/{reject_type}"


def _key(vid: str, status: VerificationStatus, provider_status: str, moment: datetime | None) -> str | None:
    """A decision, a hold or a deletion is its applicant and its words, whichever delivery carries it
    (a retry, a polled status), so it is one event; a later reversal with the same words is still a
    new event, by its newer createdAtMs (processors/state.py `repeat`). Progress is also its time:
    an applicant goes pending again after each resubmission."""
    if status is not VerificationStatus.PENDING:
        return f"{NAME}:{vid}:{provider_status}"
    if moment is None:
        return None  # two progress webhooks could share the words: the body hash keeps them apart
    stamp = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return f"{NAME}:{vid}:{provider_status}:{stamp}"


def _labels(value: object) -> tuple[Reason, ...]:
    """The reject labels (codes such as FORGERY or BAD_PROOF_OF_IDENTITY); never the comments."""
    if not isinstance(value, list):
        return ()
    return tuple(Reason(code=label[:128]) for item in value if (label := text(item)) is not None)


# --- reconciliation: Get applicant review status (GET /resources/applicants/{id}/status) ----------
# Signed per request: X-App-Token (poll.token), X-App-Access-Ts (Unix seconds, within Sumsub's 60 s
# tolerance) and X-App-Access-Sig, the hex HMAC-SHA256 with the secret key (poll.admin_token) of
# ts + METHOD + path with query + body.

_clock = time.time  # the reconciler builds a request just before sending it; tests replace this


def poll_request(verification_id: str, lookup: Mapping[str, str], credentials: ApiCredentials) -> PollRequest:
    path = f"/resources/applicants/{verification_id}/status"
    ts = str(int(_clock()))
    secret = (credentials.admin_token or "").encode()
    signature = hmac.new(secret, f"{ts}GET{path}".encode(), hashlib.sha256).hexdigest()
    return PollRequest(
        path=path,
        headers={"x-app-token": credentials.token, "x-app-access-ts": ts, "x-app-access-sig": signature},
    )


_POLLED_PROGRESS = {
    "init": "applicantCreated",
    "pending": "applicantPending",
    "queued": "applicantPending",
    "prechecked": "applicantPrechecked",
    "awaitingservice": "applicantAwaitingService",
    "awaitinguser": "applicantCreated",  # waits for the applicant's data, as init does
}


def poll_result(verification_id: str, lookup: Mapping[str, str], answer: Mapping[str, Any]) -> dict[str, Any] | None:
    """The review status as the webhook for it would say it: a completed review is applicantReviewed
    (dated by its reviewDate), onHold applicantOnHold, anything earlier progress."""
    review_status = text(answer.get("reviewStatus"))
    if review_status is None:
        return None
    result = obj(answer.get("reviewResult"))
    doc: dict[str, Any] = {"applicantId": verification_id, "reviewStatus": review_status}
    if (level := text(answer.get("levelName"))) is not None:
        doc["levelName"] = level
    status = review_status.lower()
    if status in _POLLED_PROGRESS:  # undated: the same answer polled again is one event (body hash)
        return {**doc, "type": _POLLED_PROGRESS[status]}
    if status == "completed" and text(result.get("reviewAnswer")) is not None:
        doc["type"] = "applicantReviewed"
        doc["reviewResult"] = {
            key: result[key] for key in ("reviewAnswer", "reviewRejectType", "rejectLabels") if key in result
        }
    elif status == "onhold":
        doc["type"] = "applicantOnHold"
    else:
        return None
    if (reviewed_at := text(answer.get("reviewDate"))) is not None:
        doc["createdAtMs"] = reviewed_at
    return doc
