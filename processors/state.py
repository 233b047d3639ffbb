"""The state table's rule: the latest decision per verification, never regressing.

- PENDING and ERROR (in progress, retryable) never replace a decision or a review.
- A decision or review replaces any in-progress status, whatever its timestamp.
- Among decisions and reviews (and among in-progress statuses), the later provider timestamp
  wins, so a manual review may overturn a decision; an older event never replaces a newer one.
- Ties are broken deterministically: decision over review, then the greater event id.
Every event counts in `event_count`, whether or not it changes the status, once: `raw_offset`
remembers the last raw delivery counted, and `counted` tells whether an event already is.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime

from processors.model import VerificationEvent, VerificationState, VerificationStatus, to_millis

DECISIONS = frozenset(
    {VerificationStatus.APPROVED, VerificationStatus.REJECTED, VerificationStatus.RESUBMISSION_REQUIRED}
)
SETTLED = DECISIONS | {VerificationStatus.REVIEW}  # a decision or a review: what reconciliation waits for


def _tier(status: VerificationStatus) -> int:
    return 2 if status in DECISIONS else 1 if status is VerificationStatus.REVIEW else 0


def _when(event: VerificationEvent) -> datetime:
    # Millisecond precision, as the state changelog stores it: memory and restore must agree.
    return to_millis(event.occurred_at or event.received_at)


def supersedes(event: VerificationEvent, state: VerificationState) -> bool:
    """Whether `event` should become the current status of `state`'s verification."""
    new_settled, old_settled = event.status in SETTLED, state.status in SETTLED
    if new_settled != old_settled:
        return new_settled
    old_when = state.occurred_at or state.updated_at
    if _when(event) != old_when:
        return _when(event) > old_when
    if _tier(event.status) != _tier(state.status):
        return _tier(event.status) > _tier(state.status)
    return event.event_id > state.last_event_id


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
