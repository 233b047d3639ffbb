"""Onfido's API calls and what a poll of it becomes. (Its signature vectors, signatures.json, are
checked by the conformance kit's signing check and, the SDK's own, through the real gateway in
tests/integration/test_providers_onfido.py.)"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from processors.model import ApiCredentials, VerificationEvent
from processors.pipeline import normalize
from processors.providers import REGISTRY, fetching, onfido
from tests import cases
from tests.conftest import raw_delivery

RUN = "bc77c6e5-753a-4580-96a6-aaed3e5a8d19"
CHECK = "f2302f45-227d-413d-ad61-09ec077a086a"


def test_it_is_registered_and_fetches_the_check_after_check_completed_only() -> None:
    assert REGISTRY["onfido"] is onfido and fetching(onfido) is onfido
    assert onfido.FETCHES == {"check.completed/complete": "check"}
    request = onfido.fetch_request("check", CHECK, ApiCredentials("api-token"))
    assert (request.method, request.path) == ("GET", f"/v3.6/checks/{CHECK}")
    assert request.headers == {"authorization": "Token token=api-token"}
    assert onfido.fetch_missing(ApiCredentials("")) is not None
    assert onfido.fetch_missing(ApiCredentials("api-token")) is None


def _polled(body: dict[str, Any]) -> object:
    return normalize(dataclasses.replace(raw_delivery("onfido", json.dumps(body).encode()), origin="poll"))


def test_a_polled_workflow_run_is_its_result() -> None:
    request = onfido.poll_request(RUN, {}, ApiCredentials("api-token"))
    assert (request.path, request.headers) == (f"/v3.6/workflow_runs/{RUN}", {"authorization": "Token token=api-token"})
    answer = {"id": RUN, "status": "declined", "reasons": ["document_check_consider"], "output": {"name": "Jane"}}
    polled = onfido.poll_result(RUN, {}, answer)
    assert polled is not None
    event = _polled(polled)
    assert isinstance(event, VerificationEvent)
    assert (event.status.value, event.idempotency_key) == ("REJECTED", f"onfido:{RUN}:workflow_run:declined")
    assert [r.code for r in event.reasons] == ["document_check_consider"]
    assert "Jane" not in json.dumps(polled)
    assert onfido.poll_result(RUN, {}, {"id": RUN}) is None


def test_a_polled_complete_check_is_its_check_completed_notice_so_its_result_is_fetched() -> None:
    lookup = {"resource_type": "check"}
    assert onfido.poll_request(CHECK, lookup, ApiCredentials("t")).path == f"/v3.6/checks/{CHECK}"
    polled = onfido.poll_result(CHECK, lookup, {"id": CHECK, "status": "complete", "result": "clear"})
    assert polled is not None
    event = _polled(polled)
    assert isinstance(event, VerificationEvent)
    assert event.provider_status in onfido.FETCHES
    assert event.verification_id == CHECK and event.status.value == "PENDING"


def test_no_personal_value_of_a_task_reaches_its_event() -> None:
    [case] = [c for c in cases.load("onfido") if c.name == "sdk_task_completed_document_check"]
    event = normalize(raw_delivery("onfido", case.body))
    assert isinstance(event, VerificationEvent)
    said = repr(event)
    for value in ("Jane", "Doe", "999999999", "1990-01-01", "2031-05-28", "hiwV2PLm"):
        assert value.encode() in case.body and value not in said
