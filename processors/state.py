"""The state table's rule: the latest decision per verification, never regressing.

Statuses rank: in progress (PENDING, ERROR) < REVIEW < EXPIRED < a decision (APPROVED, REJECTED,
RESUBMISSION_REQUIRED).
- A higher rank replaces a lower one whatever the timestamps: a late PENDING never overwrites a
  decision; a decision is never replaced by PENDING, REVIEW or EXPIRED; EXPIRED replaces PENDING,
  ERROR and REVIEW.
- Nothing but a decision replaces EXPIRED, not even a later PENDING or REVIEW: the provider said no
  result will come unless a new verification starts, and a new verification has a new id at every
  provider (a new process, interview, verification); a later in-progress event on the same id is a
  late step callback.
- Within a rank, the later provider timestamp wins, so a manual review may overturn a decision;
  an older event never replaces a newer one. Ties go to the greater event id.
Every event counts in `event_count`, whether or not it changes the status, once: `raw_offset`
remembers the last raw delivery counted, and `counted` tells whether an event already is.

Dedup means "this result is already reflected", not "this result was ever seen" (`repeat`): a
result whose words were seen before is a new event again when the provider's own time says it is
newer and it changes the state (a reviewer's reversal: verified -> rejected -> verified).
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Literal

from processors.model import VerificationEvent, VerificationState, VerificationStatus, to_millis

DECISIONS = frozenset(
    {VerificationStatus.APPROVED, VerificationStatus.REJECTED, VerificationStatus.RESUBMISSION_REQUIRED}
)
# A decision, a review or an expiry: what reconciliation waits for (no poll after it).
SETTLED = DECISIONS | {VerificationStatus.REVIEW, VerificationStatus.EXPIRED}
_RANK = {VerificationStatus.REVIEW: 1, VerificationStatus.EXPIRED: 2} | dict.fromkeys(DECISIONS, 3)


def rank(status: VerificationStatus) -> int:
    """0 in progress, 1 review, 2 expired, 3 a decision: a higher rank is never replaced by a lower."""
    return _RANK.get(status, 0)


def _when(event: VerificationEvent) -> datetime:
    # Millisecond precision, as the state changelog stores it: memory and restore must agree.
    return to_millis(event.occurred_at or event.received_at)


def supersedes(event: VerificationEvent, state: VerificationState) -> bool:
    """Whether `event` should become the current status of `state`'s verification."""
    if rank(event.status) != rank(state.status):
        return rank(event.status) > rank(state.status)
    old_when = state.occurred_at or state.updated_at
    if _when(event) != old_when:
        return _when(event) > old_when
    return event.event_id > state.last_event_id


def outranks(state: VerificationState, other: VerificationState) -> bool:
    """Whether `state` stands over `other` as one verification's current status: the rule above,
    between two states (a state table rebuilt from a raw topic that lost its oldest deliveries)."""
    if rank(state.status) != rank(other.status):
        return rank(state.status) > rank(other.status)
    when, other_when = state.occurred_at or state.updated_at, other.occurred_at or other.updated_at
    if when != other_when:
        return when > other_when
    return state.last_event_id > other.last_event_id


def apply(state: VerificationState | None, event: VerificationEvent, now: datetime) -> VerificationState:
    if state is None or supersedes(event, state):
        return VerificationState(
            key=event.key,
            provider=event.provider,
            verification_id=event.verification_id,
            status=event.status,
            last_event_id=event.event_id,
            updated_at=now,
            occurred_at=_when(event),
            decided_at=_decided_at(state, event),
            event_count=(state.event_count if state else 0) + 1,
            raw_offset=_raw_offset(state, event),
        )
    return dataclasses.replace(
        state,
        updated_at=now,
        decided_at=_decided_at(state, event),
        event_count=state.event_count + 1,
        raw_offset=_raw_offset(state, event),
    )


Repeat = Literal["duplicate", "reversal", "refresh"]


def repeat(state: VerificationState | None, event: VerificationEvent) -> Repeat:
    """What a result whose idempotency key was seen within the dedup window means now.

    duplicate: already reflected: the same result again (a retry, a poll or a fetch of it), or not
      newer by the provider's own time than what the state holds. Without a provider time a
      repeat cannot be told from a new result, so it stays a duplicate.
    reversal: newer by the provider's time, and it would change the state: a new event.
    refresh: newer by the provider's time with the status the state already holds: no event, but
      the state takes the newer time, so that an older result arriving later cannot supersede it.
    """
    if state is None or event.occurred_at is None:
        return "duplicate"
    if _when(event) <= (state.occurred_at or state.updated_at):
        return "duplicate"
    if event.status is state.status:
        return "refresh"
    return "reversal" if supersedes(event, state) else "duplicate"


def refresh(state: VerificationState, event: VerificationEvent, now: datetime) -> VerificationState:
    """`state`, dated by `event`: the same status, said again later by the provider (see `repeat`)."""
    return dataclasses.replace(state, updated_at=now, occurred_at=_when(event), decided_at=_decided_at(state, event))


def counted(state: VerificationState | None, event: VerificationEvent) -> bool:
    """Whether `state` already reflects `event` (same raw partition: offsets are comparable)."""
    return state is not None and event.raw_ref is not None and event.raw_ref.offset <= state.raw_offset


def _raw_offset(state: VerificationState | None, event: VerificationEvent) -> int:
    known = state.raw_offset if state else -1
    return max(known, event.raw_ref.offset) if event.raw_ref is not None else known


def _decided_at(state: VerificationState | None, event: VerificationEvent) -> datetime | None:
    """The latest decision time seen, whatever order the events arrived in."""
    known = state.decided_at if state else None
    if event.status not in DECISIONS:
        return known
    return max(known, _when(event)) if known else _when(event)
