"""Acme ID, a fictional identity-verification provider: the complete example of an external
kycstream provider (docs/providers/authoring.md).

Acme ID calls back `POST /webhooks/<source>` with
    {"type": "verification.finished", "verification": {"id": "av_…", "outcome": "pass",
     "reason_codes": ["DOC_EXPIRED"], "decided_at": "2026-05-08T10:30:00Z"}, "person": {…}}
signed with `X-Acme-Signature: sha256=<hex HMAC-SHA256 of the raw body>`. `verification.started`
and `verification.submitted` are progress; `verification.reminder_sent` is a notice. Acme ID
retries a non-2xx answer every 10 minutes for a day. Its legacy integration sends results to a URL
of their own without a `type` (`/webhooks/<source>/finished`): the route names the kind (ROUTES).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from processors.model import (
    ROUTE_HEADER,
    ApiCredentials,
    AuthSpec,
    Normalized,
    Notice,
    PollRequest,
    Reason,
    Rejection,
    VerificationStatus,
)

NAME = "acme"
DEFAULT_AUTH = AuthSpec(scheme="hmac_sha256", header="x-acme-signature")
METHODS = ("POST",)
HEADERS: tuple[str, ...] = ()  # request headers the normalizer reads (kept in the raw envelope)
UNAVAILABLE_STATUS = 503  # Acme ID retries any non-2xx for a day: refusing while Kafka is away is safe
FETCHES: dict[str, str] = {}  # every callback carries its result
CASES = "cases"  # golden cases, beside this module: `kycstream providers check acme` finds them
ROUTES = ("finished",)  # /webhooks/<source>/finished: the kind comes from the URL
_ROUTE_KINDS = {"finished": "verification.finished"}

_OUTCOMES = {
    "pass": VerificationStatus.APPROVED,
    "fail": VerificationStatus.REJECTED,
    "retry": VerificationStatus.RESUBMISSION_REQUIRED,
    "manual_review": VerificationStatus.REVIEW,
    "timeout": VerificationStatus.EXPIRED,
}
_PROGRESS = {"verification.started", "verification.submitted"}
_NOTICES = {"verification.reminder_sent"}
_CODE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def verification_id(doc: Mapping[str, Any]) -> str | None:
    verification = doc.get("verification")
    found = verification.get("id") if isinstance(verification, Mapping) else None
    return found if isinstance(found, str) and found.strip() else None


def normalize(doc: Mapping[str, Any], headers: Mapping[str, str]) -> Normalized | Notice | Rejection:
    kind = doc.get("type") or _ROUTE_KINDS.get(headers.get(ROUTE_HEADER, ""))
    if not isinstance(kind, str):
        return Rejection("unrecognized_event", "acme payload has no type")
    kind = kind.lower()
    if kind in _NOTICES:
        return Notice(kind)
    vid = verification_id(doc)
    if vid is None:
        return Rejection("missing_verification_id", "acme payload has no verification.id")
    verification = doc["verification"]
    if kind in _PROGRESS:
        status, word = VerificationStatus.PENDING, kind
    elif kind == "verification.finished":
        outcome = verification.get("outcome")
        status = _OUTCOMES.get(outcome.lower()) if isinstance(outcome, str) else None
        if status is None:
            return Rejection("unknown_status", f"acme outcome {str(outcome)[:40]!r} has no mapping")
        word = outcome.lower()
    else:
        return Rejection("unknown_status", f"acme type {kind[:60]!r} has no mapping")
    decided = verification.get("decided_at") if isinstance(verification.get("decided_at"), str) else None
    return Normalized(
        verification_id=vid,
        status=status,
        provider_status=word,
        # One key per result: the verification, its word and Acme's own time for it.
        idempotency_key=f"{NAME}:{vid}:{word}:{decided or ''}",
        occurred_at=_instant(decided),
        event_type=kind,
        reasons=tuple(Reason(code) for code in _codes(verification.get("reason_codes"))),
    )


def _codes(value: object) -> list[str]:
    """Reason codes only (upper-case words): Acme's free-text `reason` may quote the person."""
    items = value if isinstance(value, list) else []
    return [c for c in items if isinstance(c, str) and 0 < len(c) <= 64 and set(c) <= _CODE_CHARS]


def _instant(value: str | None) -> Any:
    from datetime import UTC, datetime

    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)


# Acme ID has no status API: nothing to poll (an expectation for it only ever times out).
def poll_request(verification_id: str, lookup: Mapping[str, str], credentials: ApiCredentials) -> PollRequest:
    return PollRequest(path=f"/v1/verifications/{verification_id}")


def poll_result(verification_id: str, lookup: Mapping[str, str], answer: Mapping[str, Any]) -> dict[str, Any] | None:
    return None
