"""Personal data stays at the boundary: no normalized event carries a personal value of its input."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from processors.avro.records import event_to_record, state_to_record
from processors.kafka.serde import Codec
from processors.model import RawDelivery, VerificationEvent
from processors.pipeline import normalize
from processors.state import apply
from tests import cases

WITH_PERSONAL = [c for c in cases.load() if cases.personal_values(c.body)]


def test_the_corpus_has_personal_data_to_look_for() -> None:
    assert {c.provider for c in WITH_PERSONAL} >= {"esign", "incode", "metamap"}
    assert any("Siti Rahmawati Kusuma" in cases.personal_values(c.body) for c in WITH_PERSONAL)


@pytest.mark.parametrize("case", WITH_PERSONAL, ids=lambda c: c.id)
def test_no_personal_value_in_the_event_or_state(case: cases.Case) -> None:
    delivery = RawDelivery("r", case.provider, case.provider, "POST", datetime.now(UTC), case.body, case.headers)
    outcome = normalize(delivery)
    if not isinstance(outcome, VerificationEvent):
        return  # dead letters keep the body by design (DLQ is, with raw, where personal data lives)
    codec = Codec()
    event = event_to_record(outcome)
    state = state_to_record(apply(None, outcome, datetime.now(UTC)))
    texts = [json.dumps(event, default=str), json.dumps(state, default=str), outcome.idempotency_key]
    blobs = [codec.encode("VerificationEvent", event), codec.encode("VerificationState", state)]
    for value in cases.personal_values(case.body):
        assert not any(value in text for text in texts), f"{value!r} leaked into {case.id}"
        assert not any(value.encode() in blob for blob in blobs), f"{value!r} leaked into Avro of {case.id}"
