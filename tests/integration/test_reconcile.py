"""Reconciliation against a fake provider status API served over real HTTP by the test itself."""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Producer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.settings import GatewaySettings
from processors.avro.records import expectation_to_record
from processors.kafka import config, reader, topics
from processors.kafka.serde import Codec
from processors.model import Expectation
from processors.reconcile.reconciler import Reconciler
from processors.settings import KafkaSettings, TopicSettings
from tests.conftest import (
    EXPECTATIONS_API_KEY,
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
from tests.tcpproxy import TcpProxy

pytestmark = pytest.mark.broker
API_KEY = EXPECTATIONS_API_KEY
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


def _source(provider: str, url: str, **poll: Any) -> dict[str, Any]:
    return {provider: {"provider": provider, "poll": {"base_url": url, "token": "api-token", "window_s": 1, **poll}}}


def _expect(url: str, source: str, vid: str, lookup: dict[str, str] | None = None, window_s: int | None = None) -> None:
    response = post(
        f"{url}/expectations/{source}",
        json.dumps({"verification_id": vid, "lookup": lookup or {}, "window_s": window_s}).encode(),
        {"authorization": f"Bearer {API_KEY}"},
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "expected", "key": f"{source}:{vid}"}


def _esign_submission(vid: str) -> dict[str, Any]:
    return {"submissionId": vid, **SUB, "status": "COMPLETED", "result": "VALID", "processedAt": "2026-05-08T10:30:00Z"}


XENDIT_PASSED = {"updated": "2026-05-08T10:31:00Z", "kyc": {"status": "PASSED", "verified_at": "2026-05-08T10:30:00Z"}}


def _tombstoned(kafka: KafkaSettings, topic: str, key: str) -> bool:
    """Whether the last record under `key` is a tombstone: the reconciler dropped that expectation."""
    values = [r.value for r in reader.read_all(kafka, topic) if r.key == key.encode()]
    return bool(values) and values[-1] is None


def _reasons(kafka: KafkaSettings, topic: str, codec: Codec) -> list[str]:
    return [d["reason"] for d in read(kafka, topic, codec, "DeadLetter")]


def _polls(reconciler: Reconciler, provider: str, outcome: str) -> float | None:
    return reconciler.metrics.registry.get_sample_value(
        "kycstream_polls_total", {"provider": provider, "outcome": outcome}
    )


def _run_until(
    kafka: KafkaSettings,
    names: TopicSettings,
    sources: dict[str, Any],
    group: str,
    fact: Callable[[Reconciler], object],
    what: str,
) -> None:
    """One reconciler of `group`, stopped as soon as `fact` holds and it has ticked on whole tables
    (it had its partitions: a member leaving before that stalls the embedded broker's next
    rebalance); the next call is its restart."""
    with reconciling(kafka, names, sources, group) as reconciler:
        wait_until(lambda: reconciler.ticks and fact(reconciler), 60, what)


def _ticked_on_whole_tables(reconciler: Reconciler) -> bool:
    # Ticks count only once the reconciler has its partitions and has read them and the state
    # table to their ends: by its second tick it has acted on everything it still tracks.
    return reconciler.ticks >= 2


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
    group = unique("proc")
    with (
        processing(kafka, settings.topics, group_id=group),
        reconciling(kafka, settings.topics, _source("esign", api_url)),
    ):
        events = read(kafka, settings.topics.events, codec, "VerificationEvent", at_least=1, timeout=30)
        assert [(e["verification_id"], e["status"]) for e in events] == [(vid, "APPROVED")]
        polled = read(kafka, settings.topics.raw, codec, "RawDelivery")
        assert [r["origin"] for r in polled] == ["poll"]
        sent = fake.headers[0]
        assert sent["x-onekyc-token"] == "api-token"
        assert (sent["x-partner-user-id"], sent["x-partner-session-id"]) == ("user-7", "sess-7")
        # Settled: its expectation is tombstoned, so nothing polls it again.
        key = f"esign:{vid}"
        wait_until(lambda: _tombstoned(kafka, settings.topics.expected, key), 30, "the settled expectation tombstoned")

        callback = json.dumps(_esign_submission(vid)).encode()
        assert post(f"{url}/webhooks/esign", callback, {"authorization": "Bearer dev-secret"}).status_code == 200
        wait_until(lambda: committed_to_end(kafka, group, settings.topics.raw), 30, "the late callback processed")
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


def test_a_401_goes_to_the_dlq_once_and_is_not_polled_again_after_a_restart(
    gateway_with_expectations: tuple[str, GatewaySettings],
    api: tuple[FakeProviderApi, str],
    kafka: KafkaSettings,
    codec: Codec,
) -> None:
    url, settings = gateway_with_expectations
    fake, api_url = api
    fake.script = [(401, {"error": "bad token"})]
    vid = unique("sub")
    _expect(url, "esign", vid, SUB)
    names, sources, group = settings.topics, _source("esign", api_url), unique("rec")
    key = f"esign:{vid}"
    _run_until(
        kafka, names, sources, group, lambda _: _tombstoned(kafka, names.expected, key), "dead-lettered and tombstoned"
    )
    # The expectation's window has long passed: a restarted reconciler that still tracked it would
    # poll it at its first tick on whole tables.
    _run_until(kafka, names, sources, group, _ticked_on_whole_tables, "the restarted reconciler ticked")
    letters = read(kafka, names.dlq, codec, "DeadLetter")
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
        wait_until(
            lambda: (
                latest_states(kafka, settings.topics.state, codec).get(f"incode:{vid}", {}).get("status") == "APPROVED"
            ),
            30,
            "the polled final state",
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


# --- restarts and rebalances repeat no work --------------------------------------------------------


def test_a_reconciler_restarted_three_times_while_polling_gives_each_expectation_one_event(
    gateway_with_expectations: tuple[str, GatewaySettings],
    api: tuple[FakeProviderApi, str],
    kafka: KafkaSettings,
    codec: Codec,
) -> None:
    url, settings = gateway_with_expectations
    fake, api_url = api
    fake.script = [(200, XENDIT_PASSED)]
    names = settings.topics
    vids = [unique("acct") for _ in range(12)]
    # Due three at a time, 3 s apart (a restart takes about that long to rejoin the group), so each
    # restart finds some verifications settled, some answers still on their way, some not due yet.
    for i, vid in enumerate(vids):
        _expect(url, "xendit", vid, window_s=4 + 3 * (i // 3))
    sources, group, processor = _source("xendit", api_url, rate_per_s=20), unique("rec"), unique("proc")

    def settled() -> int:
        states = latest_states(kafka, names.state, codec)
        return sum(states.get(f"xendit:{vid}", {}).get("status") == "APPROVED" for vid in vids)

    with processing(kafka, names, group_id=processor):
        for at_least in (1, 4, 7):  # stopped three times, each with more verifications settled
            _run_until(kafka, names, sources, group, lambda _, n=at_least: settled() >= n, f"{at_least} settled")
        # Every expectation tombstoned: nothing is left to poll, so no answer is still to come.
        _run_until(
            kafka,
            names,
            sources,
            group,
            lambda _: all(_tombstoned(kafka, names.expected, f"xendit:{vid}") for vid in vids),
            "every expectation settled and tombstoned",
        )
        wait_until(lambda: committed_to_end(kafka, processor, names.raw), 30, "every polled answer processed")
    events = read(kafka, names.events, codec, "VerificationEvent")
    assert Counter(e["verification_id"] for e in events) == dict.fromkeys(vids, 1)
    assert {r["origin"] for r in read(kafka, names.raw, codec, "RawDelivery")} == {"poll"}


def test_giving_up_dead_letters_once_across_three_restarts(
    gateway_with_expectations: tuple[str, GatewaySettings],
    api: tuple[FakeProviderApi, str],
    kafka: KafkaSettings,
    codec: Codec,
) -> None:
    url, settings = gateway_with_expectations
    fake, api_url = api
    fake.script = [(404, {"error": "not found"})]
    vid = unique("proc")
    _expect(url, "signicat", vid, {"dossierId": "dossier-1"})
    # Given up on by the first restart: a reconciler takes about 3 s to join the group.
    names, sources, group = settings.topics, _source("signicat", api_url, give_up_after_s=8), unique("rec")
    key = f"signicat:{vid}"
    _run_until(kafka, names, sources, group, lambda _: fake.requests, "a first poll")
    _run_until(
        kafka, names, sources, group, lambda _: _tombstoned(kafka, names.expected, key), "given up and tombstoned"
    )
    polled = len(fake.requests)
    for _ in range(2):
        # Past give_up_after_s: a restarted reconciler still tracking it would dead-letter it again
        # at its first tick on whole tables.
        _run_until(kafka, names, sources, group, _ticked_on_whole_tables, "the restarted reconciler ticked")
    assert _reasons(kafka, names.dlq, codec) == ["poll_expired"]
    assert len(fake.requests) == polled


@pytest.mark.parametrize("state_store", ["memory", "rocksdb"])
def test_an_expectation_settled_by_its_callback_is_tombstoned_without_a_poll(
    gateway_with_expectations: tuple[str, GatewaySettings],
    api: tuple[FakeProviderApi, str],
    kafka: KafkaSettings,
    state_store: str,
    tmp_path: Path,
) -> None:
    url, settings = gateway_with_expectations
    fake, api_url = api
    vid = unique("sub")
    _expect(url, "esign", vid, SUB)
    callback = json.dumps(_esign_submission(vid)).encode()
    assert post(f"{url}/webhooks/esign", callback, {"authorization": "Bearer dev-secret"}).status_code == 200
    with (
        processing(kafka, settings.topics),
        reconciling(
            kafka, settings.topics, _source("esign", api_url, window_s=600), state_store=state_store, state_dir=tmp_path
        ),
    ):
        key = f"esign:{vid}"
        wait_until(lambda: _tombstoned(kafka, settings.topics.expected, key), 30, "the settled expectation tombstoned")
    assert fake.requests == []


# --- a write Kafka does not acknowledge is done again ----------------------------------------------


class _CutBeforeFirstAnswer:
    """Cuts the reconciler off from Kafka just before it writes its first polled answer."""

    def __init__(self, proxy: TcpProxy, monkeypatch: pytest.MonkeyPatch) -> None:
        self.done = threading.Event()
        write = Reconciler._write_answer

        def cut_then_write(reconciler: Reconciler, *args: Any) -> None:
            if not self.done.is_set():
                proxy.cut()
                self.done.set()
            write(reconciler, *args)

        monkeypatch.setattr(Reconciler, "_write_answer", cut_then_write)


def _produce_expectation(kafka: KafkaSettings, topic: str, codec: Codec, expectation: Expectation) -> None:
    producer = Producer(config.producer(kafka))
    producer.produce(
        topic, key=expectation.key.encode(), value=codec.encode("Expectation", expectation_to_record(expectation))
    )
    assert producer.flush(30) == 0


def test_an_answer_kafka_did_not_acknowledge_is_polled_and_written_again(
    proxied: tuple[KafkaSettings, TcpProxy],
    api: tuple[FakeProviderApi, str],
    codec: Codec,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    own, proxy = proxied
    # A write fails 2 s after the cut rather than librdkafka's 5 min; reconnect at once on restore.
    # request.timeout.ms too: when librdkafka has not yet seen the cut connection, the answer's
    # ProduceRequest goes out on it and fails only when that request times out (30 s by default;
    # message.timeout.ms does not end a request in flight) — seen once in CI.
    extra = {"message.timeout.ms": "2000", "request.timeout.ms": "1000", "reconnect.backoff.max.ms": "500"}
    kafka = own.model_copy(update={"extra": extra})
    names = TopicSettings(partitions=1)
    topics.create_all(kafka, names)
    fake, api_url = api
    fake.script = [(200, XENDIT_PASSED)]
    vid = unique("acct")
    # Due at once, and a counted poll would not be due again for 10 minutes.
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    _produce_expectation(kafka, names.expected, codec, Expectation("xendit", "xendit", vid, an_hour_ago, window_s=600))
    cut = _CutBeforeFirstAnswer(proxy, monkeypatch)
    with reconciling(kafka, names, _source("xendit", api_url)) as reconciler:
        wait_until(cut.done.is_set, 30, "the first answer written with Kafka cut off")
        wait_until(lambda: len(fake.requests) >= 2, 30, "the expectation polled again after the failed write")
        assert _polls(reconciler, "xendit", "result") == 0, "a poll whose answer is not in Kafka is not done"
        proxy.restore()
        wait_until(lambda: _polls(reconciler, "xendit", "result") == 1, 60, "an answer acknowledged")
    answers = read(kafka, names.raw, codec, "RawDelivery")
    assert answers and {(a["origin"], a["_key"]) for a in answers} == {("poll", f"xendit:{vid}".encode())}
