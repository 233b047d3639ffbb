"""Events carry codes, not prose (processors.prose): every golden case, every fetched answer and
held-out style bodies whose provider text quotes a person, normalized, hold in each event field
only a code, a status word, an id, a time, or a message from the provider module's fixed list."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from processors.avro.records import event_to_record
from processors.kafka.serde import Codec
from processors.model import CheckOutcome, RawDelivery, VerificationEvent, VerificationStatus
from processors.pipeline import normalize
from processors.prose import CODE, FIELD
from processors.providers import REGISTRY
from tests import cases

CODEC = Codec()
_QUOTES = "Jane Doe, passport A1234567"
HELD_OUT = [
    cases.Case(
        "metamap",
        "held_out/step_error_quoting_a_person",
        json.dumps(
            {
                "eventName": "step_completed",
                "resource": "https://api.getmati.com/v2/verifications/6156311aba4c52001b1290a2",
                "timestamp": "2024-01-02T03:04:05Z",
                "step": {
                    "id": "document-reading",
                    "status": 200,
                    "data": {"documentType": "national id card"},
                    "error": {"type": "StepError", "code": f"the name {_QUOTES}", "message": f"{_QUOTES} mismatch"},
                },
                "error": {"type": "SystemError", "code": "system.internalError", "message": f"failed on {_QUOTES}"},
            }
        ).encode(),
        {},
        {},
    ),
    cases.Case(
        "xendit",
        "held_out/failure_reason_quoting_a_person",
        json.dumps(
            {
                "event": "account.verification",
                "data": {
                    "id": "acct-1",
                    "kyc": {
                        "status": "RESUBMISSION_REQUIRED",
                        "failure_reasons": [
                            {
                                "field": "stakeholders[0].identification[1]",
                                "message": f"The passport of {_QUOTES} expired",
                            },
                            {"field": "name of Jane Doe", "message": "The passport has expired"},
                        ],
                    },
                },
            }
        ).encode(),
        {},
        {},
    ),
    cases.Case(
        "esign",
        "held_out/check_named_with_a_value",
        json.dumps(
            {
                "submissionId": "s-held-out",
                "status": "COMPLETED",
                "result": "INVALID",
                "reasonCode": f"rejected {_QUOTES}",
                "userId": "user 12 Jane",
                "submissionDetails": {"verificationResult": {_QUOTES: "FAIL", "nik": "PASS"}},
            }
        ).encode(),
        {},
        {},
    ),
]


def _deliveries() -> list[tuple[cases.Case, RawDelivery]]:
    found = []
    for case in [*cases.load(), *HELD_OUT]:
        found.append(
            (case, RawDelivery("r", case.provider, case.provider, "POST", datetime.now(UTC), case.body, case.headers))
        )
    for case in cases.load_fetched():
        delivery = RawDelivery(
            "r", "incode", "incode", "GET", datetime.now(UTC), case.body, case.headers, origin="fetch"
        )
        found.append((case, delivery))
    return found


DELIVERIES = [(c, d) for c, d in _deliveries() if isinstance(normalize(d), VerificationEvent)]


def _is(pattern: Any, value: object, optional: bool = False) -> bool:
    return (optional and value is None) or (isinstance(value, str) and pattern.fullmatch(value) is not None)


def problems(record: dict[str, Any], messages: frozenset[str]) -> list[str]:
    """Each field of a decoded VerificationEvent that holds something other than it may."""
    found = []
    for name in ("event_id", "provider", "source", "verification_id", "provider_status"):
        if not _is(CODE, record[name]):
            found.append(name)
    for name in ("event_type", "subject_id", "session_id"):
        if not _is(CODE, record[name], optional=True):
            found.append(name)
    if not (
        isinstance(record["idempotency_key"], str)
        and all(CODE.fullmatch(p) for p in record["idempotency_key"].split(":") if p)
    ):
        found.append("idempotency_key")
    if record["status"] not in VerificationStatus.__members__:
        found.append("status")
    for name in ("received_at", "occurred_at"):
        if not isinstance(record[name], datetime | type(None)):
            found.append(name)
    for i, check in enumerate(record["checks"]):
        ok = (
            _is(CODE, check["name"])
            and check["outcome"] in CheckOutcome.__members__
            and isinstance(check["score"], float | type(None))
            and _is(CODE, check["code"], optional=True)
            and (check["message"] is None or check["message"] in messages)
        )
        if not ok:
            found.append(f"checks[{i}]={check}")
    for i, reason in enumerate(record["reasons"]):
        ok = (
            _is(CODE, reason["code"])
            and (reason["message"] is None or reason["message"] in messages)
            and _is(FIELD, reason["field"], optional=True)
        )
        if not ok:
            found.append(f"reasons[{i}]={reason}")
    for key, value in record["attributes"].items():
        if not (_is(CODE, key) and _is(CODE, value)):
            found.append(f"attributes[{key}]")
    return found


@pytest.mark.parametrize(("case", "delivery"), DELIVERIES, ids=[c.id for c, _ in DELIVERIES])
def test_an_event_holds_codes_ids_times_and_listed_messages_only(case: cases.Case, delivery: RawDelivery) -> None:
    event = normalize(delivery)
    assert isinstance(event, VerificationEvent)
    record = CODEC.decode("VerificationEvent", CODEC.encode("VerificationEvent", event_to_record(event)))
    assert problems(record, getattr(REGISTRY[case.provider], "MESSAGES", frozenset())) == [], case.id


def test_the_held_out_bodies_quote_a_person_and_none_of_it_reaches_the_event() -> None:
    held = [d for c, d in DELIVERIES if c.name.startswith("held_out/")]
    assert len(held) == len(HELD_OUT)
    for delivery in held:
        event = normalize(delivery)
        assert isinstance(event, VerificationEvent)
        assert "Jane" not in json.dumps(event_to_record(event), default=str)
    assert "Jane" in "".join(d.body.decode() for d in held), "the bodies do quote one"


def test_a_listed_message_is_kept_and_the_codes_with_it() -> None:
    (xendit,) = [d for c, d in DELIVERIES if c.name == "held_out/failure_reason_quoting_a_person"]
    event = normalize(xendit)
    assert isinstance(event, VerificationEvent)
    assert [(r.code, r.message, r.field) for r in event.reasons] == [
        ("failure_reason", None, "stakeholders[0].identification[1]"),
        ("failure_reason", "The passport has expired", None),
    ]
