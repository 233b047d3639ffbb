"""Persona (withpersona.com) webhooks: inquiry events, JSON:API shaped.

Auth: `Persona-Signature: t=<unix s>,v1=<hex>`, HMAC-SHA256 of `{t}.{raw body}` with the webhook
secret; during a secret rotation two such sets, space-separated (signing.PERSONA).
Body: `{"data": {"type": "event", "id": "evt_…", "attributes": {"name": "inquiry.approved",
"created-at": …, "payload": {"data": {"type": "inquiry", "id": "inq_…", "attributes": {…}}}}}}`.
The event name is the result; the inquiry id (`payload.data.id`) is the verification id; the
event's `created-at` orders results (Persona: deliveries are not in order, use it).
Personal data: the inquiry's attributes carry names, birthdates, addresses, document numbers and
`fields`; only its status timestamps, `reference-id` (the customer's own id) and the type and
status of its verifications are read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from processors import signing
from processors.model import ApiCredentials, Check, CheckOutcome, Normalized, Notice, PollRequest, Rejection
from processors.model import VerificationStatus as S
from processors.providers._read import obj, text, timestamp, word_check

NAME = "persona"
DEFAULT_AUTH = signing.PERSONA
METHODS = ("POST",)
HEADERS: tuple[str, ...] = ()
# Kafka away and no spool: 503. Persona retries any delivery not answered 2xx, a few times with
# exponential backoff (its docs: up to 5 attempts, 0, 3, 18, 83, 258 s apart; the attempts left are
# in `Persona-Webhook-Attempts-Left`): minutes, not hours, so an outage longer than that needs the
# source's `spool` or a poll (below) to recover the result.
UNAVAILABLE_STATUS = 503
FETCHES: dict[str, str] = {}  # every inquiry event carries its result

# Inquiry events that are results, by event name. `inquiry.completed` is the end user reaching the
# Completed screen (every required check passed) but not a decision: Persona's post-inquiry step
# (a workflow or a reviewer) may still mark it for review or decline it, and Persona tells
# integrators to act on approved / declined. So it is progress (PENDING), which never overrides a
# decision and is overridden by one. `inquiry.failed` is the Failed screen (a required check
# failed, or the attempts ran out): a decision, REJECTED.
_EVENTS = {
    "inquiry.created": S.PENDING,
    "inquiry.started": S.PENDING,
    "inquiry.completed": S.PENDING,
    "inquiry.approved": S.APPROVED,
    "inquiry.declined": S.REJECTED,
    "inquiry.failed": S.REJECTED,
    "inquiry.expired": S.EXPIRED,
    "inquiry.marked-for-review": S.REVIEW,
    "inquiry.needs_review": S.REVIEW,  # the name Persona's Help Center lifecycle table gives it
}
# The inquiry's `status` word (status API answers) -> the event that sets it (Persona's lifecycle).
_STATUS_EVENT = {
    "created": "inquiry.created",
    "pending": "inquiry.started",
    "completed": "inquiry.completed",
    "approved": "inquiry.approved",
    "declined": "inquiry.declined",
    "failed": "inquiry.failed",
    "expired": "inquiry.expired",
    "needs_review": "inquiry.marked-for-review",
    "needs review": "inquiry.marked-for-review",
}
# When the inquiry reached each status (attributes of the inquiry), for polled answers.
_STATUS_TIME = {
    "inquiry.created": "created-at",
    "inquiry.started": "started-at",
    "inquiry.completed": "completed-at",
    "inquiry.failed": "failed-at",
    "inquiry.expired": "expired-at",
    "inquiry.approved": "decisioned-at",
    "inquiry.declined": "decisioned-at",
    "inquiry.marked-for-review": "marked-for-review-at",
}
# Documented inquiry events that are not results: a step of a dynamic flow, a redaction (the status
# is kept as it was), reusable-persona use, tag changes. Notices, by their event name.
_INQUIRY_NOTICES = frozenset(
    {
        "inquiry.transitioned",
        "inquiry.redacted",
        "inquiry.reusable-persona-created",
        "inquiry.reusable-persona-used",
        "inquiry.updated-tags",
    }
)
# Persona's other documented resources (its Events page): their events are about accounts, cases,
# documents, single verifications, reports... not an inquiry's result. Notices, by event name.
_NOTICE_RESOURCES = frozenset(
    {
        "account",
        "account-type",
        "agent-conversation",
        "authentication",
        "case",
        "document",
        "importer",
        "inquiry-session",
        "report",
        "selfie",
        "transaction",
        "verification",
        "workflow-run",
    }
)
_EVENT_NAME = re.compile(r"[a-z0-9_/-]{1,40}(\.[a-z0-9_-]{1,40}){1,2}")
# A verification's status (included verification/* resources) -> a check outcome.
_CHECK_OUTCOMES = {"PASSED": CheckOutcome.PASS, "FAILED": CheckOutcome.FAIL}


def verification_id(doc: Mapping[str, Any]) -> str | None:
    """The inquiry id: the payload's own id for inquiry events; for events of an inquiry's parts
    (sessions, verifications) their inquiry relationship, so they share the inquiry's raw key."""
    event = obj(obj(doc.get("data")).get("attributes"))
    subject = obj(obj(event.get("payload")).get("data"))
    if (text(event.get("name")) or "").lower().startswith("inquiry."):
        return text(subject.get("id"))
    return text(obj(obj(obj(subject.get("relationships")).get("inquiry")).get("data")).get("id"))


