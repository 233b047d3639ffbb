"""One verification's story, from the records that carry its key: pure assembly and rendering.

`kycstream inspect` reads the records (processors.operate.lookup); this module orders them and says
what each one means. Bodies, headers and expectation lookups hold personal data: they appear only
when asked for (`show_bodies`).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from processors.model import DeadLetter, Expectation, RawDelivery, VerificationEvent, VerificationState

Role = Literal["expected", "raw", "events", "state", "dlq"]
ROLES: tuple[Role, ...] = ("expected", "raw", "events", "state", "dlq")  # also the order of equal times


@dataclass(frozen=True, slots=True)
class Undecodable:
    error: str


Value = RawDelivery | VerificationEvent | VerificationState | DeadLetter | Expectation | Undecodable | None


@dataclass(frozen=True, slots=True)
class Found:
    """One record of the key: where it is, when it was written (its Kafka timestamp), what it holds
    (None: a tombstone)."""

    role: Role
    topic: str
    partition: int
    offset: int
    written_at: datetime
    value: Value


@dataclass(frozen=True, slots=True)
class Scanned:
    """One partition read to find the key: from which offset, and how many records (of any key)."""

    topic: str
    partition: int
    start: int
    records: int


@dataclass(frozen=True, slots=True)
class Entry:
    at: datetime
    kind: str  # delivery, event, state, state_deleted, dead_letter, expectation, expectation_closed, undecodable
    topic: str
    partition: int
    offset: int
    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Timeline:
    key: str
    since: datetime
    state: VerificationState | None  # the last state record read (None: none, or deleted)
    entries: tuple[Entry, ...]
    scanned: tuple[Scanned, ...] = ()


def assemble(
    key: str, since: datetime, found: Iterable[Found], scanned: Iterable[Scanned] = (), *, show_bodies: bool = False
) -> Timeline:
    ordered = sorted(found, key=lambda f: (f.written_at, ROLES.index(f.role), f.offset))
    state: VerificationState | None = None
    for f in ordered:
        if f.role == "state" and not isinstance(f.value, Undecodable):
            state = f.value if isinstance(f.value, VerificationState) else None
    entries = tuple(
        Entry(f.written_at, kind, f.topic, f.partition, f.offset, fields)
        for f in ordered
        for kind, fields in (_describe(f, show_bodies),)
    )
    return Timeline(key, since, state, entries, tuple(scanned))


def _describe(f: Found, show_bodies: bool) -> tuple[str, dict[str, Any]]:
    v = f.value
    if isinstance(v, Undecodable):
        return "undecodable", {"error": v.error}
    if isinstance(v, RawDelivery):
        fields: dict[str, Any] = {
            "origin": v.origin,
            "source": v.source,
            "request_id": v.request_id,
            "method": v.method,
            "received_at": _time(v.received_at),
        }
        if show_bodies:
            fields |= {"headers": dict(v.headers), "body": _text(v.body)}
        return "delivery", fields
    if isinstance(v, VerificationEvent):
        return "event", {
            "status": v.status.value,
            "provider_status": v.provider_status,
            "event_id": v.event_id,
            "event_type": v.event_type,
            "occurred_at": _time(v.occurred_at),
            "request_id": v.raw_ref.request_id if v.raw_ref else None,
            "checks": [
                {"name": c.name, "outcome": c.outcome.value, "score": c.score, "code": c.code} for c in v.checks
            ],
            "reasons": [{"code": r.code, "message": r.message, "field": r.field} for r in v.reasons],
        }
    if isinstance(v, VerificationState):
        return "state", {
            "status": v.status.value,
            "event_count": v.event_count,
            "last_event_id": v.last_event_id,
            "decided_at": _time(v.decided_at),
        }
    if isinstance(v, DeadLetter):
        return "dead_letter", {
            "reason": v.reason,
            "detail": v.detail,
            "of": f"{v.source_topic}[{v.partition}]@{v.offset}",
            "request_id": v.request_id,
        }
    if isinstance(v, Expectation):
        fields = {"source": v.source, "expected_at": _time(v.expected_at), "window_s": v.window_s}
        if show_bodies:
            fields["lookup"] = dict(v.lookup)
        return "expectation", fields
    return {"state": "state_deleted", "expected": "expectation_closed"}.get(f.role, "tombstone"), {}


def to_json(t: Timeline) -> dict[str, Any]:
    return {
        "key": t.key,
        "since": _time(t.since),
        "state": _state(t.state),
        "timeline": [
            {"at": _time(e.at), "kind": e.kind, "record": f"{e.topic}[{e.partition}]@{e.offset}", **e.fields}
            for e in t.entries
        ],
        "read": [
            {"topic": s.topic, "partition": s.partition, "from_offset": s.start, "records": s.records}
            for s in t.scanned
        ],
    }


def to_table(t: Timeline) -> str:
    s = t.state
    head = (
        f"{t.key}: {s.status.value} after {s.event_count} event(s), updated {_time(s.updated_at)}"
        if s
        else f"{t.key}: no state"
    )
    lines = [head, f"records since {_time(t.since)}: {len(t.entries)}", ""]
    if t.entries:
        lines.append(f"{'WHEN (UTC)':<24}  {'WHAT':<18}  DETAIL")
    for e in t.entries:
        lines.append(f"{_time(e.at):<24}  {e.kind:<18}  {_summary(e)}")
        if "body" in e.fields:
            lines.append(f"{'':<44}headers: {e.fields['headers']}")
            lines.append(f"{'':<44}body: {e.fields['body']}")
    if not t.entries:
        lines.append(
            "Nothing found. A delivery whose verification id could not be read is keyed by its request id and is "
            "not found by key; older records need an earlier --since."
        )
    read = ", ".join(f"{s.topic}[{s.partition}] {s.records} from offset {s.start}" for s in t.scanned)
    if read:
        lines += ["", f"read: {read}"]
    return "\n".join(lines)


def _summary(e: Entry) -> str:
    f = e.fields
    if e.kind == "delivery":
        return f"{f['origin']} from {f['source']} ({f['method']}), request {f['request_id']}"
    if e.kind == "event":
        checks = ", ".join(
            f"{c['name']} {c['outcome']}" + (f" {c['score']:g}" if c["score"] is not None else "") for c in f["checks"]
        )
        reasons = ", ".join(r["code"] for r in f["reasons"])
        return (
            f"{f['status']} ({f['provider_status']}), event {f['event_id']}"
            + (f", checks: {checks}" if checks else "")
            + (f", reasons: {reasons}" if reasons else "")
        )
    if e.kind == "state":
        return f"{f['status']} after {f['event_count']} event(s), last event {f['last_event_id']}"
    if e.kind == "dead_letter":
        request = f", request {f['request_id']}" if f["request_id"] else ""
        return f"{f['reason']}: {f['detail']} (of {f['of']}{request})"
    if e.kind == "expectation":
        window = f", window {f['window_s']} s" if f["window_s"] else ""
        return f"expected via {f['source']}{window}"
    if e.kind == "expectation_closed":
        return "no longer tracked: a final result came, or the reconciler gave up (see dead letters)"
    if e.kind == "undecodable":
        return f"undecodable: {f['error']}"
    return ""


def _state(s: VerificationState | None) -> dict[str, Any] | None:
    if s is None:
        return None
    return {
        "status": s.status.value,
        "event_count": s.event_count,
        "last_event_id": s.last_event_id,
        "updated_at": _time(s.updated_at),
        "occurred_at": _time(s.occurred_at),
        "decided_at": _time(s.decided_at),
    }


def _time(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _text(body: bytes) -> str | dict[str, str]:
    try:
        return body.decode()
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(body).decode()}
