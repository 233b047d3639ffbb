"""Signicat Assure process-finished callbacks to the process's notificationUrl (seed 001).

Body: {"dossierId", "processId", "status"}. Auth: Signicat sends the `authorizationHeader` value
given at process creation as the Authorization header; set it to "Bearer <secret>".
Some identity providers behind Assure never retry, so a lost callback is gone for good.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from processors.model import ApiCredentials, AuthSpec, Normalized, PollRequest, Rejection, VerificationStatus
from processors.providers._read import scalar_attributes, text

NAME = "signicat"
DEFAULT_AUTH = AuthSpec(scheme="bearer")
METHODS = ("POST",)
HEADERS: tuple[str, ...] = ()
# Kafka away and no spool: Signicat's ReadID delays every later notification by an hour after a
# ">= 500 or 404, 405, 406, 410, 414, 415"; "for all other HTTP status codes, the server will wait
# an hour to retry again up to 24 times" (seed 001). 429 is such a code. Paper and Connect send a
# "single callback" and never retry: give them `on_kafka_unavailable: spool`.
UNAVAILABLE_STATUS = 429
FETCHES: dict[str, str] = {}  # every callback carries its result
MESSAGES: frozenset[str] = frozenset()  # its callbacks carry no text

_STATUS = {
    "accepted": VerificationStatus.APPROVED,
    "rejected": VerificationStatus.REJECTED,
    "inconclusive": VerificationStatus.REVIEW,
    "pending": VerificationStatus.PENDING,
    "processing": VerificationStatus.PENDING,
    "failed": VerificationStatus.ERROR,
    "error": VerificationStatus.ERROR,
    # The end user canceled, or the process timed out: this process will have no result (a retry is
    # a new process, with a new processId), not a request to resubmit on this one.
    "canceled": VerificationStatus.EXPIRED,
    "cancelled": VerificationStatus.EXPIRED,
    "expired": VerificationStatus.EXPIRED,
}


def verification_id(doc: Mapping[str, Any]) -> str | None:
    return text(doc.get("processId"))


def normalize(doc: Mapping[str, Any], headers: Mapping[str, str]) -> Normalized | Rejection:
    vid = verification_id(doc)
    if vid is None:
        return Rejection("missing_verification_id", "signicat payload has no processId")
    word = text(doc.get("status"))
    if word is None:
        return Rejection("unrecognized_event", "signicat payload has no status")
    status_word = word.lower()
    status = _STATUS.get(status_word)
    if status is None:
        return Rejection("unknown_status", f"signicat process status {word!r} has no mapping")
    return Normalized(
        verification_id=vid,
        status=status,
        provider_status=status_word,
        idempotency_key=f"{NAME}:{vid}:{status_word}",
        event_type="process_finished",
        session_id=text(doc.get("dossierId")),
        attributes=scalar_attributes(doc, "dossierId"),
    )


# --- reconciliation: Assure's process lookup by dossierId and processId -------------------------


def poll_request(verification_id: str, lookup: Mapping[str, str], credentials: ApiCredentials) -> PollRequest:
    dossier = lookup.get("dossierId", "")
    return PollRequest(
        path=f"/assure/dossiers/{dossier}/processes/{verification_id}",
        headers={"authorization": f"Bearer {credentials.token}"},
    )


def poll_result(verification_id: str, lookup: Mapping[str, str], answer: Mapping[str, Any]) -> dict[str, Any] | None:
    status = text(answer.get("status"))
    if status is None:
        return None
    return {"dossierId": lookup.get("dossierId"), "processId": verification_id, "status": status}
