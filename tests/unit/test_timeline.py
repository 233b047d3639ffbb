"""One verification's timeline from its records (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from processors.model import (
    DeadLetter,
    Expectation,
    RawDelivery,
    RawRef,
    VerificationEvent,
    VerificationState,
    VerificationStatus,
)
from processors.operate.timeline import Found, Scanned, Undecodable, assemble, to_json, to_table

T0 = datetime(2026, 5, 8, 10, 30, tzinfo=UTC)
KEY = "esign:sub-1"
BODY = b'{"submissionId":"sub-1","nik":"3201234567890001"}'


def _found(role: str, offset: int, seconds: float, value: object) -> Found:
    return Found(role, f"t.{role}", 1, offset, T0 + timedelta(seconds=seconds), value)  # type: ignore[arg-type]


def _records() -> list[Found]:
    delivery = RawDelivery("req-1", "esign", "esign", "POST", T0, BODY, {"x-onekyc-token": "t"})
    event = VerificationEvent(
        "ev-1", "ik-1", "esign", "esign", "sub-1", VerificationStatus.APPROVED, "COMPLETED/VALID", T0, None,
        RawRef("t.raw", 1, 7, "req-1"),
    )  # fmt: skip
    state = VerificationState(KEY, "esign", "sub-1", VerificationStatus.APPROVED, "ev-1", T0)
    letter = DeadLetter("unknown_status", "esign status 'X'", T0, "t.raw", 1, 8, b"...", KEY.encode(), "req-2")
    expectation = Expectation("esign", "esign", "sub-1", T0, {"x-partner-ref": "p-1"})
    # Given out of order, and the event, state and dead letter written in the same millisecond.
    return [
        _found("dlq", 3, 2, letter),
        _found("state", 5, 2, state),
        _found("events", 4, 2, event),
        _found("raw", 7, 1, delivery),
        _found("expected", 0, 0, expectation),
        _found("expected", 1, 3, None),
    ]


def test_records_in_time_order_with_the_current_state() -> None:
    story = assemble(KEY, T0, _records(), [Scanned("t.raw", 1, 0, 3)])
    assert [e.kind for e in story.entries] == [
        "expectation",
        "delivery",
        "event",
        "state",
        "dead_letter",
        "expectation_closed",
    ]
    assert story.state is not None and story.state.status is VerificationStatus.APPROVED
    doc = to_json(story)
    assert doc["state"]["status"] == "APPROVED"
    assert doc["timeline"][2] == {
        "at": "2026-05-08T10:30:02.000Z",
        "kind": "event",
        "record": "t.events[1]@4",
        "status": "APPROVED",
        "provider_status": "COMPLETED/VALID",
        "event_id": "ev-1",
        "event_type": None,
        "occurred_at": None,
        "request_id": "req-1",
        "checks": [],
        "reasons": [],
    }
    assert doc["read"] == [{"topic": "t.raw", "partition": 1, "from_offset": 0, "records": 3}]
    table = to_table(story)
    assert table.splitlines()[0].startswith(f"{KEY}: APPROVED after 1 event(s)")
    assert "unknown_status: esign status 'X' (of t.raw[1]@8, request req-2)" in table


def test_personal_data_only_with_show_bodies() -> None:
    hidden = str(to_json(assemble(KEY, T0, _records()))) + to_table(assemble(KEY, T0, _records()))
    assert "3201234567890001" not in hidden and "x-onekyc-token" not in hidden and "p-1" not in hidden
    shown = assemble(KEY, T0, _records(), show_bodies=True)
    (delivery,) = [e for e in shown.entries if e.kind == "delivery"]
    assert delivery.fields["body"] == BODY.decode()
    assert "3201234567890001" in to_table(shown)


def test_a_deleted_state_is_no_state_and_undecodable_records_are_shown() -> None:
    records = [*_records(), _found("state", 6, 4, None), _found("raw", 9, 5, Undecodable("bad bytes"))]
    story = assemble(KEY, T0, records)
    assert story.state is None
    assert [e.kind for e in story.entries][-2:] == ["state_deleted", "undecodable"]


def test_nothing_found_says_why_it_may_be() -> None:
    assert "keyed by its request id" in to_table(assemble(KEY, T0, []))
