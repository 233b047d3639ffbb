"""Persona's pure parts the golden cases do not reach: polled answers and the raw record key."""

from __future__ import annotations

import json
from typing import Any

from processors.model import Rejection
from processors.providers import persona
from processors.providers.conformance import deliver


def _answer(inquiry: str, status: str) -> dict[str, Any]:
    return {"data": {"type": "inquiry", "id": inquiry, "attributes": {"status": status, "name-first": "Jane"}}}


def test_a_polled_status_word_it_does_not_know_is_dead_lettered_to_be_redriven() -> None:
    body = persona.poll_result("inq_1", {}, _answer("inq_1", "On Hold"))
    assert body is not None and body["data"]["attributes"]["name"] == "inquiry.on-hold"
    outcome = deliver("persona", json.dumps(body).encode(), {}, "poll")
    assert isinstance(outcome, Rejection) and outcome.code == "unknown_status"


def test_a_polled_answer_about_another_inquiry_or_without_status_is_no_result() -> None:
    assert persona.poll_result("inq_1", {}, _answer("inq_2", "approved")) is None
    assert persona.poll_result("inq_1", {}, {"data": {"id": "inq_1", "attributes": {}}}) is None
    assert persona.poll_result("inq_1", {}, {"errors": [{"title": "Not found"}]}) is None


def test_events_of_an_inquirys_parts_are_keyed_by_their_inquiry() -> None:
    related = {"inquiry": {"data": {"type": "inquiry", "id": "inq_1"}}}
    payload = {"data": {"type": "verification/selfie", "id": "ver_1", "relationships": related}}
    doc = {"data": {"type": "event", "attributes": {"name": "verification.passed", "payload": payload}}}
    assert persona.verification_id(doc) == "inq_1"
    assert persona.verification_id({"data": {"attributes": {"name": "account.created"}}}) is None
