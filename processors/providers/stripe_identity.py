"""Stripe Identity: `identity.verification_session.*` Events sent to a Stripe webhook endpoint.

Auth: `Stripe-Signature: t=<unix s>,v1=<hex>[,v1=<hex>]`, HMAC-SHA256 of `{t}.{raw body}` with the
endpoint's signing secret (`whsec_…`), 300 s tolerance: the `stripe` preset. Several `v1` values
come during a secret roll; a `v0` (test-mode) signature is ignored.
The verification id is the VerificationSession id (`data.object.id`, `vs_…`); the Event's own
`created` (unix seconds) is the result's time.
Personal data: the session's `verified_outputs` (name, date of birth, address, id number) are not
in an Event and are never fetched (no `expand`); `provided_details`, `metadata`, `url`,
`client_secret` and `last_error.reason` (prose) are not read. A failure is its `last_error.code`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from processors import signing
from processors.model import ApiCredentials, Normalized, Notice, PollRequest, Reason, Rejection, VerificationStatus
from processors.providers._read import number, obj, text

NAME = "stripe_identity"
DEFAULT_AUTH = signing.STRIPE
METHODS = ("POST",)
HEADERS: tuple[str, ...] = ()
# Kafka away and no spool: 503 with Retry-After. Stripe retries any non-2xx in live mode for up to
# three days with exponential backoff (a sandbox only three times over a few hours).
UNAVAILABLE_STATUS = 503
FETCHES: dict[str, str] = {}  # every Event carries its result; the verified data is never fetched
MESSAGES: frozenset[str] = frozenset()  # last_error.reason is prose: no provider text reaches an event

_PREFIX = "identity.verification_session."
_OBJECT = "identity.verification_session"
_STATUS = {
    "verified": VerificationStatus.APPROVED,
    "requires_input": VerificationStatus.RESUBMISSION_REQUIRED,
    "processing": VerificationStatus.PENDING,
    "canceled": VerificationStatus.EXPIRED,
}
# Documented session events that are no verification result: counted as notices.
_NOTICES = frozenset({"created", "redacted"})
# A session may fail and be submitted again many times (requires_input -> processing -> ...): each of
# those is its own result, told apart by the Event's time. `verified` and `canceled` end a session,
# so a polled session shares their key (and a later reversal is still new by its time: state.repeat).
_RECURRING = frozenset({"requires_input", "processing"})


def verification_id(doc: Mapping[str, Any]) -> str | None:
    return text(_session(doc).get("id"))


def normalize(doc: Mapping[str, Any], headers: Mapping[str, str]) -> Normalized | Notice | Rejection:
    kind = text(doc.get("type"))
    if kind is None:
        return Rejection("unrecognized_event", "stripe_identity payload has no Event type")
    kind = kind.lower()
    session = _session(doc)
    if not kind.startswith(_PREFIX) or text(session.get("object")) not in (None, _OBJECT):
        return Rejection("unrecognized_event", f"stripe event {kind[:80]!r} is not an {_OBJECT} event")
    vid = verification_id(doc)
    if vid is None:
        return Rejection("missing_verification_id", "stripe_identity Event has no data.object.id")
    word = kind.removeprefix(_PREFIX)
    if word in _NOTICES:
        return Notice(kind)
    status = _STATUS.get(word)
    if status is None:
        return Rejection("unknown_status", f"stripe_identity event {kind[:80]!r} has no mapping")

    code = text(obj(session.get("last_error")).get("code")) if word == "requires_input" else None
    created = number(doc.get("created"))
    moment = str(int(created)) if created is not None else ""
    key = f"{NAME}:{vid}:{word}"
    if word in _RECURRING:
        key += f":{code or ''}:{moment}"
    return Normalized(
        verification_id=vid,
        status=status,
        provider_status=word,
        idempotency_key=key,
        occurred_at=_unix(created),
        event_type=kind,
        subject_id=text(session.get("client_reference_id")) or text(session.get("related_customer")),
        reasons=(Reason(code),) if code else (),
        attributes=_attributes(doc, session),
    )


def _session(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj(obj(doc.get("data")).get("object"))


def _unix(seconds: float | None) -> datetime | None:
    if seconds is None:
        return None
    try:
        return datetime.fromtimestamp(int(seconds), UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _attributes(doc: Mapping[str, Any], session: Mapping[str, Any]) -> dict[str, str]:
    found = {
        "stripe_event": text(doc.get("id")),
        "session_type": text(session.get("type")),
        "last_verification_report": text(session.get("last_verification_report"))
        or text(obj(session.get("last_verification_report")).get("id")),
    }
    attributes = {name: value for name, value in found.items() if value is not None}
    if isinstance(livemode := session.get("livemode", doc.get("livemode")), bool):
        attributes["livemode"] = "true" if livemode else "false"
    return attributes


# --- reconciliation: Retrieve a VerificationSession (GET /v1/identity/verification_sessions/{id}) ---


def poll_request(verification_id: str, lookup: Mapping[str, str], credentials: ApiCredentials) -> PollRequest:
    # No expand[]=verified_outputs: the verified personal data is never asked for.
    return PollRequest(
        path=f"/v1/identity/verification_sessions/{quote(verification_id, safe='')}",
        headers={"authorization": f"Bearer {credentials.token}"},
    )


def poll_result(verification_id: str, lookup: Mapping[str, str], answer: Mapping[str, Any]) -> dict[str, Any] | None:
    """The session as the Event of its status, with only what normalize reads. The object has no
    time of its last change, so a recurring result (requires_input, processing) polled has no time
    and another key than its Event; verified and canceled share the Event's key."""
    if text(answer.get("object")) not in (None, _OBJECT) or text(answer.get("id")) not in (None, verification_id):
        return None
    status = text(answer.get("status"))
    code = text(obj(answer.get("last_error")).get("code"))
    if status is None or (status.lower() == "requires_input" and code is None):
        return None  # a session not submitted yet: no result to report
    session: dict[str, Any] = {"id": verification_id, "object": _OBJECT, "status": status}
    if code is not None:
        session["last_error"] = {"code": code}
    for name in ("client_reference_id", "related_customer", "type", "livemode", "last_verification_report"):
        if isinstance(value := answer.get(name), str | bool):
            session[name] = value
    return {"object": "event", "type": f"{_PREFIX}{status.lower()}", "data": {"object": session}}
