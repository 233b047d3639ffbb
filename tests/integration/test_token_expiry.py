"""Provider API tokens that expire or are refused, through the real embedded broker and reconciler:
expectations announced to the real gateway, polled over real HTTP against a local fake OAuth2 token
endpoint and a MetaMap-like API that accepts its live tokens only (tests.credentials.FakeOAuth).

No processor runs: no state settles the verifications, so the reconciler polls each one again at
every window (1 s) for as long as the test lets it.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from typing import Any

import pytest

from gateway.settings import GatewaySettings
from processors.kafka import reader
from processors.kafka.serde import Codec
from processors.reconcile.reconciler import Reconciler
from processors.settings import KafkaSettings
from tests.conftest import EXPECTATIONS_API_KEY, post, read, reconciling, serving_app, wait_until
from tests.credentials import CLIENT, FakeOAuth

pytestmark = pytest.mark.broker


def _metamap(url: str) -> dict[str, Any]:
    oauth2 = {"token_url": f"{url}/oauth/token", "client_id": CLIENT[0], "client_secret": CLIENT[1]}
    poll = {"base_url": url, "oauth2": oauth2, "window_s": 1, "rate_per_s": 50}
    return {"metamap": {"provider": "metamap", "poll": poll}}


def _expect(url: str, count: int) -> list[str]:
    vids = [uuid.uuid4().hex[:24] for _ in range(count)]  # MetaMap verification ids
    for vid in vids:
        body = json.dumps({"verification_id": vid}).encode()
        response = post(f"{url}/expectations/metamap", body, {"authorization": f"Bearer {EXPECTATIONS_API_KEY}"})
        assert response.status_code == 200, response.text
    return vids


def _polls(reconciler: Reconciler, outcome: str) -> float:
    labels = {"provider": "metamap", "outcome": outcome}
    return reconciler.metrics.registry.get_sample_value("kycstream_polls_total", labels) or 0.0


def _token_requests(reconciler: Reconciler, outcome: str) -> float:
    labels = {"provider": "metamap", "outcome": outcome}
    return reconciler.metrics.registry.get_sample_value("kycstream_token_requests_total", labels) or 0.0


def _tombstoned(kafka: KafkaSettings, topic: str, key: str) -> bool:
    values = [r.value for r in reader.read_all(kafka, topic) if r.key == key.encode()]
    return bool(values) and values[-1] is None


@pytest.mark.parametrize(
    ("seconds", "lifetime_s"),
    [pytest.param(30.0, 2.0, marks=pytest.mark.slow, id="30s-2s-tokens"), pytest.param(6.0, 1.0, id="6s-1s-tokens")],
)
def test_tokens_expiring_every_few_seconds_give_no_unauthorized_and_one_token_request_per_expiry(
    seconds: float,
    lifetime_s: float,
    gateway_with_expectations: tuple[str, GatewaySettings],
    kafka: KafkaSettings,
    codec: Codec,
) -> None:
    url, settings = gateway_with_expectations
    fake = FakeOAuth(lifetime_s=lifetime_s)
    vids = _expect(url, 6)  # due together: six concurrent polls share each token
    with serving_app(fake.app()) as api_url, reconciling(kafka, settings.topics, _metamap(api_url)) as rec:
        wait_until(lambda: fake.calls, 60, "a first poll")
        first = fake.token_times[0]
        # The run: polls go on until they span `seconds` (each verification polled about once a second).
        wait_until(lambda: fake.call_times[-1] >= first + seconds, seconds + 60, f"polls for {seconds:g}s")
    span = fake.call_times[-1] - first
    statuses = Counter(status for _, _, status in fake.calls)
    assert statuses[401] == 0, f"a token was used after it expired: {statuses}"
    assert _polls(rec, "unauthorized") == 0 and _polls(rec, "result") >= len(vids) * seconds / 2
    assert read(kafka, settings.topics.dlq, codec, "DeadLetter") == []
    # One token request per expiry: each one only once the token in use was due (its lifetime less
    # the tenth renewed early), never one per concurrent poll; each one used; renewed all along (a
    # token is fetched when a poll needs one, and polls come every second or so).
    gaps = [b - a for a, b in zip(fake.token_times, fake.token_times[1:], strict=False)]
    assert min(gaps) >= lifetime_s * 0.9 - 0.1, f"two token requests {min(gaps):.2f}s apart: {gaps}"
    expiries = span / lifetime_s
    assert expiries / 2 <= fake.token_requests <= expiries / 0.9 + 1, f"{fake.token_requests} in {span:.1f}s: {gaps}"
    assert len({token for _, token, _ in fake.calls}) == fake.token_requests, "a token fetched and never used"
    assert _token_requests(rec, "ok") == fake.token_requests and _token_requests(rec, "failed") == 0
    polled = Counter(vid for vid, _, _ in fake.calls)
    assert set(polled) == set(vids) and min(polled.values()) >= seconds / 2, polled


def test_a_revoked_client_gives_one_unauthorized_per_verification_after_a_fresh_token_also_fails(
    gateway_with_expectations: tuple[str, GatewaySettings],
    kafka: KafkaSettings,
    codec: Codec,
) -> None:
    url, settings = gateway_with_expectations
    fake = FakeOAuth(lifetime_s=60.0)
    fake.api_refuses_all = True  # the token endpoint still answers; the API refuses the client's tokens
    vids = _expect(url, 3)
    names = settings.topics
    with serving_app(fake.app()) as api_url, reconciling(kafka, names, _metamap(api_url)) as rec:
        wait_until(
            lambda: all(_tombstoned(kafka, names.expected, f"metamap:{vid}") for vid in vids),
            60,
            "every verification dead-lettered and its expectation tombstoned",
        )
        ticks = rec.ticks
        wait_until(lambda: rec.ticks >= ticks + 5, 30, "five more ticks")  # past several 1 s windows
    letters = read(kafka, names.dlq, codec, "DeadLetter")
    reasons = [(d["reason"], d["original_key"]) for d in letters]
    assert sorted(reasons) == sorted(("poll_unauthorized", f"metamap:{vid}".encode()) for vid in vids), reasons
    assert _polls(rec, "unauthorized") == len(vids)
    for vid in vids:
        sent = [(token, status) for v, token, status in fake.calls if v == vid]
        assert [status for _, status in sent] == [401, 401], f"{vid}: {sent}"
        assert sent[0][0] != sent[1][0], "the second try had a fresh token"
    assert fake.token_requests <= 1 + len(vids), "at most one fresh token per refusal"


def test_a_failing_token_endpoint_dead_letters_nothing_and_polls_recover_with_it(
    gateway_with_expectations: tuple[str, GatewaySettings],
    kafka: KafkaSettings,
    codec: Codec,
) -> None:
    url, settings = gateway_with_expectations
    fake = FakeOAuth(lifetime_s=60.0)
    fake.client_revoked = True  # invalid_client: the credential itself fails, not a verification
    vids = _expect(url, 3)
    names = settings.topics
    with serving_app(fake.app()) as api_url, reconciling(kafka, names, _metamap(api_url)) as rec:
        wait_until(lambda: _polls(rec, "credential_failed") >= 3 * len(vids), 60, "three rounds of failed polls")
        assert fake.calls == [], "no API call without a token"
        rounds = _polls(rec, "credential_failed") // len(vids)
        assert 1 <= _token_requests(rec, "failed") <= rounds, "asked at most once per round, backing off"
        fake.client_revoked = False  # the client is restored (or its secret file fixed)
        wait_until(lambda: {vid for vid, _, _ in fake.calls} == set(vids), 30, "every verification polled again")
    assert read(kafka, names.dlq, codec, "DeadLetter") == []
    polled = [r for r in read(kafka, names.raw, codec, "RawDelivery") if r["origin"] == "poll"]
    assert {json.loads(r["body"])["resource"].rsplit("/", 1)[1] for r in polled} == set(vids)
