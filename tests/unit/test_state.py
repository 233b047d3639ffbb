"""The state table's rule (processors/state.py) as behaviour: never regress, later decision wins,
deterministic ties, and a final state that does not depend on the order events arrive in."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors import state
from processors.avro.records import state_from_record, state_to_record
from processors.kafka.serde import Codec
from processors.model import VerificationEvent, VerificationState, VerificationStatus

S = VerificationStatus
T0 = datetime(2026, 5, 8, 10, 30, tzinfo=UTC)
NOW = datetime(2026, 5, 8, 12, 0, tzinfo=UTC)
DECISIONS = (S.APPROVED, S.REJECTED, S.RESUBMISSION_REQUIRED)
SETTLED = (*DECISIONS, S.REVIEW, S.EXPIRED)
IN_PROGRESS = (S.PENDING, S.ERROR)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def ev(
    status: S,
    occurred: datetime | None,
    event_id: str,
    *,
    received: datetime | None = None,
    provider: str = "metamap",
    vid: str = "v-1",
) -> VerificationEvent:
    return VerificationEvent(
        event_id=event_id,
        idempotency_key=f"{provider}:{vid}:{event_id}",
        provider=provider,
        source=provider,
        verification_id=vid,
        status=status,
        provider_status=status.value.lower(),
        received_at=received or NOW,
        occurred_at=occurred,
        raw_ref=None,
    )


def fold(events: Iterable[VerificationEvent], now: datetime = NOW) -> VerificationState:
    current: VerificationState | None = None
    for event in events:
        current = state.apply(current, event, now)
    assert current is not None
    return current


# --- the first event -----------------------------------------------------------------------------


def test_first_event_becomes_the_state() -> None:
    event = ev(S.PENDING, at(0), "e1", provider="esign", vid="sub-9")
    s = state.apply(None, event, NOW)
    assert s == VerificationState(
        key="esign:sub-9",
        provider="esign",
        verification_id="sub-9",
        status=S.PENDING,
        last_event_id="e1",
        updated_at=NOW,
        occurred_at=at(0),
        decided_at=None,
        event_count=1,
    )


def test_first_decision_sets_decided_at() -> None:
    s = state.apply(None, ev(S.REJECTED, at(3), "e1"), NOW)
    assert (s.status, s.decided_at, s.occurred_at) == (S.REJECTED, at(3), at(3))


# --- in progress never replaces a decision or a review ----------------------------------------------


@pytest.mark.parametrize("settled", SETTLED)
@pytest.mark.parametrize("late", IN_PROGRESS)
@pytest.mark.parametrize("offset", [-60, -1, 0, 1, 60 * 24 * 30], ids=lambda m: f"{m:+}min")
@pytest.mark.parametrize("late_id", ["0", "zzz"])
def test_in_progress_never_replaces_a_settled_status(settled: S, late: S, offset: int, late_id: str) -> None:
    first = ev(settled, at(0), "m")
    s = fold([first, ev(late, at(offset), late_id)])
    assert s.status is settled
    assert s.last_event_id == "m"
    assert s.occurred_at == at(0)
    assert s.event_count == 2


def test_esign_partially_completed_after_completed_leaves_approved() -> None:
    # COMPLETED+VALID at 10:30, then a PARTIALLY_COMPLETED+VALID (PENDING) processed later.
    approved = ev(S.APPROVED, at(0), "completed", provider="esign", vid="sub-1")
    partial = ev(S.PENDING, at(5), "partial", provider="esign", vid="sub-1")
    s = fold([approved, partial])
    assert (s.status, s.last_event_id, s.decided_at, s.event_count) == (S.APPROVED, "completed", at(0), 2)


def test_late_system_error_after_rejection_leaves_rejected() -> None:
    s = fold([ev(S.REJECTED, at(0), "rej", provider="esign"), ev(S.ERROR, at(10), "err", provider="esign")])
    assert s.status is S.REJECTED


# --- a decision or review replaces any in-progress status --------------------------------------------


@pytest.mark.parametrize("settled", SETTLED)
@pytest.mark.parametrize("progress", IN_PROGRESS)
@pytest.mark.parametrize("offset", [-60 * 24, -1, 0, 1], ids=lambda m: f"{m:+}min")
def test_settled_replaces_in_progress_even_if_older(settled: S, progress: S, offset: int) -> None:
    s = fold([ev(progress, at(0), "zzz"), ev(settled, at(offset), "a")])
    assert s.status is settled
    assert s.last_event_id == "a"
    assert s.occurred_at == at(offset)


# --- within a rank, the later provider timestamp wins --------------------------------------


def test_later_rejection_overturns_approval() -> None:
    # metamap verification_completed verified, then verification_updated rejected (manual review)
    s = fold([ev(S.APPROVED, at(0), "completed"), ev(S.REJECTED, at(60), "updated")])
    assert (s.status, s.last_event_id, s.decided_at, s.occurred_at) == (S.REJECTED, "updated", at(60), at(60))


def test_older_rejection_does_not_overturn_approval() -> None:
    s = fold([ev(S.APPROVED, at(60), "completed"), ev(S.REJECTED, at(0), "updated")])
    assert (s.status, s.last_event_id, s.decided_at, s.occurred_at) == (S.APPROVED, "completed", at(60), at(60))
    assert s.event_count == 2


def test_review_then_later_approval_is_approved() -> None:
    s = fold([ev(S.REVIEW, at(0), "review"), ev(S.APPROVED, at(30), "approved")])
    assert (s.status, s.decided_at) == (S.APPROVED, at(30))


def test_approval_then_older_review_stays_approved() -> None:
    s = fold([ev(S.APPROVED, at(30), "approved"), ev(S.REVIEW, at(0), "review")])
    assert (s.status, s.last_event_id, s.decided_at) == (S.APPROVED, "approved", at(30))


def test_a_later_review_does_not_reopen_a_decision() -> None:
    s = fold([ev(S.APPROVED, at(0), "approved"), ev(S.REVIEW, at(30), "review")])
    assert (s.status, s.last_event_id, s.occurred_at, s.decided_at) == (S.APPROVED, "approved", at(0), at(0))
    assert s.event_count == 2


# --- EXPIRED: replaces in progress and review, never a decision, replaced only by a decision ----------


@pytest.mark.parametrize("earlier", [*IN_PROGRESS, S.REVIEW])
@pytest.mark.parametrize("offset", [-60, 0, 60], ids=lambda m: f"{m:+}min")
def test_expired_replaces_in_progress_and_review_whatever_its_time(earlier: S, offset: int) -> None:
    s = fold([ev(earlier, at(0), "zzz"), ev(S.EXPIRED, at(offset), "x")])
    assert (s.status, s.last_event_id, s.decided_at) == (S.EXPIRED, "x", None)
    assert fold([ev(S.EXPIRED, at(offset), "x"), ev(earlier, at(0), "zzz")]).status is S.EXPIRED


@pytest.mark.parametrize("decision", DECISIONS)
@pytest.mark.parametrize("offset", [-60, 0, 60], ids=lambda m: f"{m:+}min")
def test_a_late_expired_never_replaces_a_decision(decision: S, offset: int) -> None:
    # e.g. MetaMap verification_completed verified, then verification_expired (later or not)
    s = fold([ev(decision, at(0), "a"), ev(S.EXPIRED, at(offset), "zzz")])
    assert (s.status, s.last_event_id, s.decided_at, s.event_count) == (decision, "a", at(0), 2)


@pytest.mark.parametrize("decision", DECISIONS)
@pytest.mark.parametrize("offset", [-60, 60], ids=lambda m: f"{m:+}min")
def test_a_decision_replaces_expired_whatever_its_time(decision: S, offset: int) -> None:
    # A decision the provider made before the session expired, delivered late, is still the decision.
    s = fold([ev(S.EXPIRED, at(0), "x"), ev(decision, at(offset), "a")])
    assert (s.status, s.decided_at) == (decision, at(offset))


@pytest.mark.parametrize("late", [*IN_PROGRESS, S.REVIEW])
def test_a_later_in_progress_or_review_does_not_revive_an_expired_verification(late: S) -> None:
    # "No result will come unless a new verification starts", and a new one has a new id: a later
    # PENDING on the same id is a late step callback, not a restart.
    s = fold([ev(S.EXPIRED, at(0), "x"), ev(late, at(30), "zzz")])
    assert (s.status, s.last_event_id, s.occurred_at) == (S.EXPIRED, "x", at(0))


def test_among_expiries_the_later_wins() -> None:
    assert fold([ev(S.EXPIRED, at(1), "a"), ev(S.EXPIRED, at(0), "z")]).last_event_id == "a"


@pytest.mark.parametrize(("older", "newer"), [(S.PENDING, S.ERROR), (S.ERROR, S.PENDING)])
def test_among_in_progress_the_later_wins(older: S, newer: S) -> None:
    assert fold([ev(older, at(0), "z"), ev(newer, at(1), "a")]).status is newer
    assert fold([ev(newer, at(1), "a"), ev(older, at(0), "z")]).status is newer


# --- ties: the higher rank, then the greater event id; whatever the arrival order ----------------


@pytest.mark.parametrize("decision", DECISIONS)
@pytest.mark.parametrize(("decision_id", "review_id"), [("a", "z"), ("z", "a")])
def test_tie_decision_beats_review_in_either_order(decision: S, decision_id: str, review_id: str) -> None:
    d, r = ev(decision, at(0), decision_id), ev(S.REVIEW, at(0), review_id)
    for order in ([d, r], [r, d]):
        s = fold(order)
        assert (s.status, s.last_event_id) == (decision, decision_id)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (S.APPROVED, S.REJECTED),
        (S.REJECTED, S.RESUBMISSION_REQUIRED),
        (S.APPROVED, S.RESUBMISSION_REQUIRED),
        (S.REVIEW, S.REVIEW),
        (S.PENDING, S.ERROR),
        (S.PENDING, S.PENDING),
    ],
)
def test_tie_in_the_same_tier_goes_to_the_greater_event_id(a: S, b: S) -> None:
    low, high = ev(a, at(0), "evt-0001"), ev(b, at(0), "evt-0002")
    for order in ([low, high], [high, low]):
        s = fold(order)
        assert (s.status, s.last_event_id) == (b, "evt-0002")


def test_tie_settled_beats_in_progress_whatever_the_ids() -> None:
    for order in (
        [ev(S.REVIEW, at(0), "a"), ev(S.ERROR, at(0), "z")],
        [ev(S.ERROR, at(0), "z"), ev(S.REVIEW, at(0), "a")],
    ):
        assert fold(order).status is S.REVIEW


def test_same_event_applied_twice_changes_nothing_but_the_count() -> None:
    e = ev(S.APPROVED, at(0), "e1")
    once, twice = fold([e]), fold([e, e])
    assert (twice.status, twice.last_event_id, twice.decided_at) == (once.status, once.last_event_id, once.decided_at)
    assert twice.event_count == 2


# --- timestamps: occurred_at falls back to received_at ---------------------------------------------------


def test_missing_occurred_at_falls_back_to_received_at() -> None:
    s = state.apply(None, ev(S.APPROVED, None, "e1", received=at(7)), NOW)
    assert (s.occurred_at, s.decided_at) == (at(7), at(7))


def test_received_at_of_an_undated_event_is_compared_with_provider_times() -> None:
    dated = ev(S.APPROVED, at(10), "dated", received=at(11))
    later_undated = ev(S.REJECTED, None, "undated", received=at(20))
    earlier_undated = ev(S.REJECTED, None, "undated", received=at(5))
    assert fold([dated, later_undated]).status is S.REJECTED
    assert fold([later_undated, dated]).status is S.REJECTED
    assert fold([dated, earlier_undated]).status is S.APPROVED
    assert fold([earlier_undated, dated]).status is S.APPROVED


def test_received_at_is_ignored_when_occurred_at_is_given() -> None:
    # received much later, but the provider says it happened earlier: an older event
    s = fold([ev(S.APPROVED, at(10), "a", received=at(10)), ev(S.REJECTED, at(0), "b", received=at(99))])
    assert s.status is S.APPROVED


def test_supersedes_uses_updated_at_when_a_restored_state_has_no_occurred_at() -> None:
    restored = VerificationState("metamap:v-1", "metamap", "v-1", S.APPROVED, "old", updated_at=at(10))
    assert state.supersedes(ev(S.REJECTED, at(11), "new"), restored)
    assert not state.supersedes(ev(S.REJECTED, at(9), "new"), restored)


# --- bookkeeping: event_count, decided_at, updated_at ---------------------------------------------------


def test_event_count_counts_every_applied_event() -> None:
    events = [
        ev(S.PENDING, at(0), "1"),
        ev(S.APPROVED, at(5), "2"),
        ev(S.PENDING, at(6), "3"),  # ignored
        ev(S.REJECTED, at(1), "4"),  # older: ignored
        ev(S.APPROVED, at(5), "2"),  # repeat
    ]
    assert [fold(events[:n]).event_count for n in range(1, 6)] == [1, 2, 3, 4, 5]


def test_decided_at_is_set_by_decisions_and_kept_otherwise() -> None:
    steps = [
        (ev(S.PENDING, at(0), "p1"), None),
        (ev(S.REVIEW, at(1), "r1"), None),  # a review is not a decision
        (ev(S.APPROVED, at(2), "a1"), at(2)),
        (ev(S.PENDING, at(3), "p2"), at(2)),  # ignored
        (ev(S.REJECTED, at(1.5), "x1"), at(2)),  # older decision: ignored
        (ev(S.REVIEW, at(4), "r2"), at(2)),  # ignored: a review never replaces a decision
        (ev(S.REJECTED, at(5), "x2"), at(5)),  # overturns
    ]
    current: VerificationState | None = None
    for event, decided in steps:
        current = state.apply(current, event, NOW)
        assert current.decided_at == decided, event


def test_updated_at_is_the_processing_time_even_when_ignored() -> None:
    s1 = state.apply(None, ev(S.APPROVED, at(0), "a"), at(100))
    s2 = state.apply(s1, ev(S.PENDING, at(1), "p"), at(200))
    assert (s1.updated_at, s2.updated_at, s2.occurred_at) == (at(100), at(200), at(0))


def test_identity_fields_come_from_the_verification() -> None:
    s = fold(
        [
            ev(S.PENDING, at(0), "p", provider="incode", vid="iv-7"),
            ev(S.APPROVED, at(1), "a", provider="incode", vid="iv-7"),
        ]
    )
    assert (s.key, s.provider, s.verification_id) == ("incode:iv-7", "incode", "iv-7")


# --- properties ----------------------------------------------------------------------------------------

# Few distinct timestamps and statuses so ties (same time, same tier) are common.
_times = st.one_of(st.none(), st.integers(0, 4).map(lambda m: at(m)))
_events = st.lists(
    st.builds(
        lambda status, occurred, received_m, eid: ev(status, occurred, eid, received=at(received_m)),
        st.sampled_from(list(S)),
        _times,
        st.integers(0, 4),
        st.text("abcdef0123", min_size=1, max_size=4),
    ),
    min_size=1,
    max_size=8,
    unique_by=lambda e: e.event_id,  # an event id identifies one provider result (derived from its key)
)


def _rank(e: VerificationEvent) -> tuple[int, datetime, str]:
    """The documented total order: in progress < review < expired < decision, then provider time, then id."""
    tier = 3 if e.status in DECISIONS else 2 if e.status is S.EXPIRED else 1 if e.status is S.REVIEW else 0
    return (tier, e.occurred_at or e.received_at, e.event_id)


@settings(max_examples=250, deadline=None)
@given(data=st.data(), events=_events)
def test_final_state_does_not_depend_on_arrival_order(data: st.DataObject, events: list[VerificationEvent]) -> None:
    first = fold(events)
    second = fold(data.draw(st.permutations(events), label="other order"))
    assert (second.status, second.last_event_id) == (first.status, first.last_event_id)
    assert (second.occurred_at, second.event_count) == (first.occurred_at, first.event_count)


@settings(max_examples=250, deadline=None)
@given(events=_events)
def test_final_state_is_the_greatest_event_in_the_documented_order(events: list[VerificationEvent]) -> None:
    winner = max(events, key=_rank)
    s = fold(events)
    assert (s.status, s.last_event_id, s.occurred_at) == (winner.status, winner.event_id, _rank(winner)[1])
    assert s.event_count == len(events)


@settings(max_examples=200, deadline=None)
@given(events=_events)
def test_never_regresses_once_settled(events: list[VerificationEvent]) -> None:
    current: VerificationState | None = None
    settled_seen = False
    for event in events:
        current = state.apply(current, event, NOW)
        settled_seen = settled_seen or event.status in SETTLED
        assert (current.status in SETTLED) == settled_seen


# --- defects found by these tests, now fixed ----------------------------------------------------------


def test_decided_at_does_not_depend_on_arrival_order() -> None:
    approved, review = ev(S.APPROVED, at(0), "a"), ev(S.REVIEW, at(1), "r")
    assert fold([approved, review]).decided_at == fold([review, approved]).decided_at


def test_restored_state_decides_like_the_in_memory_one() -> None:
    codec = Codec()
    newer = ev(S.APPROVED, T0 + timedelta(microseconds=900), "b")
    older = ev(S.REJECTED, T0 + timedelta(microseconds=100), "a")
    in_memory = state.apply(None, newer, NOW)
    restored = state_from_record(
        codec.decode("VerificationState", codec.encode("VerificationState", state_to_record(in_memory)))
    )
    assert state.apply(in_memory, older, NOW).status is S.APPROVED
    assert state.apply(restored, older, NOW).status is S.APPROVED


def test_a_state_knows_which_deliveries_it_counted() -> None:
    """Restores repair events that may lack dedup records; the state must not count them twice."""
    import dataclasses

    from processors.model import RawRef

    first = dataclasses.replace(ev(S.PENDING, at(0), "a"), raw_ref=RawRef("raw", 0, 7, "r-7"))
    second = dataclasses.replace(ev(S.APPROVED, at(1), "b"), raw_ref=RawRef("raw", 0, 9, "r-9"))
    counted = fold([first, second])
    assert counted.raw_offset == 9 and counted.event_count == 2
    assert state.counted(counted, first) and state.counted(counted, second)
    later = dataclasses.replace(ev(S.PENDING, at(2), "c"), raw_ref=RawRef("raw", 0, 12, "r-12"))
    assert not state.counted(counted, later)
    assert not state.counted(None, first)
    restored = state_from_record(
        Codec().decode("VerificationState", Codec().encode("VerificationState", state_to_record(counted)))
    )
    assert restored.raw_offset == 9


# --- repeats: dedup means "already reflected" (state.repeat) ------------------------------------


def _seen_again(event: VerificationEvent, occurred: datetime | None) -> VerificationEvent:
    """The same result words (same idempotency key), said at another provider time."""
    return VerificationEvent(**{**_fields(event), "occurred_at": occurred})


def _fields(event: VerificationEvent) -> dict[str, object]:
    return {name: getattr(event, name) for name in VerificationEvent.__dataclass_fields__}


def test_a_repeat_of_the_current_result_is_a_duplicate() -> None:
    verified = ev(S.APPROVED, at(0), "v")
    current = fold([verified])
    assert state.repeat(current, verified) == "duplicate"
    assert state.repeat(current, _seen_again(verified, None)) == "duplicate", "no provider time: a retry"


def test_a_result_seen_before_that_is_newer_and_changes_the_state_is_a_reversal() -> None:
    verified, rejected = ev(S.APPROVED, at(0), "v"), ev(S.REJECTED, at(1), "r")
    current = fold([verified, rejected])
    assert state.repeat(current, _seen_again(verified, at(2))) == "reversal"
    assert state.repeat(current, _seen_again(verified, at(0.5))) == "duplicate", "older than the state"


def test_a_newer_repeat_of_the_same_status_refreshes_the_state_time_only() -> None:
    verified, rejected = ev(S.APPROVED, at(0), "v"), ev(S.REJECTED, at(1), "r")
    current = fold([verified])
    later = _seen_again(verified, at(2))
    assert state.repeat(current, later) == "refresh"
    refreshed = state.refresh(current, later, NOW)
    assert (refreshed.status, refreshed.occurred_at, refreshed.last_event_id) == (S.APPROVED, at(2), "v")
    assert refreshed.event_count == current.event_count
    assert not state.supersedes(rejected, refreshed), "the older rejection no longer wins"


def test_a_newer_repeat_that_would_not_move_the_state_is_a_duplicate() -> None:
    pending, approved = ev(S.PENDING, at(0), "p"), ev(S.APPROVED, at(1), "a")
    current = fold([pending, approved])
    assert state.repeat(current, _seen_again(pending, at(5))) == "duplicate", "never regress"
    assert state.repeat(None, approved) == "duplicate", "seen, but no state to compare with"


# --- one state over another (partitions grow: a rebuilt table beside the live one) ----------------


def test_a_state_outranks_another_as_its_last_event_would() -> None:
    approved = fold([ev(S.PENDING, at(0), "a"), ev(S.APPROVED, at(1), "b")])
    pending_only = fold([ev(S.PENDING, at(5), "c")])  # rebuilt from the deliveries left after retention
    assert state.outranks(approved, pending_only) and not state.outranks(pending_only, approved)
    later = fold([ev(S.REJECTED, at(2), "d")])
    assert state.outranks(later, approved) and not state.outranks(approved, later)
    assert not state.outranks(approved, approved), "the same state is carried over nothing"
