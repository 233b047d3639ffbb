"""Results a callback does not carry (Incode's score), notices, and one key per result whatever its origin."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from processors.avro.records import event_to_record
from processors.model import (
    FETCH_ID_HEADER,
    FETCH_KIND_HEADER,
    ApiCredentials,
    CheckOutcome,
    NotReady,
    Origin,
    RawDelivery,
    Rejection,
    VerificationEvent,
    VerificationStatus,
)
from processors.pipeline import normalize
from processors.providers import REGISTRY, fetching, incode, metamap, xendit
from tests import cases

VID = "65a0f3c2e4b0a1d2c3f4e5a6"


def _score(status: Any, **modules: str) -> dict[str, Any]:
    doc: dict[str, Any] = {name: {"overall": {"value": "97.5", "status": word}} for name, word in modules.items()}
    doc["overall"] = {"value": "100.0", "status": status}
    doc["idValidation"] = {"overall": {"value": "100.0", "status": "OK"}, "fullName": {"value": "Ana Perez"}}
    return doc


def _deliver(provider: str, doc: dict[str, Any], origin: Origin = "callback", **headers: str) -> object:
    body = json.dumps(doc).encode()
    return normalize(
        RawDelivery("r-1", provider, provider, "GET", datetime(2026, 1, 1, tzinfo=UTC), body, headers, origin=origin)
    )


def _fetched(doc: dict[str, Any], vid: str = VID) -> object:
    return _deliver("incode", doc, "fetch", **{FETCH_KIND_HEADER: "score", FETCH_ID_HEADER: vid})


@pytest.mark.parametrize(
    ("word", "status"),
    [
        ("OK", VerificationStatus.APPROVED),
        ("FAIL", VerificationStatus.REJECTED),
        ("WARN", VerificationStatus.REVIEW),
        ("warn", VerificationStatus.REVIEW),
        ("MANUAL_OK", VerificationStatus.APPROVED),
        ("MANUAL_FAIL", VerificationStatus.REJECTED),
        ("MANUAL_PENDING", VerificationStatus.REVIEW),
    ],
)
def test_the_score_overall_status_is_the_decision(word: str, status: VerificationStatus) -> None:
    event = _fetched(_score(word, liveness="OK", faceRecognition="WARN"))
    assert isinstance(event, VerificationEvent), event
    assert (event.verification_id, event.status, event.event_type) == (VID, status, "score")
    assert event.idempotency_key == f"incode:{VID}:score:{word.upper()}"
    checks = {c.name: (c.outcome, c.code, c.score) for c in event.checks}
    assert checks["liveness"] == (CheckOutcome.PASS, "OK", 97.5)
    assert checks["faceRecognition"] == (CheckOutcome.FAIL, "WARN", 97.5)
    assert checks["idValidation"] == (CheckOutcome.PASS, "OK", 100.0)
    assert "Ana Perez" not in repr(event), "personal data stays in the raw topic"


@pytest.mark.parametrize("overall", [None, {}, {"status": ""}, {"status": "UNKNOWN"}, {"value": None, "status": None}])
def test_a_score_without_a_decision_yet_is_not_ready(overall: Any) -> None:
    doc = _score("OK")
    doc["overall"] = overall
    assert isinstance(incode.normalize_fetched("score", VID, doc), NotReady)
    # Written anyway (an old answer, a replay), it is a dead letter with its reason, not an event.
    outcome = _fetched(doc)
    assert isinstance(outcome, Rejection) and outcome.code == "not_ready"


def test_a_score_word_without_mapping_is_dead_lettered_not_guessed() -> None:
    outcome = _fetched(_score("AMBER"))
    assert isinstance(outcome, Rejection) and outcome.code == "unknown_status" and "AMBER" in outcome.detail


def test_a_fetched_answer_is_normalized_only_as_origin_fetch() -> None:
    headers = {FETCH_KIND_HEADER: "score", FETCH_ID_HEADER: VID}
    as_callback = _deliver("incode", _score("OK"), "callback", **headers)  # a callback cannot pose as a score
    assert isinstance(as_callback, Rejection) and as_callback.code == "missing_verification_id"
    without_headers = _deliver("incode", _score("OK"), "fetch")
    assert isinstance(without_headers, Rejection) and without_headers.code == "unrecognized_event"
    not_fetching = _deliver("xendit", {"data": {"id": "a"}}, "fetch", **headers)
    assert isinstance(not_fetching, Rejection)


def test_incode_fetches_the_score_after_onboarding_finished_only() -> None:
    module = fetching(REGISTRY["incode"])
    assert module is not None
    assert module.FETCHES == {"ONBOARDING_FINISHED": "score"}
    seeds = ("esign", "signicat", "incode", "metamap", "xendit")
    assert [name for name in seeds if fetching(REGISTRY[name])] == ["incode"]
    request = module.fetch_request("score", VID, ApiCredentials("api-key", "exec-token"))
    assert (request.method, request.path, request.params) == ("GET", "/omni/get/score", {"id": VID})
    assert request.headers == {"x-api-key": "api-key", "api-version": "1.0", "X-Incode-Hardware-Id": "exec-token"}
    assert module.fetch_missing(ApiCredentials("api-key")) is not None
    assert module.fetch_missing(ApiCredentials("api-key", "exec-token")) is None


def test_onboarding_finished_stays_pending_until_the_score_decides() -> None:
    event = _deliver("incode", {"interviewId": VID, "onboardingStatus": "ONBOARDING_FINISHED"})
    assert isinstance(event, VerificationEvent) and event.status is VerificationStatus.PENDING
    assert incode.FETCHES[event.provider_status] == "score"


def _callback_and_poll_keys(
    module: Any, callback: dict[str, Any], answer: dict[str, Any], vid: str, headers: dict[str, str]
) -> tuple[str, str]:
    called = _deliver(module.NAME, callback, **headers)
    polled_body = module.poll_result(vid, {}, answer)
    assert polled_body is not None
    polled = _deliver(module.NAME, polled_body, "poll")
    assert isinstance(called, VerificationEvent) and isinstance(polled, VerificationEvent), (called, polled)
    return called.idempotency_key, polled.idempotency_key


def test_xendit_polled_account_and_callback_share_their_key() -> None:
    kyc = {"status": "PASSED", "verified_at": "2026-03-01T10:00:00Z"}
    callback = {
        "event": "account.verification",
        "created": "2026-03-01T10:00:01Z",
        "data": {"id": "acct-1", "kyc": kyc},
    }
    answer = {"id": "acct-1", "updated": "2026-03-01T10:00:05Z", "kyc": kyc}
    called, polled = _callback_and_poll_keys(xendit, callback, answer, "acct-1", {"webhook-id": "wh-1"})
    assert called == polled
    other_delivery = _deliver("xendit", callback, **{"webhook-id": "wh-2"})  # a redelivery under a new webhook-id
    assert isinstance(other_delivery, VerificationEvent) and other_delivery.idempotency_key == called


@pytest.mark.parametrize("event", ["verification_completed", "verification_updated"])
def test_metamap_polled_verification_and_callback_share_their_key(event: str) -> None:
    vid = "6156311aba4c52001b1290a2"
    callback = {
        "eventName": event,
        "resource": f"https://api.getmati.com/v2/verifications/{vid}",
        "identityStatus": "verified",
        "timestamp": "2026-03-01T10:00:00.000Z",
    }
    answer = {"id": vid, "identity": {"status": "verified"}, "updatedAt": "2026-03-01T10:00:09.000Z"}
    called, polled = _callback_and_poll_keys(metamap, callback, answer, vid, {})
    assert called == polled


@pytest.mark.parametrize("case", cases.load_fetched(), ids=lambda c: c.id)
def test_golden_fetched_answer(case: cases.Case) -> None:
    doc = json.loads(case.body)
    kind, vid = case.headers[FETCH_KIND_HEADER], case.headers[FETCH_ID_HEADER]
    ready = incode.normalize_fetched(kind, vid, doc)
    if case.expect.get("not_ready"):
        assert isinstance(ready, NotReady) and ready.detail
        return
    outcome = _deliver(case.provider, doc, "fetch", **case.headers)
    if case.dead_letter:
        assert isinstance(outcome, Rejection) and outcome.code == case.dead_letter
        return
    assert isinstance(outcome, VerificationEvent), outcome
    cases.assert_matches(event_to_record(outcome), case.expect)
    assert outcome.key == f"incode:{vid}"
    record = json.dumps(event_to_record(outcome), default=str)
    leaked = {value for value in cases.personal_values(case.body) | _named_values(doc) if value in record}
    assert not leaked, f"personal data left the raw topic: {leaked}"


def _named_values(doc: Any) -> set[str]:
    """Values next to a personal key (Incode's score names them: {"key": "fullName", "value": ...})."""
    found: set[str] = set()
    if isinstance(doc, dict):
        if str(doc.get("key", "")).lower() in cases.PERSONAL_KEYS and isinstance(doc.get("value"), str):
            found.add(doc["value"])
        for value in doc.values():
            found |= _named_values(value)
    elif isinstance(doc, list):
        for item in doc:
            found |= _named_values(item)
    return found


def test_the_fetched_corpus_has_personal_data_to_look_for() -> None:
    values = set().union(*(_named_values(json.loads(c.body)) for c in cases.load_fetched()))
    assert {"Siti Rahmawati Kusuma", "PEKS850101HDFRRN09"} <= values
