"""Every golden case through the pure pipeline, and the invariants no input may break."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.kafka.serde import event_to_record
from processors.model import RawDelivery, Rejection, VerificationEvent
from processors.pipeline import event_id_for, normalize, routing_id
from processors.providers import REGISTRY
from tests import cases

ALL = cases.load()


def _deliver(provider: str, body: bytes, headers: dict[str, str] | None = None) -> VerificationEvent | Rejection:
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
    else:
        assert isinstance(outcome, VerificationEvent), outcome
        cases.assert_matches(event_to_record(outcome), case.expect)
        assert outcome.event_id == event_id_for(outcome.idempotency_key)
        assert outcome.idempotency_key.startswith(f"{case.provider}:")


@pytest.mark.parametrize("case", [c for c in ALL if not c.dead_letter], ids=lambda c: c.id)
def test_routing_key_is_the_event_key(case: cases.Case) -> None:
    outcome = _deliver(case.provider, case.body, case.headers)
    assert isinstance(outcome, VerificationEvent)
    assert routing_id(case.provider, case.body) == outcome.key


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
    words = st.sampled_from(["COMPLETED", "PARTIALLY_COMPLETED", "ERROR", "PASSED", "FAILED", "valid", "INVALID"])
    return st.fixed_dictionaries(
        {},
        optional={
            "submissionId": json_values,
            "status": words | json_values,
            "result": words | json_values,
            "reasonCode": json_values,
            "processedAt": st.text(max_size=30) | json_values,
            "submissionDetails": st.fixed_dictionaries({}, optional={"verificationResult": json_values}) | json_values,
            "event": st.just("account.verification") | json_values,
            "data": st.fixed_dictionaries(
                {}, optional={"id": json_values, "kyc": st.fixed_dictionaries({}, optional={"status": words})}
            )
            | json_values,
        },
    )


@settings(max_examples=300, deadline=None)
@given(provider=st.sampled_from(sorted(REGISTRY)), data=st.data())
def test_no_json_document_crashes_a_normalizer(provider: str, data: st.DataObject) -> None:
    doc = data.draw(_shaped(provider) | json_values)
    outcome = _deliver(provider, json.dumps(doc).encode(), data.draw(st.dictionaries(st.text(max_size=10), st.text())))
    assert isinstance(outcome, VerificationEvent | Rejection)
    if isinstance(outcome, VerificationEvent):
        event_to_record(outcome)  # and the event is representable in Avro terms
    else:
        assert outcome.code and outcome.detail


@settings(max_examples=300, deadline=None)
@given(provider=st.sampled_from(sorted(REGISTRY)), body=st.binary(max_size=300))
def test_no_bytes_crash_a_normalizer(provider: str, body: bytes) -> None:
    outcome = _deliver(provider, body)
    assert isinstance(outcome, VerificationEvent | Rejection)
    routing_id(provider, body)
