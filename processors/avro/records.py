"""Model objects to the dicts the Avro schemas describe, and back (the codec turns those into bytes).

Timestamps go out as aware datetimes (a naive one taken as UTC) and come back as aware UTC ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from processors.model import (
    Check,
    CheckOutcome,
    DeadLetter,
    DedupRecord,
    Expectation,
    Origin,
    RawDelivery,
    RawRef,
    Reason,
    VerificationEvent,
    VerificationState,
    VerificationStatus,
)


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def delivery_to_record(d: RawDelivery) -> dict[str, Any]:
    return {
        "request_id": d.request_id,
        "source": d.source,
        "provider": d.provider,
        "method": d.method,
        "received_at": _utc(d.received_at),
        "body": d.body,
        "headers": dict(d.headers),
        "remote_addr": d.remote_addr,
        "content_type": d.content_type,
        "origin": d.origin,
    }


def _origin(value: object) -> Origin:
    if value == "poll" or value == "fetch":
        return value
    return "callback"


def delivery_from_record(r: Mapping[str, Any]) -> RawDelivery:
    return RawDelivery(
        request_id=r["request_id"],
        source=r["source"],
        provider=r["provider"],
        method=r["method"],
        received_at=r["received_at"],
        body=r["body"],
        headers=dict(r.get("headers") or {}),
        remote_addr=r.get("remote_addr"),
        content_type=r.get("content_type"),
        origin=_origin(r.get("origin")),
    )


def event_to_record(e: VerificationEvent) -> dict[str, Any]:
    return {
        "event_id": e.event_id,
        "idempotency_key": e.idempotency_key,
        "provider": e.provider,
        "source": e.source,
        "verification_id": e.verification_id,
        "status": e.status.value,
        "provider_status": e.provider_status,
        "event_type": e.event_type,
        "subject_id": e.subject_id,
        "session_id": e.session_id,
        "occurred_at": _utc(e.occurred_at),
        "received_at": _utc(e.received_at),
        "checks": [
            {"name": c.name, "outcome": c.outcome.value, "score": c.score, "code": c.code, "message": c.message}
            for c in e.checks
        ],
        "reasons": [{"code": r.code, "message": r.message, "field": r.field} for r in e.reasons],
        "attributes": dict(e.attributes),
        "raw_ref": (
            None
            if e.raw_ref is None
            else {
                "topic": e.raw_ref.topic,
                "partition": e.raw_ref.partition,
                "offset": e.raw_ref.offset,
                "request_id": e.raw_ref.request_id,
            }
        ),
    }


def event_from_record(r: Mapping[str, Any]) -> VerificationEvent:
    ref = r.get("raw_ref")
    return VerificationEvent(
        event_id=r["event_id"],
        idempotency_key=r["idempotency_key"],
        provider=r["provider"],
        source=r["source"],
        verification_id=r["verification_id"],
        status=VerificationStatus(r["status"]),
        provider_status=r["provider_status"],
        event_type=r.get("event_type"),
        subject_id=r.get("subject_id"),
        session_id=r.get("session_id"),
        occurred_at=r.get("occurred_at"),
        received_at=r["received_at"],
        checks=tuple(
            Check(c["name"], CheckOutcome(c["outcome"]), c.get("score"), c.get("code"), c.get("message"))
            for c in r.get("checks") or ()
        ),
        reasons=tuple(Reason(x["code"], x.get("message"), x.get("field")) for x in r.get("reasons") or ()),
        attributes=dict(r.get("attributes") or {}),
        raw_ref=None if ref is None else RawRef(ref["topic"], ref["partition"], ref["offset"], ref["request_id"]),
    )


def state_to_record(s: VerificationState) -> dict[str, Any]:
    return {
        "key": s.key,
        "provider": s.provider,
        "verification_id": s.verification_id,
        "status": s.status.value,
        "last_event_id": s.last_event_id,
        "updated_at": _utc(s.updated_at),
        "occurred_at": _utc(s.occurred_at),
        "decided_at": _utc(s.decided_at),
        "event_count": s.event_count,
        "raw_offset": s.raw_offset,
    }


def state_from_record(r: Mapping[str, Any]) -> VerificationState:
    return VerificationState(
        key=r["key"],
        provider=r["provider"],
        verification_id=r["verification_id"],
        status=VerificationStatus(r["status"]),
        last_event_id=r["last_event_id"],
        updated_at=r["updated_at"],
        occurred_at=r.get("occurred_at"),
        decided_at=r.get("decided_at"),
        event_count=r.get("event_count", 1),
        raw_offset=r.get("raw_offset", -1),
    )


def dead_letter_to_record(d: DeadLetter) -> dict[str, Any]:
    return {
        "reason": d.reason,
        "detail": d.detail,
        "failed_at": _utc(d.failed_at),
        "source_topic": d.source_topic,
        "partition": d.partition,
        "offset": d.offset,
        "original_value": d.original_value,
        "original_key": d.original_key,
        "request_id": d.request_id,
        "source": d.source,
        "provider": d.provider,
        "original_size": d.original_size,
    }


def dead_letter_from_record(r: Mapping[str, Any]) -> DeadLetter:
    return DeadLetter(
        reason=r["reason"],
        detail=r["detail"],
        failed_at=r["failed_at"],
        source_topic=r["source_topic"],
        partition=r["partition"],
        offset=r["offset"],
        original_value=r["original_value"],
        original_key=r.get("original_key"),
        request_id=r.get("request_id"),
        source=r.get("source"),
        provider=r.get("provider"),
        original_size=r.get("original_size"),
    )


def dedup_to_record(d: DedupRecord) -> dict[str, Any]:
    first_seen_at, expires_at = _utc(d.first_seen_at), _utc(d.expires_at)
    assert first_seen_at is not None and expires_at is not None
    return dedup_record(d.idempotency_key, d.event_id, first_seen_at, expires_at, d.events_offset)


def dedup_record(
    key: str, event_id: str, first_seen_at: datetime | int, expires_at: datetime | int, events_offset: int
) -> dict[str, Any]:
    """A DedupRecord's dict without the model object; timestamps as aware datetimes or epoch ms (the
    processor writes one per event, all of a batch with the same times: it converts them once)."""
    return {
        "idempotency_key": key,
        "event_id": event_id,
        "first_seen_at": first_seen_at,
        "expires_at": expires_at,
        "events_offset": events_offset,
    }


def dedup_from_record(r: Mapping[str, Any]) -> DedupRecord:
    return DedupRecord(
        r["idempotency_key"], r["event_id"], r["first_seen_at"], r["expires_at"], r.get("events_offset", -1)
    )


def expectation_to_record(e: Expectation) -> dict[str, Any]:
    return {
        "source": e.source,
        "provider": e.provider,
        "verification_id": e.verification_id,
        "lookup": dict(e.lookup),
        "expected_at": _utc(e.expected_at),
        "window_s": e.window_s,
        "last_polled_at": _utc(e.last_polled_at),
        "polls": e.polls,
    }


def expectation_from_record(r: Mapping[str, Any]) -> Expectation:
    return Expectation(
        source=r["source"],
        provider=r["provider"],
        verification_id=r["verification_id"],
        expected_at=r["expected_at"],
        lookup=dict(r.get("lookup") or {}),
        window_s=r.get("window_s"),
        last_polled_at=r.get("last_polled_at"),
        polls=r.get("polls", 0),
    )
