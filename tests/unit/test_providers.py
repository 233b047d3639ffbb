"""Every golden case through the pure pipeline, and the invariants no input may break."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.avro.records import event_to_record
from processors.model import Notice, RawDelivery, Rejection, VerificationEvent
from processors.pipeline import event_id_for, normalize, routing_id
from processors.providers import REGISTRY
from tests import cases

ALL = cases.load()


def _deliver(
    provider: str, body: bytes, headers: dict[str, str] | None = None
) -> VerificationEvent | Notice | Rejection:
    return normalize(
        RawDelivery(
            request_id="r-1",
            source=provider,
            provider=provider,
            method="POST",
            received_at=datetime(2026, 1, 1, tzinfo=UTC),
            body=body,
            headers=headers or {},
        )
    )


def test_every_provider_has_cases() -> None:
    assert {c.provider for c in ALL} == set(REGISTRY)


@pytest.mark.parametrize("case", ALL, ids=lambda c: c.id)
def test_golden_case(case: cases.Case) -> None:
    outcome = _deliver(case.provider, case.body, case.headers)
    if case.dead_letter:
        assert isinstance(outcome, Rejection), outcome
        assert outcome.code == case.dead_letter
        assert outcome.detail
    elif case.notice:
        assert outcome == Notice(case.notice)
    else:
        assert isinstance(outcome, VerificationEvent), outcome
        cases.assert_matches(event_to_record(outcome), case.expect)
        assert outcome.event_id == event_id_for(outcome.idempotency_key)
        assert outcome.idempotency_key.startswith(f"{case.provider}:")


@pytest.mark.parametrize("case", [c for c in ALL if c.event], ids=lambda c: c.id)
def test_routing_key_is_the_event_key(case: cases.Case) -> None:
    outcome = _deliver(case.provider, case.body, case.headers)
    assert isinstance(outcome, VerificationEvent)
    assert routing_id(case.provider, case.body) == outcome.key


def _strings(value: object) -> set[str]:
    if isinstance(value, str):
        return {value}
    if isinstance(value, dict):
        return {s for v in value.values() for s in _strings(v)}
    if isinstance(value, list):
        return {s for v in value for s in _strings(v)}
    return set()


@pytest.mark.parametrize("case", [c for c in ALL if c.provider == "metamap" and c.event], ids=lambda c: c.id)
def test_metamap_events_carry_no_personal_data(case: cases.Case) -> None:
    doc = json.loads(case.body)
    step = doc.get("step") if isinstance(doc.get("step"), dict) else {}
    personal = _strings(step.get("data")) | _strings(doc.get("metadata"))
    outcome = _deliver(case.provider, case.body, case.headers)
    assert isinstance(outcome, VerificationEvent)
    assert not personal & _strings(event_to_record(outcome))


def test_same_result_same_event_id_whatever_the_request() -> None:
    case = next(c for c in ALL if c.id == "esign/seed_completed_valid")
    first = _deliver("esign", case.body)
    again = normalize(
        RawDelivery("other-request", "esign-b", "esign", "PUT", datetime.now(UTC), case.body, {"x-request-id": "z"})
    )
    assert isinstance(first, VerificationEvent) and isinstance(again, VerificationEvent)
    assert first.event_id == again.event_id


def test_different_results_of_one_verification_get_different_ids() -> None:
    partial, completed = (
        _deliver("esign", next(c for c in ALL if c.id == f"esign/{name}").body)
        for name in ("seed_partially_completed_valid", "seed_completed_valid")
    )
    assert isinstance(partial, VerificationEvent) and isinstance(completed, VerificationEvent)
    assert partial.key == completed.key
    assert partial.event_id != completed.event_id


def test_unknown_provider_is_a_rejection() -> None:
    outcome = _deliver("nobody", b"{}")
    assert isinstance(outcome, Rejection) and outcome.code == "unknown_provider"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=25,
)


def _shaped(provider: str) -> st.SearchStrategy[object]:
    """Documents near each provider's real shape, so fuzzing reaches deep into the normalizer."""
    words = st.sampled_from(
        [
            *("COMPLETED", "PARTIALLY_COMPLETED", "ERROR", "PASSED", "FAILED", "valid", "INVALID"),
            *("accepted", "Rejected", "inconclusive", "processing", "cancelled", "expired"),
            *("ONBOARDING_FINISHED", "ID_VALIDATION_FINISHED", "MANUAL_REVIEW_APPROVED", "UNKNOWN"),
            *("Session Started", "session.succeeded", "SESSION_FAILED", "Session Pending Review"),
            *("verified", "reviewNeeded", "rejected"),
        ]
    )
    ids = st.text(alphabet="0123456789abcdef-", min_size=1, max_size=24) | json_values
    events = st.sampled_from(
        [
            "verification_started",
            "verification_inputs_completed",
            "step_completed",
            "verification_completed",
            "verification_updated",
            "verification_expired",
            "verification_postponed",
        ]
    )
    error = st.fixed_dictionaries(
        {},
        optional={
            "type": st.sampled_from(["StepError", "LegacyError", "SystemError", "REQUEST_REJECTED"]) | json_values,
            "code": json_values,
            "message": json_values,
            "reasonCode": json_values,
        },
    )
    step = st.fixed_dictionaries(
        {},
        optional={
            "id": st.sampled_from(["facematch", "document-reading", "age-check"]) | json_values,
            "status": st.just(200) | json_values,
            "error": st.none() | error | json_values,
            "data": st.fixed_dictionaries(
                {}, optional={"score": st.floats(allow_nan=False, allow_infinity=False) | json_values}
            )
            | json_values,
            "documentType": json_values,
        },
    )
    modules = (
        st.dictionaries(
            st.text(max_size=12), words | st.fixed_dictionaries({"status": words}) | json_values, max_size=4
        )
        | st.lists(
            st.fixed_dictionaries({}, optional={"module": json_values, "name": json_values, "status": words}),
            max_size=4,
        )
        | json_values
    )
    resource = st.builds(
        "https://api.getmati.com/v2/verifications/{}{}".format, ids, st.sampled_from(["", "/", "?a=1"])
    )
    optional: dict[str, st.SearchStrategy[object]] = {
        "submissionId": json_values,
        "status": words | json_values,
        "result": words | json_values,
        "reasonCode": json_values,
        "processedAt": st.text(max_size=30) | json_values,
        "submissionDetails": st.fixed_dictionaries({}, optional={"verificationResult": json_values}) | json_values,
        "event": st.just("account.verification") | words | json_values,
        "data": st.fixed_dictionaries(
            {}, optional={"id": json_values, "kyc": st.fixed_dictionaries({}, optional={"status": words})}
        )
        | json_values,
        # signicat
        "processId": ids,
        "dossierId": ids,
        # incode
        "interviewId": ids,
        "sessionId": ids,
        "session_id": ids,
        "onboardingStatus": words | json_values,
        "eventType": words | json_values,
        "type": words | json_values,
        "modules": modules,
        "clientId": json_values,
        "flowId": json_values,
        "externalId": json_values,
        # metamap
        "eventName": events | json_values,
        "resource": resource | json_values,
        "verificationId": ids,
        "identityStatus": words | json_values,
        "step": step | json_values,
        "error": error | json_values,
        "timestamp": st.just("2021-08-15T00:00:01.421Z") | st.text(max_size=30) | json_values,
        "identity": json_values,
    }
    # The id (and MetaMap's event name) always present: otherwise most documents stop at the first check.
    required = {
        "signicat": ("processId",),
        "incode": ("interviewId",),
        "metamap": ("eventName", "resource"),
    }.get(provider, ())
    return st.fixed_dictionaries(
        {key: optional[key] for key in required},
        optional={key: value for key, value in optional.items() if key not in required},
    )