def normalize(doc: Mapping[str, Any], headers: Mapping[str, str]) -> Normalized | Notice | Rejection:
    data = obj(doc.get("data"))
    kind = text(data.get("type"))
    event = obj(data.get("attributes"))
    raw_name = text(event.get("name"))
    if (kind is not None and kind.lower() != "event") or raw_name is None:
        return Rejection(
            "unrecognized_event", "persona payload is not an event (data.type event, data.attributes.name)"
        )
    name = raw_name.lower()
    if not _EVENT_NAME.fullmatch(name):
        return Rejection("unrecognized_event", f"persona event name {raw_name[:80]!r} is not an event name")
    status = _EVENTS.get(name)
    if status is None:
        if name in _INQUIRY_NOTICES or name.split(".", 1)[0].split("/", 1)[0] in _NOTICE_RESOURCES:
            return Notice(name)
        return Rejection("unknown_status", f"persona event {name!r} has no mapping")
    inquiry = obj(obj(event.get("payload")).get("data"))
    if (payload_type := text(inquiry.get("type"))) is not None and payload_type.lower() != "inquiry":
        return Rejection("unrecognized_event", f"persona {name} payload is a {payload_type[:40]!r}, not an inquiry")
    vid = text(inquiry.get("id"))
    if vid is None:
        return Rejection("missing_verification_id", f"persona {name} has no data.attributes.payload.data.id")
    attributes = obj(inquiry.get("attributes"))
    found = {"template_id": _template_id(inquiry)}
    if (event_id := text(data.get("id"))) is not None:
        found["persona_event_id"] = event_id
    return Normalized(
        verification_id=vid,
        status=status,
        provider_status=name,
        # The result, not the delivery: a retry, a polled answer and a late callback share it; a
        # reversal (approved, declined, approved again) is told apart by `created-at` (state.repeat).
        idempotency_key=f"{NAME}:{vid}:{name}",
        occurred_at=timestamp(event.get("created-at")),
        event_type=name,
        subject_id=_subject(attributes.get("reference-id")),
        checks=_checks(doc, inquiry),
        attributes={k: v for k, v in found.items() if v is not None},
    )


def _subject(value: object) -> str | None:
    """The customer's own id for the person; one that is an email address is personal data, not kept."""
    reference = text(value)
    return None if reference is None or "@" in reference else reference


def _template_id(inquiry: Mapping[str, Any]) -> str | None:
    relations = obj(inquiry.get("relationships"))
    for relation in ("inquiry-template", "template"):
        if (found := text(obj(obj(relations.get(relation)).get("data")).get("id"))) is not None:
            return found
    return None


def _checks(doc: Mapping[str, Any], inquiry: Mapping[str, Any]) -> tuple[Check, ...]:
    """One check per verification of the inquiry that the event includes (its type and status only:
    the rest of a verification is the person's data)."""
    wanted = {
        text(obj(item).get("id"))
        for item in _list(obj(obj(obj(inquiry.get("relationships")).get("verifications")).get("data")))
    }
    wanted.discard(None)
    included = _list(obj(obj(obj(doc.get("data")).get("attributes")).get("payload")).get("included"))
    checks = []
    for item in included:
        entry = obj(item)
        kind = text(entry.get("type")) or ""
        if not kind.startswith("verification/") or (wanted and text(entry.get("id")) not in wanted):
            continue
        checks.append(word_check(kind, obj(entry.get("attributes")).get("status"), _CHECK_OUTCOMES))
    return tuple(checks)


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


# --- reconciliation: Retrieve an Inquiry (GET /api/v1/inquiries/{id}, Bearer API key) -----------


def poll_request(verification_id: str, lookup: Mapping[str, str], credentials: ApiCredentials) -> PollRequest:
    return PollRequest(
        path=f"/api/v1/inquiries/{verification_id}", headers={"authorization": f"Bearer {credentials.token}"}
    )


def poll_result(verification_id: str, lookup: Mapping[str, str], answer: Mapping[str, Any]) -> dict[str, Any] | None:
    """The inquiry as the event its status comes from (approved -> inquiry.approved, ...), so that a
    polled result and its callback share a key. The event's time is when the inquiry reached that
    status (decisioned-at, completed-at, ...; else updated-at): never later than the event's own
    `created-at`, so a late callback of the same result is a repeat, not a new event. Only ids,
    status and times are kept of the inquiry: the raw topic needs no second copy of the person."""
    inquiry = obj(answer.get("data"))
    attributes = obj(inquiry.get("attributes"))
    word = text(attributes.get("status"))
    if word is None or text(inquiry.get("id")) not in (None, verification_id):
        return None
    name = _STATUS_EVENT.get(word.lower())
    if name is None:  # a status word this module does not know: its event dead-letters unknown_status
        name = "inquiry." + re.sub(r"[^a-z0-9_-]", "-", word.lower())[:40]
    moment = text(attributes.get(_STATUS_TIME.get(name, ""))) or text(attributes.get("updated-at"))
    kept = {k: attributes[k] for k in ("status", "reference-id", *_STATUS_TIME.values()) if k in attributes}
    event: dict[str, Any] = {"name": name, "payload": {"data": {"type": "inquiry", "id": verification_id}}}
    event["payload"]["data"]["attributes"] = kept
    if relations := _relations(inquiry):
        event["payload"]["data"]["relationships"] = relations
    if moment is not None:
        event["created-at"] = moment
    return {"data": {"type": "event", "attributes": event}}


def _relations(inquiry: Mapping[str, Any]) -> dict[str, Any]:
    relations = obj(inquiry.get("relationships"))
    return {k: relations[k] for k in ("inquiry-template", "template") if isinstance(relations.get(k), Mapping)}
