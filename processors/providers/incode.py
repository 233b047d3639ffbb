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

from processors.model import (
    ApiCredentials,
    AuthSpec,
    Check,
    CheckOutcome,
    Normalized,
    Notice,
    NotReady,
    PollRequest,
    Rejection,
    VerificationStatus,
)
from processors.providers._read import number, obj, scalar_attributes, text, timestamp, word_check

NAME = "incode"
DEFAULT_AUTH = AuthSpec(scheme="api_key", header="x-incode-webhook-secret")
METHODS = ("POST",)
HEADERS: tuple[str, ...] = ()
# Kafka away and no spool: Incode retries once when "the response of your service is not status
# 200 OK" (its webhooks page): 503 with Retry-After; one retry only, so `spool` is the safer choice.
UNAVAILABLE_STATUS = 503
MESSAGES: frozenset[str] = frozenset()  # no message is read from its payloads

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
# Incode's webhooks that are no verification result (seed 002: video selfie, global watchlist, face
# authentication, work history, proof of payment; deprecated: authentication 1:1/1:N, INE scraping),
# each told by a field of its documented payload (lower-cased).
_NOTICE_MARKERS = (
    ("workhistory", "work_history"),
    ("rfcissuer", "proof_of_payment"),
    ("fiscalinvoice", "proof_of_payment"),
    ("totalcfdi", "proof_of_payment"),
    ("search_id", "watchlist_updated"),
    ("overallstatus", "face_authentication"),
    ("attemptcounterstate", "face_authentication"),
    ("facematch", "authentication"),
    ("recognitionconfidence", "authentication"),
    ("scrapingstatus", "ine_scraping"),
)
_VIDEO_SELFIE_KEYS = frozenset({"interviewid", "clientid", "flowid", "externalid", "externalcustomerid"})
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


def normalize(doc: Mapping[str, Any], headers: Mapping[str, str]) -> Normalized | Notice | Rejection:
    if doc.get("onboardingStatus") is None and (kind := _notice_kind(doc)) is not None:
        return Notice(kind)
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


def _notice_kind(doc: Mapping[str, Any]) -> str | None:
    """Which of Incode's other webhooks this is, by a field only that kind carries (none of them
    has a type field); the video-selfie one is just the session's ids (clientId, flowId, interviewId)."""
    keys = {str(key).lower() for key in doc}
    for marker, kind in _NOTICE_MARKERS:
        if marker in keys:
            return kind
    if any("video" in key for key in keys) or (
        "interviewid" in keys and keys & {"clientid", "flowid"} and keys <= _VIDEO_SELFIE_KEYS
    ):
        return "videoselfie_uploaded"
    return None


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


def poll_request(verification_id: str, lookup: Mapping[str, str], credentials: ApiCredentials) -> PollRequest:
    return PollRequest(
        path="/omni/get/onboarding/status",
        headers={"x-api-key": credentials.token, "api-version": "1.0"},
        params={"id": verification_id},
    )


def poll_result(verification_id: str, lookup: Mapping[str, str], answer: Mapping[str, Any]) -> dict[str, Any] | None:
    status = text(answer.get("onboardingStatus"))
    if status is None:
        return None
    return {"interviewId": verification_id, "onboardingStatus": status}


# --- fetched results: Fetch Scores (GET /omni/get/score?id=...) after ONBOARDING_FINISHED ---------
# The onboarding-status webhook says the data is ready, not what it says: the decision is the
# score's overall status (Incode's "Fetch Score Data"). Its modules become checks; the answer may
# hold personal data in places (names, document numbers): only statuses and values are read.

FETCHES = {"ONBOARDING_FINISHED": "score"}
_SCORE_STATUS = {
    "OK": VerificationStatus.APPROVED,
    "FAIL": VerificationStatus.REJECTED,
    "WARN": VerificationStatus.REVIEW,
    "MANUAL_OK": VerificationStatus.APPROVED,
    "MANUAL_APPROVED": VerificationStatus.APPROVED,
    "MANUAL_FAIL": VerificationStatus.REJECTED,
    "MANUAL_REJECTED": VerificationStatus.REJECTED,
    "MANUAL": VerificationStatus.REVIEW,
    "MANUAL_PENDING": VerificationStatus.REVIEW,
    "NEEDS_REVIEW": VerificationStatus.REVIEW,
}
_SCORE_NOT_READY = {"UNKNOWN", "PENDING", "PROCESSING", "IN_PROGRESS", "NOT_READY", "NOT_CALCULATED"}
_SCORE_OUTCOMES = {
    "OK": CheckOutcome.PASS,
    "MANUAL_OK": CheckOutcome.PASS,
    "FAIL": CheckOutcome.FAIL,
    "MANUAL_FAIL": CheckOutcome.FAIL,
    "WARN": CheckOutcome.FAIL,  # not passed cleanly: the word stays in `code`
    "ERROR": CheckOutcome.ERROR,
}


def fetch_missing(credentials: ApiCredentials) -> str | None:
    if not credentials.admin_token:
        return (
            "admin_token (Incode's executive token, sent as X-Incode-Hardware-Id to fetch scores), or "
            "executive_login {email, password_file} to log in for it"
        )
    return None


def fetch_request(kind: str, verification_id: str, credentials: ApiCredentials) -> PollRequest:
    headers = {"x-api-key": credentials.token, "api-version": "1.0"}
    if credentials.admin_token:
        headers["X-Incode-Hardware-Id"] = credentials.admin_token
    return PollRequest(path="/omni/get/score", headers=headers, params={"id": verification_id})


def normalize_fetched(kind: str, verification_id: str, doc: Mapping[str, Any]) -> Normalized | NotReady | Rejection:
    if kind != "score":
        return Rejection("unrecognized_event", f"incode has no fetched result of kind {kind!r}")
    overall = doc.get("overall")
    word = text(obj(overall).get("status")) if isinstance(overall, Mapping) else text(overall)
    if word is None:
        return NotReady("the score has no overall status yet")
    canonical = _canonical(word)
    if canonical in _SCORE_NOT_READY:
        return NotReady(f"the score's overall status is {canonical}")
    status = _SCORE_STATUS.get(canonical)
    if status is None:
        return Rejection("unknown_status", f"incode score overall status {word!r} has no mapping")
    return Normalized(
        verification_id=verification_id,
        status=status,
        provider_status=f"SCORE_{canonical}",
        idempotency_key=f"{NAME}:{verification_id}:score:{canonical}",
        event_type="score",
        session_id=verification_id,
        checks=_score_checks(doc),
        attributes=scalar_attributes(obj(overall), "value"),
    )


def _score_checks(doc: Mapping[str, Any]) -> tuple[Check, ...]:
    """One check per module section that has an overall status ({"liveness": {"overall": {...}}})."""
    checks = []
    for name, section in doc.items():
        module_overall = obj(obj(section).get("overall"))
        word = text(module_overall.get("status"))
        if name == "overall" or word is None:
            continue
        canonical = _canonical(word)
        outcome = _SCORE_OUTCOMES.get(canonical, CheckOutcome.SKIPPED)
        value = module_overall.get("value")
        score = number(value) if not isinstance(value, str) else _decimal(value)
        checks.append(Check(name=str(name)[:128], outcome=outcome, score=score, code=canonical[:64]))
    return tuple(checks)


def _decimal(value: str) -> float | None:
    try:
        return number(float(value))
    except ValueError:
        return None
