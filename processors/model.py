"""The domain model: plain frozen data shared by the gateway, the providers and the pipeline.

Nothing here knows about Kafka, HTTP or Avro; `*_to_record`/`*_from_record` in processors.avro.records
turn these into the dicts the Avro schemas describe.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, TypeVar, dataclass_transform

_T = TypeVar("_T")


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def value(cls: type[_T]) -> type[_T]:
    """A value class: frozen to the type checker (assigning a field is a type error), slotted, equal
    and hashed by its fields. At run time it is not frozen: a frozen dataclass's __init__ sets each
    field through object.__setattr__, 8 times the cost of a plain one (1.8 µs against 0.23 for 16
    fields), and the processor builds some 50 fields per record (bench/RESULTS.md, issue 17)."""
    return dataclass(slots=True, unsafe_hash=True)(cls)


class VerificationStatus(enum.StrEnum):
    PENDING = "PENDING"
    APPROVED = "APPROVED"
    REJECTED = "REJECTED"
    RESUBMISSION_REQUIRED = "RESUBMISSION_REQUIRED"
    REVIEW = "REVIEW"
    ERROR = "ERROR"
    EXPIRED = "EXPIRED"


class CheckOutcome(enum.StrEnum):
    PASS = "PASS"
    FAIL = "FAIL"
    ERROR = "ERROR"
    SKIPPED = "SKIPPED"


def to_millis(moment: datetime) -> datetime:
    """`moment` at millisecond precision: what the Avro timestamp-millis fields keep."""
    sub_millis = moment.microsecond % 1000
    return moment.replace(microsecond=moment.microsecond - sub_millis) if sub_millis else moment


# callback: the provider called the gateway; poll: the reconciler asked a status API because a
# result was late; fetch: a callback was only a notice and the reconciler fetched its result.
Origin = Literal["callback", "poll", "fetch"]
FETCH_KIND_HEADER = "kycstream-fetch"  # on origin=fetch deliveries: which of the provider's fetches
FETCH_ID_HEADER = "kycstream-verification-id"  # ... and for which verification
# ... and when the notice that asked for the fetch happened (its provider time, else its arrival):
# the fetched result's time when the provider's API gives none, so that it never overrides a
# decision that arrived after that notice (an Incode manual review after ONBOARDING_FINISHED).
FETCH_NOTICE_AT_HEADER = "kycstream-notice-at"
# On callbacks to /webhooks/{source}/{route}: which of its provider's URLs (ROUTES) the delivery came
# to, for providers that send each kind of webhook to its own URL (Veriff, iDenfy) without naming it.
ROUTE_HEADER = "kycstream-route"

AuthScheme = Literal["header_token", "bearer", "basic", "api_key", "hmac_sha256", "none"]


@value
class AuthSpec:
    """How a provider authenticates its deliveries by default; a source may override it."""

    scheme: AuthScheme
    header: str = "authorization"


@value
class Check:
    name: str
    outcome: CheckOutcome
    score: float | None = None
    code: str | None = None
    message: str | None = None


@value
class Reason:
    code: str
    message: str | None = None
    field: str | None = None


@value
class RawRef:
    """Where the delivery an event came from lives in the raw topic."""

    topic: str
    partition: int
    offset: int
    request_id: str


@value
class RawDelivery:
    """One authenticated webhook delivery, exactly as the gateway received it."""

    request_id: str
    source: str
    provider: str
    method: str
    received_at: datetime
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    remote_addr: str | None = None
    content_type: str | None = None
    origin: Origin = "callback"


@value
class Normalized:
    """What a provider module reads out of one payload: the provider-specific part of an event."""

    verification_id: str
    status: VerificationStatus
    provider_status: str
    idempotency_key: str | None = None
    occurred_at: datetime | None = None
    event_type: str | None = None
    subject_id: str | None = None
    session_id: str | None = None
    checks: tuple[Check, ...] = ()
    reasons: tuple[Reason, ...] = ()
    attributes: dict[str, str] = field(default_factory=dict)


@value
class Notice:
    """A recognized provider notice that is not a verification result (e.g. Incode's video-selfie
    upload): no event, no dead letter; counted by kind and kept in the raw topic."""

    kind: str


@value
class NotReady:
    """A fetched answer that does not hold the result yet: fetch again later."""

    detail: str


@value
class Rejection:
    """Why a payload is not an event of its provider; it becomes a dead letter with this reason."""

    code: str
    detail: str


@value
class VerificationEvent:
    event_id: str
    idempotency_key: str
    provider: str
    source: str
    verification_id: str
    status: VerificationStatus
    provider_status: str
    received_at: datetime
    occurred_at: datetime | None
    raw_ref: RawRef | None
    event_type: str | None = None
    subject_id: str | None = None
    session_id: str | None = None
    checks: tuple[Check, ...] = ()
    reasons: tuple[Reason, ...] = ()
    attributes: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.provider}:{self.verification_id}"


@value
class VerificationState:
    key: str
    provider: str
    verification_id: str
    status: VerificationStatus
    last_event_id: str
    updated_at: datetime
    occurred_at: datetime | None = None
    decided_at: datetime | None = None
    event_count: int = 1
    raw_offset: int = -1


@value
class DeadLetter:
    """A delivery that could not be normalized, with the original record so it can be redriven."""

    reason: str
    detail: str
    failed_at: datetime
    source_topic: str
    partition: int
    offset: int
    original_value: bytes
    original_key: bytes | None = None
    request_id: str | None = None
    source: str | None = None
    provider: str | None = None
    # Set when original_value is only a prefix (the original was too large for a dead letter).
    original_size: int | None = None


@value
class Expectation:
    """The integrator's word that a verification was started: poll its provider if no result comes."""

    source: str
    provider: str
    verification_id: str
    expected_at: datetime
    lookup: dict[str, str] = field(default_factory=dict)
    window_s: int | None = None
    # Written back by the reconciler when it polls, so a restart does not poll everything again.
    last_polled_at: datetime | None = None
    polls: int = 0

    @property
    def key(self) -> str:
        return f"{self.provider}:{self.verification_id}"

    def same_request(self, other: Expectation) -> bool:
        """The same integrator's expectation, whatever the reconciler wrote back about its polls."""
        return (self.source, self.provider, self.verification_id, self.expected_at, self.lookup, self.window_s) == (
            other.source,
            other.provider,
            other.verification_id,
            other.expected_at,
            other.lookup,
            other.window_s,
        )


@value
class ApiCredentials:
    """A source's provider-API credentials: the token (API key, secret key or bearer token) and, for
    providers whose result API needs a second one (Incode's executive token), that one."""

    token: str
    admin_token: str | None = None


@value
class PollRequest:
    """One provider-API call (a status poll or a result fetch), described by a provider module and
    made by the reconciler."""

    path: str
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    method: str = "GET"


@value
class DedupRecord:
    idempotency_key: str
    event_id: str
    first_seen_at: datetime
    expires_at: datetime
    events_offset: int = -1
