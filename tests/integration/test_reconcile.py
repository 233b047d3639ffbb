"""Reconciliation against a fake provider status API served over real HTTP by the test itself."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.settings import GatewaySettings
from processors.kafka.serde import Codec
from processors.settings import KafkaSettings
from tests.conftest import (
    committed_to_end,
    dev_sources,
    latest_states,
    post,
    processing,
    read,
    reconciling,
    serving,
    serving_app,
    unique,
    wait_until,
)
from tests.credentials import auth_headers

pytestmark = pytest.mark.broker
API_KEY = "expect-key"
SUB = {"userId": "user-7", "userIdType": "CLIENT_X_USER_ID", "partnerSessionId": "sess-7"}


class FakeProviderApi:
    """Answers from a script, one answer per call (the last one repeats); records every request."""

    def __init__(self) -> None:
        self.script: list[tuple[int, Any]] = []
        self.requests: list[Request] = []
        self.headers: list[dict[str, str]] = []
        self.peers: list[tuple[str, int] | None] = []  # the client's address: one per connection

    async def answer(self, request: Request) -> Response:
        self.requests.append(request)
        self.headers.append(dict(request.headers))
        self.peers.append((request.client.host, request.client.port) if request.client else None)
        status, body = self.script[min(len(self.requests), len(self.script)) - 1]
        return JSONResponse(body, status_code=status)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self.answer, methods=["GET"])])


@pytest.fixture
def api() -> Iterator[tuple[FakeProviderApi, str]]:
    fake = FakeProviderApi()
    with serving_app(fake.app()) as url:
        yield fake, url


@pytest.fixture
def gateway_with_expectations(
    gateway_settings: Callable[..., GatewaySettings],
) -> Iterator[tuple[str, GatewaySettings]]:
    settings = gateway_settings(expectations_api_keys=[API_KEY])
    with serving(settings) as url:
        yield url, settings


def _source(provider: str, url: str, **poll: Any) -> dict[str, Any]:
    return {provider: {"provider": provider, "poll": {"base_url": url, "token": "api-token", "window_s": 1, **poll}}}


def _expect(url: str, source: str, vid: str, lookup: dict[str, str] | None = None) -> None:
    response = post(
        f"{url}/expectations/{source}",
        json.dumps({"verification_id": vid, "lookup": lookup or {}}).encode(),
        {"authorization": f"Bearer {API_KEY}"},
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "expected", "key": f"{source}:{vid}"}


def _wait(condition: Callable[[], bool], timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _esign_submission(vid: str) -> dict[str, Any]:
    return {"submissionId": vid, **SUB, "status": "COMPLETED", "result": "VALID", "processedAt": "2026-05-08T10:30:00Z"}


def test_a_missing_esign_callback_is_polled_and_a_late_callback_adds_nothing(
    gateway_with_expectations: tuple[str, GatewaySettings],
    api: tuple[FakeProviderApi, str],
    kafka: KafkaSettings,
    codec: Codec,
) -> None:
    url, settings = gateway_with_expectations
    fake, api_url = api
    vid = unique("sub")
    fake.script = [(200, {"success": True, "data": _esign_submission(vid)})]
    _expect(url, "esign", vid, SUB)
    with processing(kafka, settings.topics), reconciling(kafka, settings.topics, _source("esign", api_url)):
        events = read(kafka, settings.topics.events, codec, "VerificationEvent", at_least=1, timeout=30)
        assert [(e["verification_id"], e["status"]) for e in events] == [(vid, "APPROVED")]
        polled = read(kafka, settings.topics.raw, codec, "RawDelivery")
        assert [r["origin"] for r in polled] == ["poll"]
        sent = fake.headers[0]
        assert sent["x-onekyc-token"] == "api-token"
        assert (sent["x-partner-user-id"], sent["x-partner-session-id"]) == ("user-7", "sess-7")

        callback = json.dumps(_esign_submission(vid)).encode()
        assert post(f"{url}/webhooks/esign", callback, {"authorization": "Bearer dev-secret"}).status_code == 200
        read(kafka, settings.topics.raw, codec, "RawDelivery", at_least=2)
        time.sleep(3)  # three windows: a final state is never polled again
        assert len(read(kafka, settings.topics.events, codec, "VerificationEvent")) == 1
        assert len(fake.requests) == 1
    assert latest_states(kafka, settings.topics.state, codec)[f"esign:{vid}"]["status"] == "APPROVED"


def test_a_500_is_retried_then_succeeds(
    gateway_with_expectations: tuple[str, GatewaySettings],
    api: tuple[FakeProviderApi, str],
    kafka: KafkaSettings,
    codec: Codec,
) -> None:
    url, settings = gateway_with_expectations
    fake, api_url = api
    vid = unique("sub")
    fake.script = [(500, {"error": "boom"}), (200, _esign_submission(vid))]
    _expect(url, "esign", vid, SUB)
    with processing(kafka, settings.topics), reconciling(kafka, settings.topics, _source("esign", api_url)) as rec:
        read(kafka, settings.topics.events, codec, "VerificationEvent", at_least=1)
        assert len(fake.requests) == 2
        assert (
            rec.metrics.registry.get_sample_value("kycstream_polls_total", {"provider": "esign", "outcome": "result"})
            == 1
        )


def test_a_401_goes_to_the_dlq_and_is_not_hammered(
    gateway_with_expectations: tuple[str, GatewaySettings],
    api: tuple[FakeProviderApi, str],
    kafka: KafkaSettings,
    codec: Codec,
) -> None:
    url, settings = gateway_with_expectations
    fake, api_url = api
    fake.script = [(401, {"error": "bad token"})]
    _expect(url, "esign", unique("sub"), SUB)
    with reconciling(kafka, settings.topics, _source("esign", api_url)):
        letters = read(kafka, settings.topics.dlq, codec, "DeadLetter", at_least=1)
        time.sleep(3)  # three more windows
    assert [d["reason"] for d in letters] == ["poll_unauthorized"]
    assert "poll.token" in letters[0]["detail"]
    assert len(fake.requests) == 1


def test_a_stuck_incode_session_is_polled_to_its_final_state(
    gateway_with_expectations: tuple[str, GatewaySettings],
    api: tuple[FakeProviderApi, str],
    kafka: KafkaSettings,
    codec: Codec,
) -> None:
    url, settings = gateway_with_expectations
    fake, api_url = api
    vid = unique("interview")
    fake.script = [(200, {"onboardingStatus": "MANUAL_REVIEW_APPROVED"})]
    source = settings.sources["incode"]
    body = json.dumps({"interviewId": vid, "onboardingStatus": "FACE_VALIDATION_FINISHED"}).encode()
    assert post(f"{url}/webhooks/incode", body, {source.auth.header or "": "dev-secret"}).status_code == 200
    _expect(url, "incode", vid)
    with (
        processing(kafka, settings.topics),
        reconciling(kafka, settings.topics, _source("incode", api_url, window_s=2, admin_token="exec-token")),
    ):
        _wait(
            lambda: (
                latest_states(kafka, settings.topics.state, codec).get(f"incode:{vid}", {}).get("status") == "APPROVED"
            ),
            what="the polled final state",
        )
    assert fake.requests[0].query_params["id"] == vid
    assert fake.headers[0]["x-api-key"] == "api-token"


def test_giving_up_leaves_a_dead_letter_that_says_why(
    gateway_with_expectations: tuple[str, GatewaySettings],
    api: tuple[FakeProviderApi, str],
    kafka: KafkaSettings,
    codec: Codec,
) -> None:
    url, settings = gateway_with_expectations
    fake, api_url = api
    fake.script = [(404, {"error": "not found"})]
    _expect(url, "signicat", unique("proc"), {"dossierId": "dossier-1"})
    with reconciling(kafka, settings.topics, _source("signicat", api_url, give_up_after_s=8)):
        letters = read(kafka, settings.topics.dlq, codec, "DeadLetter", at_least=1)
    assert [d["reason"] for d in letters] == ["poll_expired"]
    assert "giving up" in letters[0]["detail"]
    assert fake.requests and fake.requests[0].url.path.startswith("/assure/dossiers/dossier-1/processes/")
    assert len(fake.requests) >= 2, "polled again at each window until it gave up"
    assert len(set(fake.peers)) == 1, "one kept-alive connection from tick to tick, not one per tick"


def test_expectations_api_refusals(
    gateway_with_expectations: tuple[str, GatewaySettings], gateway_settings: Callable[..., GatewaySettings]
) -> None:
    url, _ = gateway_with_expectations
    good = json.dumps({"verification_id": "v-1"}).encode()
    auth = {"authorization": f"Bearer {API_KEY}"}
    assert post(f"{url}/expectations/esign", good).status_code == 401
    assert post(f"{url}/expectations/esign", good, {"authorization": "Bearer dev-secret"}).status_code == 401
    assert post(f"{url}/expectations/nobody", good, auth).status_code == 404
    assert httpx.get(f"{url}/expectations/esign").status_code == 405
    for bad in (
        b"[]",
        b"{}",
        b'{"verification_id": ""}',
        b'{"verification_id": "v", "lookup": {"a": 1}}',
        b'{"verification_id": "v", "window_s": -1}',
        b"nope",
    ):
        response = post(f"{url}/expectations/esign", bad, auth)
        assert response.status_code == 400, bad
        assert response.json()["error"] == "invalid_request"
    with serving(gateway_settings(sources=dev_sources())) as off:
        response = post(f"{off}/expectations/esign", good, auth)
    assert response.status_code == 404 and "expectations_api_keys" in response.json()["detail"]


@pytest.mark.parametrize("provider", ["xendit", "metamap"])
def test_a_polled_result_and_its_late_callback_give_one_event(
    provider: str,
    gateway_with_expectations: tuple[str, GatewaySettings],
    api: tuple[FakeProviderApi, str],
    kafka: KafkaSettings,
    codec: Codec,
) -> None:
    """The callback is delivered after the poll found the result: same provider result, same key."""
    url, settings = gateway_with_expectations
    fake, api_url = api
    if provider == "xendit":
        vid = unique("acct")
        kyc = {"status": "PASSED", "verified_at": "2026-05-08T10:30:00Z"}
        fake.script = [(200, {"id": vid, "updated": "2026-05-08T10:31:00Z", "kyc": kyc})]
        callback = {"event": "account.verification", "created": "2026-05-08T10:30:02Z", "data": {"id": vid, "kyc": kyc}}
        headers = {"x-callback-token": "dev-secret", "webhook-id": unique("wh")}
    else:
        vid = uuid.uuid4().hex[:24]
        fake.script = [(200, {"id": vid, "identity": {"status": "verified"}, "updatedAt": "2026-05-08T10:31:00Z"})]
        callback = {
            "eventName": "verification_completed",
            "resource": f"https://api.getmati.com/v2/verifications/{vid}",
            "identityStatus": "verified",
            "timestamp": "2026-05-08T10:30:00.000Z",
        }
        headers = {}
    body = json.dumps(callback).encode()
    headers.update(auth_headers(settings.sources[provider], body))
    _expect(url, provider, vid)
    group = unique("proc")
    with (
        processing(kafka, settings.topics, group_id=group),
        reconciling(kafka, settings.topics, _source(provider, api_url)),
    ):
        events = read(kafka, settings.topics.events, codec, "VerificationEvent", at_least=1, timeout=30)
        assert [(e["verification_id"], e["status"]) for e in events] == [(vid, "APPROVED")]
        assert post(f"{url}/webhooks/{provider}", body, headers).status_code == 200
        wait_until(lambda: committed_to_end(kafka, group, settings.topics.raw), 30, "the callback processed")
    raw = read(kafka, settings.topics.raw, codec, "RawDelivery")
    assert sorted(r["origin"] for r in raw) == ["callback", "poll"]
    events = read(kafka, settings.topics.events, codec, "VerificationEvent")
    assert len(events) == 1, [e["idempotency_key"] for e in events]