@settings(max_examples=300, deadline=None)
@given(provider=st.sampled_from(sorted(REGISTRY)), data=st.data())
def test_no_json_document_crashes_a_normalizer(provider: str, data: st.DataObject) -> None:
    doc = data.draw(_shaped(provider) | json_values)
    outcome = _deliver(provider, json.dumps(doc).encode(), data.draw(st.dictionaries(st.text(max_size=10), st.text())))
    assert isinstance(outcome, VerificationEvent | Notice | Rejection)
    if isinstance(outcome, VerificationEvent):
        event_to_record(outcome)  # and the event is representable in Avro terms
    elif isinstance(outcome, Notice):
        assert outcome.kind
    else:
        assert outcome.code and outcome.detail


@settings(max_examples=300, deadline=None)
@given(provider=st.sampled_from(sorted(REGISTRY)), body=st.binary(max_size=300))
def test_no_bytes_crash_a_normalizer(provider: str, body: bytes) -> None:
    outcome = _deliver(provider, body)
    assert isinstance(outcome, VerificationEvent | Notice | Rejection)
    routing_id(provider, body)


@settings(max_examples=200, deadline=None)
@given(key=st.text(max_size=200))
def test_event_id_is_the_uuid5_of_the_idempotency_key(key: str) -> None:
    import uuid

    from processors.pipeline import EVENT_ID_NAMESPACE

    assert event_id_for(key) == str(uuid.uuid5(EVENT_ID_NAMESPACE, key))


def test_a_normalizer_that_raises_is_a_dead_letter_saying_where_not_what(monkeypatch: pytest.MonkeyPatch) -> None:
    """The detail names the exception's type and line, never its message: a message may quote the body."""
    from processors.providers import REGISTRY

    def raises(doc: object, headers: object) -> object:
        return int("Jane Doe")

    monkeypatch.setattr(REGISTRY["esign"], "normalize", raises)
    body = json.dumps({"submissionId": "s-1", "status": "COMPLETED"}).encode()
    outcome = _deliver("esign", body)
    assert isinstance(outcome, Rejection) and outcome.code == "normalizer_error"
    assert "ValueError at test_providers.py:" in outcome.detail and "Jane" not in outcome.detail
    seen: list[Exception] = []
    monkeypatch.setattr(REGISTRY["esign"], "verification_id", lambda doc: int("Jane Doe"))
    assert routing_id("esign", body, seen.append) is None
    assert [type(e) for e in seen] == [ValueError]
